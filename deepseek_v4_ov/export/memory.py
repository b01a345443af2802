"""Process memory while exporting piece by piece: what a finished piece leaves behind is given back."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal

import torch


def release_memory() -> None:
    """Release what a finished piece leaves behind: TorchScript's global JIT state keeps every traced
    graph, and with it the tensors the trace captured as constants (the grouped form's stacked expert
    weights: a layer's routed experts in FP32, measured +1.57 GB per `mid` layer without this); then give
    freed heap memory back to the OS."""
    try:
        torch._C._jit_clear_class_registry()
        torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
        torch.jit._state._clear_class_state()
    except AttributeError:  # private torch API: a version without it keeps the ratchet, not an error
        pass
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation of `nbytes` or more by mmap (returned to the OS on free): glibc's default
    threshold grows after the first large free, and the heap then keeps each piece's weights."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """Peak RSS of the largest process of the export so far: this one or a finished worker (not their sum)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


MIN_THREADS_PER_JOB = 4  # a piece's quantiser and tracing keep about this many cores busy


def available_bytes() -> int:
    """MemAvailable (what can be allocated without swapping), or the physical memory where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def default_jobs(piece_peak: int, pieces: int, available: int, cpus: int) -> int:
    """Pieces converted at once: as many as fit in `available` bytes at `piece_peak` each (a process per
    piece) and `cpus` at `MIN_THREADS_PER_JOB` each, at most `pieces`, at least 1."""
    return max(1, min(pieces, cpus // MIN_THREADS_PER_JOB, available // max(piece_peak, 1)))


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed when the process `parent` that started it dies (SIGKILLed exports
    leave no worker behind); exit now if it is already gone."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
