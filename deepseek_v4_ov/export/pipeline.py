"""`deepseek-v4-ov export`: a DeepSeek-V4 folder in the official release layout -> an OpenVINO folder that
optimum-intel (`OVModelForCausalLM`, trust_remote_code) and OpenVINO GenAI load. One pipeline:

    read        checkpoint/release.Checkpoint: config.json, the index and every shard header, read and
                checked once, before any work (with the options, OUTPUT and SRC's tokenizer)
    port+trace  convert/pieces: per piece (embed, each layer, head; or one piece of all with `whole`), the
                port's modules built with only that piece's weights (FP8/FP4 dequantised exactly), traced,
                made stateful (or prefill-only)
    compress    compress/policy (NNCF, the release-mirroring precision policy) or compress/native (the
                release's own codes), per piece; the piece is saved and its memory given back
    stitch      convert/stitch: the pieces joined at the file level into openvino_model.xml/.bin
    drafter     with `drafter`: the MTP block (or the DSpark stages) traced, compressed and stitched the
                same way into openvino_drafter_model.xml/.bin, and the target gets the output `drafter_taps`
    save        export/folder: config, generation config, openvino_config.json, bundled files, tokenizer

All of it happens in a temporary folder beside OUTPUT that replaces OUTPUT atomically when complete
(`checkpoint.layout.atomic_output_dir`). A summary follows: file sizes, precision per tensor group read
back from the IR constants, time per stage, peak memory.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepseek_v4_ov.export.plan import Projection, project, size_text, unit_of
from deepseek_v4_ov.checkpoint.layout import CheckpointError, atomic_output_dir
from deepseek_v4_ov.checkpoint.release import Checkpoint, check_folder, logical_tensors
from deepseek_v4_ov.compress.calibrate import Calibration, check_dataset, samples
from deepseek_v4_ov.compress.policy import (
    PRIMARY, CompressionOptions, GroupPrecision, format_report, precision_report, target_of,
)
from deepseek_v4_ov.compress.weights import bind_weights
from deepseek_v4_ov.convert.pieces import HEAD, convert_piece, drafter_plan, plan
from deepseek_v4_ov.convert.stateful import TAPS
from deepseek_v4_ov.convert.stitch import hashes_path, save_piece, stitch
from deepseek_v4_ov.export import memory
from deepseek_v4_ov.export.identity import identity, options_record, source_digest
from deepseek_v4_ov.export.folder import (
    DRAFTER_BIN, DRAFTER_XML, GENERATION_CONFIG, IR_BIN, IR_XML, drafter_record, has_tokenizer, openvino_config,
    tokenizer_only, write_folder,
)
from deepseek_v4_ov.export.options import ExportOptions
from deepseek_v4_ov.model.configuration_deepseek_v4 import DSPARK

STAGES = ("validate", "convert", "stitch", "drafter", "write")


@dataclass
class ExportResult:
    output: Path
    files: dict[str, int]  # file name -> bytes
    precision: dict[str, GroupPrecision]
    times: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    projection: Projection | None = None  # what validate projected for this export

    @property
    def ir_bytes(self) -> int:
        return self.files.get(IR_XML, 0) + self.files.get(IR_BIN, 0)

    def format(self) -> str:
        f = self.files
        lines = [
            f"exported to {self.output}",
            f"  IR size {self.ir_bytes / 1e6:.2f} MB (openvino_model.bin {f.get(IR_BIN, 0) / 1e6:.2f} MB + "
            f"openvino_model.xml {f.get(IR_XML, 0) / 1e6:.2f} MB); folder {sum(f.values()) / 1e6:.2f} MB in "
            f"{len(f)} files",
            "  precision per tensor group (IR constants):",
            format_report(self.precision),
            "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.times.items())
            + f"; total {sum(self.times.values()):.1f}s",
            f"  peak memory (ru_maxrss, largest process) {self.peak_rss_mb:,.0f} MB",
        ]
        if DRAFTER_XML in f:
            lines.insert(2, f"  drafter IR {(f[DRAFTER_XML] + f.get(DRAFTER_BIN, 0)) / 1e6:.2f} MB ({DRAFTER_XML})")
        if self.projection is not None:
            lines.append(f"  projected {self.projection.describe()}")
        return "\n".join(lines)


def _one_line(err: Exception) -> str:
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def validate(opts: ExportOptions) -> Checkpoint:
    """All checks that need no weights; returns the validated checkpoint (`opts.resolved(checkpoint.fmt)`
    are the options the export runs with). Raises ValueError / CheckpointError / FileExistsError with a
    one-line message naming the problem; an export whose projected files would not fit in the free space
    beside OUTPUT is one."""
    compression = None if opts.auto else opts.compression()
    src, output = opts.src, opts.output
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such folder (SRC must be a DeepSeek-V4 checkpoint folder)")
    s, o = src.resolve(), output.resolve()
    if o == s or o in s.parents:
        raise ValueError(f"OUTPUT {output} is SRC or contains it; choose another folder")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if output.exists() and any(output.iterdir()) and not opts.overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    try:
        checkpoint = check_folder(src)
    except CheckpointError as err:
        raise CheckpointError(_one_line(err)) from err
    opts, _ = resolve(opts, checkpoint)
    compression = opts.compression()
    if opts.dataset is not None:
        if not has_tokenizer(src):
            raise CheckpointError(f"--dataset {opts.dataset}: SRC {src} has no tokenizer (tokenizer.json) to encode "
                                  "the calibration text with")
        check_dataset(opts.dataset)
    drafter_of(opts, checkpoint)
    if opts.native and checkpoint.fmt != "fp8":
        raise CheckpointError(f"{src}: --weight-format native needs a checkpoint in the release layout (FP8/FP4 "
                              f"with E8M0 scales); this one is {checkpoint.fmt}")
    _check_group_size(checkpoint.config, compression)
    projection = projection_of(checkpoint, opts)
    check_disk(output, projection)
    check_cpu_memory(projection)
    check_jobs(opts, projection)
    gen = src / GENERATION_CONFIG
    if gen.is_file():
        try:
            json.loads(gen.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{gen}: not valid JSON ({err})") from err
    if opts.convert_tokenizer and has_tokenizer(src):
        try:
            from transformers import AutoTokenizer

            with tokenizer_only(src) as tok:
                AutoTokenizer.from_pretrained(str(tok))
        except Exception as err:  # noqa: BLE001 - any loader failure is a bad SRC tokenizer
            raise CheckpointError(f"{src}: tokenizer files present but unreadable ({_one_line(err)})") from err
    return checkpoint


def resolve(opts: ExportOptions, checkpoint: Checkpoint) -> tuple[ExportOptions, str]:
    """`opts` with `auto` replaced by the format it stands for on `checkpoint`, the compression options
    checked against that format (a misapplied option is named with the choice), and a note saying what
    `auto` chose ("" for an explicit format)."""
    if not opts.auto:
        opts.compression()
        return opts, ""
    resolved = opts.resolved(checkpoint.fmt)
    note = f"--weight-format auto is {resolved.weight_format} for this {checkpoint.fmt} checkpoint"
    try:
        resolved.compression()
    except ValueError as err:
        raise ValueError(f"{err} ({note})") from err
    return resolved, f" ({note})"


def drafter_of(opts: ExportOptions, checkpoint: Checkpoint) -> str | None:
    """The drafter this export writes ("mtp", "dspark" or None); a drafter the checkpoint lacks is a CheckpointError
    naming SRC."""
    try:
        return opts.drafter_for(checkpoint.config.drafter)
    except ValueError as err:
        raise CheckpointError(f"{opts.src}: {err}") from err


def projection_of(checkpoint: Checkpoint, opts: ExportOptions) -> Projection:
    """IR size, conversion peak and runtime memory of exporting `checkpoint` with (resolved) `opts`."""
    return project(checkpoint, opts.weight_format, None if opts.native else opts.compression())


def check_disk(output: Path, projection: Projection) -> None:
    """Refuse an export whose files would not fit in the free space where OUTPUT goes (its temporary folder
    is created beside OUTPUT, in the nearest existing folder)."""
    where = next(p for p in (output.absolute(), *output.absolute().parents) if p.exists())
    free = shutil.disk_usage(where).free
    if projection.disk_bytes > free:
        raise ValueError(
            f"OUTPUT {output}: the {projection.weight_format} export needs ~{size_text(projection.disk_bytes)} of "
            f"free space (IR weights ~{size_text(projection.ir_bytes)}, held twice while the pieces are stitched) "
            f"but {where} has {size_text(free)} free; free space, choose another OUTPUT or a smaller "
            "--weight-format (--dry-run projects each)")


def physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_cpu_memory(projection: Projection) -> None:
    """Refuse a format the CPU plugin expands at compile time (its `cpu_expansion`) when the expanded weights
    would not fit in this machine's memory, naming the measured factor and the runnable choice."""
    factor = projection.format.cpu_expansion
    ram = physical_memory()
    if factor is not None and projection.cpu_private_bytes > ram:
        raise ValueError(
            f"--weight-format {projection.weight_format}: OpenVINO 2026.4.1's CPU plugin expands f4e2m1 routed "
            f"experts to f32 when compiling (measured {factor:g}x private memory per IR byte, docs/benchmarks.md \"Runtime at "
            f"V4-Flash widths\"): this IR (~{size_text(projection.ir_bytes)}) would need "
            f"~{size_text(projection.cpu_private_bytes)} on the CPU, this machine has {size_text(ram)}; export int4 "
            "(the default, ~1.1x) to run on the CPU")


def check_jobs(opts: ExportOptions, projection: Projection) -> None:
    """Refuse `--jobs N` where N pieces' projected peak exceeds the available memory (not with `--dataset`:
    a data-aware export converts one piece at a time)."""
    if opts.jobs is None or opts.jobs == 1 or opts.dataset is not None:
        return
    need, free = opts.jobs * projection.peak_bytes, memory.available_bytes()
    if need > free:
        fit = max(1, free // max(projection.peak_bytes, 1))
        raise ValueError(f"--jobs {opts.jobs}: {opts.jobs} pieces at once would peak at ~{size_text(need)} "
                         f"({size_text(projection.peak_bytes)} projected per piece) but {size_text(free)} is available; "
                         f"use --jobs {fit} or leave it out")


def jobs_of(opts: ExportOptions, projection: Projection, pieces: int) -> int:
    """Pieces converted at once: `--jobs`, else what the projected per-piece peak, the available memory
    and the cores allow (`memory.default_jobs`)."""
    if opts.jobs is not None:
        return min(opts.jobs, pieces)
    return memory.default_jobs(projection.peak_bytes, pieces, memory.available_bytes(), memory.cores())


def piece_bytes(checkpoint: Checkpoint, units: list[str]) -> int:
    """Checkpoint bytes a piece reads: its units' tensors (the final norm and hc_head with the head)."""
    wanted = set(units) | ({"final norm/hc_head"} if HEAD in units else set())
    return sum(h.nbytes for n, h in checkpoint.headers.items() if unit_of(n) in wanted)


class Progress:
    """Per piece and overall: pieces done, checkpoint bytes read, the rate measured so far and the ETA."""

    def __init__(self, sizes: list[int], log: Callable[[str], None]) -> None:
        self.sizes, self.log, self.start, self.read, self.count = sizes, log, time.perf_counter(), 0, 0

    def done(self, k: int, line: str) -> None:
        self.read += self.sizes[k]
        self.count += 1
        elapsed = time.perf_counter() - self.start
        total = sum(self.sizes)
        rate = self.read / elapsed if elapsed > 0 else 0.0
        eta = (total - self.read) / rate if rate > 0 else 0.0
        self.log(f"      {line} | {self.count}/{len(self.sizes)} pieces, {size_text(self.read)} of "
                 f"{size_text(total)} read, {size_text(rate)}/s, ETA {eta / 60:.1f} min")


def convert_one(checkpoint: Checkpoint, opts: ExportOptions, compression: CompressionOptions, units: list[str],
                first: bool, taps: bool, path: Path, calibration: Calibration | None = None
                ) -> tuple[dict[str, GroupPrecision], float, float]:
    """One piece traced, bound and saved at `path`; its precision report, the process's peak RSS (MB) so
    far and the seconds it took. With `calibration` (data-aware, the target's pieces in order): bound in
    FP32, compressed on its inputs over the calibration windows and run to give the next piece's inputs."""
    start = time.perf_counter()
    m = convert_piece(checkpoint.config, units, first_stateful=first, prefill_only=opts.prefill_only, taps=taps)
    if calibration is not None:
        bind_weights(m, checkpoint)
        calibration.compress(m, compression)
    else:
        bind_weights(m, checkpoint, compression, native=opts.native)
    report = precision_report(m)
    save_piece(m, path)
    del m
    memory.release_memory()
    return report, memory.peak_rss_mb(), time.perf_counter() - start


_WORKER: dict = {}  # a worker process's checkpoint, options and compression, set once by _start_worker


def _start_worker(parent: int, threads: int, checkpoint: Checkpoint, opts: ExportOptions,
                  compression: CompressionOptions) -> None:
    memory.die_with_parent(parent)
    memory.fixed_mmap_threshold()
    torch.set_num_threads(threads)
    _WORKER.update(checkpoint=checkpoint, opts=opts, compression=compression)


def _convert_in_worker(units: list[str], first: bool, taps: bool, path: Path):
    return convert_one(_WORKER["checkpoint"], _WORKER["opts"], _WORKER["compression"], units, first, taps, path)


def convert_pieces(checkpoint: Checkpoint, opts: ExportOptions, compression: CompressionOptions,
                   tasks: list[tuple[list[str], bool, bool, Path]], jobs: int,
                   calibration: Calibration | None = None
                   ) -> Iterator[tuple[int, tuple[dict[str, GroupPrecision], float, float]]]:
    """(index, `convert_one`'s result) of every task (units, first, taps, path) as it finishes: in this
    process one after another with `jobs` 1 or a `calibration` (data-aware: each piece's outputs feed the
    next, so in order), else `jobs` worker processes (spawned: no fork of a threaded runtime), each killed
    with this one."""
    if jobs == 1 or calibration is not None:
        for k, task in enumerate(tasks):
            yield k, convert_one(checkpoint, opts, compression, *task, calibration=calibration)
        return
    threads = max(1, memory.cores() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(os.getpid(), threads, checkpoint, opts, compression)) as pool:
        futures = {pool.submit(_convert_in_worker, *task): k for k, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _check_group_size(config, opts: CompressionOptions) -> None:
    """A group size that does not divide the input size of a weight it applies to fails in NNCF after
    converting; say so now."""
    r = opts.resolved()
    gs = r.get("group_size", -1)
    if gs <= 0 or r.get("group_size_fallback") != "error":
        return
    bad = [(n, s) for n, s in logical_tensors(config).items()
           if len(s) == 2 and target_of(n, opts, math.prod(s)) == PRIMARY and s[1] % gs]
    if bad:
        name, shape = bad[0]
        raise ValueError(f"--group-size {gs} does not divide the input size of {len(bad)} weight(s), e.g. "
                         f"{name} {list(shape)}; choose another --group-size or --group-size-fallback adjust/ignore")


def run(opts: ExportOptions, log: Callable[[str], None] | None = None) -> ExportResult:
    """Export as `opts` says (see the module docstring); returns the summary (also printed through `log`)."""
    log = log or (lambda line: print(line, flush=True))
    memory.fixed_mmap_threshold()
    times: dict[str, float] = {}

    @contextmanager
    def stage(name: str, what: str) -> Iterator[None]:
        log(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {what}")
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start
        log(f"      {name} done in {times[name]:.1f}s")

    with stage("validate", f"{opts.src}"):
        checkpoint = validate(opts)
    config = checkpoint.config
    opts, chosen = resolve(opts, checkpoint)
    projection = projection_of(checkpoint, opts)
    log(f"      {checkpoint.fmt} checkpoint, {config.num_hidden_layers} layers, {config.n_routed_experts} experts, "
        f"vocab {config.vocab_size}")
    log(f"      projected {projection.describe()}{chosen}")
    ident = identity(source_digest(opts.src), options_record(opts))
    log(f"      export key {ident['key']} (source {ident['source_digest'][:12]}, {ident['code_version']})")
    compression, quantization = opts.compression(), opts.quantization_config()
    # data-aware: the calibration windows are encoded (and checked) before any conversion
    calibration = Calibration(samples(opts.dataset, opts.src, opts.samples)) if opts.dataset else None
    pieces = plan(config, whole=opts.whole)
    drafter = drafter_of(opts, checkpoint)
    kind = "prefill-only" if opts.prefill_only else "stateful"
    jobs = jobs_of(opts, projection, len(pieces))
    if calibration is not None and jobs != 1:
        log(f"      data-aware (--dataset): the pieces run one at a time in this process, in order (each piece's "
            f"outputs on the calibration windows feed the next), not {jobs} at once" + (" (--jobs ignored)" if
                                                                                      opts.jobs else ""))
        jobs = 1
    log(f"      {jobs} piece(s) at once ({memory.cores()} cores): projected peak {size_text(jobs * projection.peak_bytes)} "
        f"({size_text(projection.peak_bytes)} per piece) of {size_text(memory.available_bytes())} available")
    precision: dict[str, GroupPrecision] = {}
    tokenizer = opts.convert_tokenizer and has_tokenizer(opts.src)
    with atomic_output_dir(opts.output, opts.overwrite) as tmp:
        work = tmp / ".pieces"
        work.mkdir()
        what = ", ".join(f"{k}={v}" for k, v in quantization.items())

        def convert(pieces: list[list[str]], name: str, taps: bool) -> list[Path]:
            """Each piece traced, bound and saved into `work` (the target's head piece with `drafter_taps`
            when `taps`), `jobs` at a time; data-aware (`calibration`), the target's pieces in order in this
            process, each compressed on its own inputs and run to feed the next (`compress/calibrate.py`)."""
            paths = [work / f"{name}{k:04d}.xml" for k in range(len(pieces))]
            tasks = [(units, k == 0, taps, paths[k]) for k, units in enumerate(pieces)]
            progress = Progress([piece_bytes(checkpoint, units) for units in pieces], log)
            calibrate = calibration if name == "" else None  # the drafter's pieces: data-free
            for k, (report, peak_mb, seconds) in convert_pieces(checkpoint, opts, compression, tasks, jobs,
                                                                calibrate):
                for g, p in report.items():
                    precision.setdefault(g, GroupPrecision()).add(p)
                units = pieces[k]
                progress.done(k, f"piece {k + 1}/{len(pieces)} ({units[0]}{'..' + units[-1] if len(units) > 1 else ''}): "
                                 f"{seconds:.1f}s, peak {peak_mb:,.0f} MB")
            return paths

        def join(paths: list[Path], pieces: list[list[str]], xml: str) -> None:
            stitch(paths, tmp / xml, labels=[u[0] if len(u) == 1 else f"{u[0]}..{u[-1]}" for u in pieces])
            for path in paths:
                path.unlink()
                path.with_suffix(".bin").unlink()
                hashes_path(path).unlink()

        with stage("convert", f"{kind} IR in {len(pieces)} piece(s), {jobs} at a time, {what}"):
            paths = convert(pieces, "", taps=drafter is not None)
        with stage("stitch", f"{len(paths)} piece(s) -> {IR_XML}"):
            join(paths, pieces, IR_XML)
        with stage("drafter", f"{drafter} -> {DRAFTER_XML}" if drafter else "none (--drafter to export one)"):
            record = None
            if drafter:
                drafters = drafter_plan(config)
                join(convert(drafters, "drafter", taps=False), drafters, DRAFTER_XML)
                record = drafter_record(drafter, config.dspark_block_size if drafter == DSPARK else 1, TAPS)
            work.rmdir()
        with stage("write", f"{opts.output} (atomically)"):
            write_folder(tmp, opts.src, config,
                         openvino_config(opts.weight_format, opts.prefill_only, quantization, len(pieces), opts.src,
                                         checkpoint.fmt, record, ident),
                         tokenizer)
    files = {p.name: p.stat().st_size for p in sorted(opts.output.iterdir()) if p.is_file()}
    result = ExportResult(opts.output, files, precision, times, memory.peak_rss_mb(), projection)
    if not tokenizer:
        log("      no tokenizer in SRC: OUTPUT has none" if opts.convert_tokenizer else "      tokenizer not converted")
    log(result.format())
    return result


def export(src: str | Path, output: str | Path, log: Callable[[str], None] | None = None, **options) -> ExportResult:
    """`run(ExportOptions(src, output, **options), log)`: the Python API of `deepseek-v4-ov export`."""
    return run(ExportOptions(Path(src), Path(output), **options), log)
