"""Process memory while exporting piece by piece: what a finished piece leaves behind is given back."""

from __future__ import annotations

import ctypes
import gc
import resource

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


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
