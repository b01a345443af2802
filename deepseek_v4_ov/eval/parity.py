"""The parity suite: exported IRs (per weight format, per device) against the PyTorch port.

For each format the model is exported once (stateful IR, plus the static-shape model for NPU), and for
each device present it is compiled and run on a fixed, seeded prompt set whose lengths cross the sliding
window and ratio-128 boundaries. Per cell: logit distances, top-1 agreement, top-5 overlap, KL, greedy
agreement (first token and agreeing prefix), batch-2 vs batch-1, compile/prefill/decode times. A device
that fails to compile or run is a reported failure, not a crash.

Static shapes (NPU): the NPU plugin wants fixed shapes. The static model (`convert/static.py`) takes one
token per call (`input_ids [1, 1]`) over fixed-size masked caches sized for `static_length` = longest
prompt + new tokens (ring-buffer window, entry buffers written by index, fixed indexer top-k, dense MoE),
so no shape depends on the position; prompts are fed token by token. It is compressed like the other IRs
and checked on CPU as well (`STATIC-CPU`), so the NPU path runs on every machine. Batch 1 only (no batch-2
column).

The users' figures per cell (`metrics.compare_logits`, `text_eval.perplexity`), teacher-forced over the
prompts (held-out text by default), pooled over every position: `kl_mean` and `kl_p99` (KL divergence of
the IR's next-token distribution from the PyTorch port's in FP32, nats), `same_top1` (share of positions
whose top-1 token is the same), `ppl` and `ppl_delta` (IR / PyTorch - 1); the greedy prefix is a secondary
column (one flip at a near-tie ends it).

Formats are variants `FORMAT[:OPTION...]` (`variant`): `int4:asym:g32`, `int4:head-f16`, ... Each is
exported once into WORKDIR and reused only while its export key (`export/identity.py`: the source
checkpoint's digest, the options, the package version) is the one recorded there; the report names the IR
each cell measured and its key.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from deepseek_v4_ov.convert import static as static_cache
from deepseek_v4_ov.runtime.static_lm import StaticCacheLM
from deepseek_v4_ov.eval import text_eval
from deepseek_v4_ov.eval.metrics import agreeing_prefix, compare_logits, prompt_set
from deepseek_v4_ov.export.identity import OV_CONFIG_NAME, identity, recorded, source_digest, why_stale
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM

STATIC = "STATIC-CPU"
"""Pseudo-device: the static-shape (NPU-style) model compiled on CPU."""
FLAGS = {"sym": ("sym", True), "asym": ("sym", False), "head-f16": ("head_precision", "f16"),
         "head-int8": ("head_precision", "int8"), "head-int4": ("head_precision", "int4"),
         "adjust": ("group_size_fallback", "adjust"), "awq": ("awq", True), "corpus": ("dataset", "corpus"),
         "scale-estimation": ("scale_estimation", True)}
"""Options of a format variant (`variant`), by name -> (`export` keyword, value); `gN` sets the group size;
`corpus` is data-aware compression calibrated on the toys' training corpus (`compress/calibrate.py`)."""


def variant(spec: str) -> dict:
    """`export` keywords of a format variant `FORMAT[:OPTION...]` (OPTION: `gN`, or one of FLAGS), e.g.
    `int4:asym:g32` -> weight_format int4, sym False, group_size 32. Checked as the export checks them
    (ValueError naming the variant)."""
    from deepseek_v4_ov.compress.formats import format_named
    from deepseek_v4_ov.export.options import ExportOptions

    fmt, *flags = spec.split(":")
    options: dict = {"weight_format": fmt}
    for flag in flags:
        m = re.fullmatch(r"g(-?\d+)", flag)
        if m:
            options["group_size"] = int(m.group(1))
        elif flag in FLAGS:
            options[FLAGS[flag][0]] = FLAGS[flag][1]
        else:
            raise ValueError(f"--weight-formats {spec}: unknown option {flag!r}; use gN (group size) or one of "
                             f"{', '.join(FLAGS)}")
    try:
        if format_named(fmt).resolved_from_source:
            raise ValueError("name the format (auto depends on the checkpoint)")
        ExportOptions(Path(), Path(), **options).compression()
    except ValueError as err:
        raise ValueError(f"--weight-formats {spec}: {err}") from err
    return options


def slug(spec: str) -> str:
    """A variant's folder name part (`int4:asym:g32` -> `int4-asym-g32`)."""
    return spec.replace(":", "-")


@dataclass
class Cell:
    device: str
    weight_format: str
    status: str = "ok"  # ok | failed | absent
    error: str = ""
    precision: str = ""
    ir: str = ""  # the IR measured
    export_key: str = ""  # its export key (export/identity.py)
    kl_mean: float = float("nan")  # KL(PyTorch || IR) per position, nats: mean and 99th percentile
    kl_p99: float = float("nan")
    same_top1: float = float("nan")  # share of positions with the same top-1 token
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    top5_overlap: float = float("nan")
    first_token_agree: float = float("nan")  # fraction of prompts whose first new token matches
    agreeing_prefix: list[int] = field(default_factory=list)  # per prompt, out of new_tokens
    batch2_max_abs: float = float("nan")  # batch of 2 vs each row alone, same IR
    ppl: float = float("nan")  # perplexity of the prompts under the IR's prompt logits (text_eval.perplexity)
    ppl_delta: float = float("nan")  # ppl / PyTorch's ppl - 1
    disagree_margin: list = field(default_factory=list)  # per prompt: PyTorch's top1-top2 gap at the first
    # differing greedy token (None where all agree): a small gap is rounding, a large one a bug
    compile_s: float = float("nan")
    prefill_ms: float = float("nan")
    decode_ms: float = float("nan")


@dataclass
class Reference:
    """PyTorch port outputs on the prompt set: prompt logits and greedy tokens per prompt."""

    prompts: list[torch.Tensor]
    logits: list[np.ndarray]
    tokens: list[list[int]]
    margins: list[list[float]] = field(default_factory=list)  # per prompt, per greedy step: top1 - top2
    ppl: float = float("nan")


def default_lengths(config, count: int) -> tuple[int, ...]:
    """`count` prompt lengths from just past the window to past two ratio-128 boundaries (>= 300)."""
    low, high = config.sliding_window + 1, max(300, 2 * 128 + config.sliding_window)
    return tuple(int(x) for x in np.linspace(low, high, count).round())


@torch.no_grad()
def reference_outputs(model, prompts: list[torch.Tensor], new_tokens: int) -> Reference:
    logits, tokens, margins = [], [], []
    for ids in prompts:
        out = model(ids)
        logits.append(out.logits.numpy())
        cache, last, new, gaps = out.past_key_values, out.logits[:, -1], [], []
        for _ in range(new_tokens):
            new.append(int(last.argmax(-1)))
            gaps.append(text_eval.margin(last[0]))
            last = model(torch.tensor([[new[-1]]]), past_key_values=cache).logits[:, -1]
        tokens.append(new)
        margins.append(gaps)
    return Reference(prompts, logits, tokens, margins, text_eval.perplexity(logits, prompts))


def run_cell(runner: OVCausalLM, ref: Reference, new_tokens: int, cell: Cell) -> None:
    """Fill `cell` from one compiled model."""
    firsts, prefixes, all_logits, gaps = [], [], [], []
    for ids, tokens, margins in zip(ref.prompts, ref.tokens, ref.margins):
        ov_logits, ov_tokens = runner.greedy(ids.numpy(), new_tokens)
        all_logits.append(ov_logits)
        ov_tokens = ov_tokens[0].tolist()
        firsts.append(float(ov_tokens[:1] == tokens[:1]))
        prefixes.append(agreeing_prefix(tokens, ov_tokens))
        where = text_eval.first_disagreement(tokens, ov_tokens)
        gaps.append(None if where is None else margins[where])
    stats = compare_logits(ref.logits, all_logits)  # pooled over every prompt position
    cell.kl_mean, cell.kl_p99, cell.same_top1 = stats.kl_mean, stats.kl_p99, stats.same_top1
    cell.max_abs, cell.mean_abs, cell.top5_overlap = stats.max_abs, stats.mean_abs, stats.top5_overlap
    cell.ppl = text_eval.perplexity(all_logits, ref.prompts)
    cell.ppl_delta = cell.ppl / ref.ppl - 1
    cell.disagree_margin = gaps
    cell.first_token_agree = float(np.mean(firsts))
    cell.agreeing_prefix = prefixes
    cell.compile_s = runner.timings.compile_s
    cell.prefill_ms = 1e3 * float(np.mean(runner.timings.prefill_s))
    cell.decode_ms = runner.timings.decode_ms_per_token()
    cell.precision = runner.precision


def batch2_gap(runner: OVCausalLM, prompts: list[torch.Tensor]) -> float:
    """Max |logit diff| between a batch of two equal-length prompts and each prompt alone."""
    n = min(p.shape[1] for p in prompts[:2])
    rows = np.concatenate([p[:, :n].numpy() for p in prompts[:2]], 0)
    runner.reset()
    both = runner(rows)
    gaps = []
    for i in range(2):
        runner.reset()
        gaps.append(np.abs(both[i] - runner(rows[i : i + 1])[0]).max())
    return float(max(gaps))


def device_config(device: str, weight_format: str, cpu_precision: str) -> dict:
    """CPU runs FP32 exactly by default (`cpu_precision="f32"`); GPU/NPU keep their default precision."""
    if device in ("CPU", STATIC) and cpu_precision == "f32":
        return dict(F32_CONFIG)
    return {}


def static_model(model, spec: str, max_len: int, workdir: Path, source: str, log=print) -> tuple[Path, str]:
    """The static-shape IR of `model` (whose checkpoint has digest `source`) for `max_len` tokens, compressed
    as variant `spec` says; reused while the key recorded beside it is this one. Returns (IR, key)."""
    from deepseek_v4_ov.compress.policy import compress_with
    from deepseek_v4_ov.export.options import ExportOptions

    options = variant(spec)
    want = identity(source, {"static_max_len": max_len, **options})
    folder = Path(workdir) / f"{slug(spec)}-static"
    path = folder / "openvino_model.xml"
    stale = why_stale(recorded(folder), want)
    if stale is None:
        return path, want["key"]
    log(f"[parity] exporting {spec} (static shapes, max_len {max_len}; export key {want['key']}: {stale})")
    opts = ExportOptions(Path(), Path(), **options)
    if opts.native or opts.dataset:
        raise ValueError(f"{spec}: the static model is compressed by NNCF data-free: native (the release's codes) "
                         "and data-aware variants have no static form yet")
    ov_model = compress_with(static_cache.convert(model, max_len), opts.compression())
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, path, compress_to_fp16=False)
    (folder / OV_CONFIG_NAME).write_text(json.dumps({"ir": "static", "identity": want}, indent=2) + "\n")
    return path, want["key"]


def run(
    model_dir: Path | None,
    workdir: Path,
    devices: list[str] | None = None,
    weight_formats: tuple[str, ...] = ("fp32", "int8", "int4"),
    prompts: int = 3,
    new_tokens: int = 32,
    cpu_precision: str = "f32",
    log=print,
    prompt_source: str = "random",
    prompt_length: int | None = None,
) -> tuple[list[Cell], dict]:
    """Export, run and compare; return the cells and run metadata.

    `model_dir` None: the trained toy (`deepseek_v4_ov/toys/data`, release layout) written to `workdir/trained`.
    `weight_formats`: variants `FORMAT[:OPTION...]` (`variant`). `prompt_source` "random": seeded random
    ids crossing the window and two ratio-128 boundaries; "heldout": windows of the shipped held-out Python
    source (never trained on), encoded with the model's own tokenizer. `prompt_length` fixes every prompt's
    length (default: `default_lengths`)."""
    from deepseek_v4_ov.checkpoint.layout import read_config
    from deepseek_v4_ov.checkpoint.release import load_model
    from deepseek_v4_ov.export.folder import IR_XML
    from deepseek_v4_ov.export.reuse import ensure_export

    workdir = Path(workdir)
    variants = {spec: variant(spec) for spec in weight_formats}  # every check before any work
    if prompt_length is not None and prompt_length < 2:
        raise ValueError(f"--prompt-length {prompt_length}: a prompt needs at least 2 tokens (perplexity scores "
                         "token t+1 from position t)")
    if prompt_source not in ("random", "heldout"):
        raise ValueError(f"prompt_source {prompt_source!r}: choose 'random' or 'heldout'")
    if model_dir is None:
        from deepseek_v4_ov.toys.trained import write_trained_toy

        model_dir = workdir / "trained"
        if not (model_dir / "config.json").is_file():
            log(f"[parity] writing the trained toy (release layout) to {model_dir}")
            write_trained_toy(model_dir, "trained", "fp8", overwrite=True)
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    source = source_digest(model_dir)
    available = ov.Core().available_devices
    devices = devices or sorted({d.split(".")[0] for d in available} | {STATIC})
    lengths = (prompt_length,) * prompts if prompt_length else default_lengths(config, prompts)
    if prompt_source == "heldout":
        prompt_ids = text_eval.heldout_prompts(model_dir, prompts, max(lengths))
        prompt_ids = [p[:, :n] for p, n in zip(prompt_ids, lengths)]
    else:
        prompt_ids = prompt_set(config.vocab_size, lengths, seed=0)
    log(f"[parity] reference: PyTorch port (FP32) of {model_dir} (source digest {source[:12]}) on {prompt_source} "
        f"prompts of {list(lengths)} tokens, {new_tokens} new tokens")
    model = load_model(model_dir).float().eval()
    ref = reference_outputs(model, prompt_ids, new_tokens)
    mtp = text_eval.mtp_accuracy(model, prompt_ids)
    log(f"[parity] PyTorch perplexity {ref.ppl:.4f}" + (f"; MTP top-1 on t+2 {mtp['mtp_top1_t+2']:.3f} (main "
                                                         f"model on t+1 {mtp['main_top1_t+1']:.3f})" if mtp else ""))
    static_len = max(lengths) + new_tokens

    cells: list[Cell] = []
    irs: dict[str, dict] = {}
    for spec, options in variants.items():
        stateful = workdir / f"{slug(spec)}-stateful"
        try:
            ident, reused = ensure_export(model_dir, stateful, log=lambda line: log(f"[parity] {spec}: {line}"),
                                          convert_tokenizer=False, **options)
        except Exception as err:  # an export that fails is a result for every device, not a crash
            error = f"export failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
            log(f"[parity] {spec:6s} {error}")
            cells += [Cell(device, spec, status="failed", error=error) for device in devices]
            continue
        irs[spec] = {"stateful": str(stateful / IR_XML), "key": ident["key"], "reused": reused}
        static = None  # the static-shape model, built when a static cell first needs it
        for device in devices:
            cell = Cell(device, spec, ir=str(stateful / IR_XML), export_key=ident["key"])
            cells.append(cell)
            base = device if device != STATIC else "CPU"
            if not any(d.split(".")[0] == base for d in available):
                cell.status, cell.error = "absent", f"{device} not in ov.Core().available_devices {available}"
                continue
            try:
                cfg = device_config(device, spec, cpu_precision)
                if device in ("NPU", STATIC):
                    static = static or static_model(model, spec, static_len, workdir, source, log)
                    cell.ir, cell.export_key = str(static[0]), static[1]
                    irs[spec]["static"], irs[spec]["static_key"] = cell.ir, cell.export_key
                    runner = StaticCacheLM(static[0], base, cfg)
                else:
                    runner = OVCausalLM(stateful, base, cfg)
                run_cell(runner, ref, new_tokens, cell)
                if device not in ("NPU", STATIC):
                    cell.batch2_max_abs = batch2_gap(runner, prompt_ids)
                log(f"[parity] {spec:6s} {device:10s} KL {cell.kl_mean:.2e} (p99 {cell.kl_p99:.2e})  same top-1 "
                    f"{cell.same_top1:.3f}  ppl {cell.ppl:.4f} ({100 * cell.ppl_delta:+.2f}%)  "
                    f"prefix {cell.agreeing_prefix}")
            except Exception as err:  # a device that cannot compile or run is a result, not a crash
                cell.status, cell.error = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                log(f"[parity] {spec:6s} {device:10s} FAILED: {cell.error}")
    meta = {
        "model": str(model_dir),
        "source_digest": source,
        "irs": irs,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "openvino": ov.get_version(),
        "available_devices": available,
        "prompt_lengths": list(lengths),
        "new_tokens": new_tokens,
        "cpu_precision": cpu_precision,
        "static_length": static_len,
        "prompt_source": prompt_source,
        "pytorch_ppl": ref.ppl,
        "mtp": mtp,
    }
    return cells, meta


# ------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------
COLUMNS = (
    ("format", lambda c: c.weight_format),
    ("device", lambda c: c.device),
    ("status", lambda c: c.status),
    ("precision", lambda c: c.precision),
    ("KL mean", lambda c: f"{c.kl_mean:.2e}"),
    ("KL p99", lambda c: f"{c.kl_p99:.2e}"),
    ("same top1", lambda c: f"{c.same_top1:.3f}"),
    ("ppl", lambda c: f"{c.ppl:.4f}"),
    ("dppl", lambda c: f"{100 * c.ppl_delta:+.2f}%"),
    ("greedy prefix", lambda c: "/".join(map(str, c.agreeing_prefix))),
    ("margin@diff", lambda c: "/".join("-" if g is None else f"{g:.2f}" for g in c.disagree_margin)),
    ("max|dlogit|", lambda c: f"{c.max_abs:.2e}"),
    ("mean|dlogit|", lambda c: f"{c.mean_abs:.2e}"),
    ("top5", lambda c: f"{c.top5_overlap:.3f}"),
    ("1st tok", lambda c: f"{c.first_token_agree:.2f}"),
    ("batch2", lambda c: f"{c.batch2_max_abs:.1e}"),
    ("compile s", lambda c: f"{c.compile_s:.1f}"),
    ("prefill ms", lambda c: f"{c.prefill_ms:.1f}"),
    ("decode ms/tok", lambda c: f"{c.decode_ms:.2f}"),
    ("export key", lambda c: c.export_key),
)


def table_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for c in cells:
        if c.status == "ok":
            rows.append([fn(c) for _, fn in COLUMNS])
        else:
            rows.append([c.weight_format, c.device, c.status, c.error] + [""] * (len(COLUMNS) - 4))
    return rows


def format_table(cells: list[Cell]) -> str:
    header = [name for name, _ in COLUMNS]
    rows = table_rows(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths[3] = min(widths[3], 60)
    line = lambda r: "  ".join(str(v)[: widths[i]].ljust(widths[i]) for i, v in enumerate(r))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown(cells: list[Cell], meta: dict) -> str:
    header = [name for name, _ in COLUMNS]
    out = [f"# Parity report: {meta['model']}", "",
           f"{meta['date']}, OpenVINO {meta['openvino']}, devices {meta['available_devices']}; prompts of "
           f"{meta['prompt_lengths']} tokens ({meta.get('prompt_source', 'random')}), {meta['new_tokens']} new "
           f"tokens; CPU precision {meta['cpu_precision']}; PyTorch perplexity {meta.get('pytorch_ppl', float('nan')):.4f}"
           + (f"; MTP top-1 on t+2 {meta['mtp']['mtp_top1_t+2']:.3f} (main model on t+1 "
              f"{meta['mtp']['main_top1_t+1']:.3f})" if meta.get("mtp") else "") + ".",
           "", f"Source checkpoint digest {meta['source_digest']}. IRs measured (export key, reused or exported "
               "by this run):", "",
           *(f"- {spec}: {ir['stateful']} (key {ir['key']}, {'reused' if ir['reused'] else 'exported'})"
             + (f"; static {ir['static']} (key {ir['static_key']})" if "static" in ir else "")
             for spec, ir in meta["irs"].items()),
           "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(cells)]
    return "\n".join(out) + "\n"


def write_reports(cells: list[Cell], meta: dict, report: Path) -> tuple[Path, Path]:
    """JSON at `report` and Markdown beside it (same name, .md)."""
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=2) + "\n")
    md = report.with_suffix(".md")
    md.write_text(markdown(cells, meta))
    return report, md


# ------------------------------------------------------------------------------------------------------
# Per-layer drift
# ------------------------------------------------------------------------------------------------------
def layer_drift(model_dir: Path, weight_format: str, prompts: list[torch.Tensor], workdir: Path) -> list[dict]:
    """Where a difference starts: per layer, max |streams IR - streams PyTorch| for each prompt alone
    (`vs_pytorch`), and max |IR batch of 2 - IR row alone| (`batch2_vs_batch1`), on CPU in FP32, one prefill
    from a reset state.

    The IR is the one `export` ships (`model_dir` exported in `weight_format`), with each layer's output
    streams, which the stitch names `layers.{i}.streams`, added as outputs."""
    from deepseek_v4_ov.checkpoint.release import load_model
    from deepseek_v4_ov.export.folder import IR_XML
    from deepseek_v4_ov.export.pipeline import export

    model = load_model(model_dir).eval()
    layers = len(model.layers)
    out = Path(workdir) / f"{weight_format}-drift"
    export(model_dir, out, weight_format=weight_format, overwrite=True, convert_tokenizer=False,
           log=lambda line: None)
    ov_model = ov.Core().read_model(str(out / IR_XML))
    ov_model.add_outputs([f"layers.{i}.streams" for i in range(layers)])
    runner = OVCausalLM(ov_model, "CPU", dict(F32_CONFIG))
    names = ["logits"] + [f"layers.{i}.streams" for i in range(layers)]

    def ir(ids: np.ndarray) -> list[np.ndarray]:
        runner.reset()
        runner(ids)
        return [np.array(runner.request.get_tensor(name).data) for name in names]

    n = min(p.shape[1] for p in prompts[:2])
    rows = torch.cat([p[:, :n] for p in prompts[:2]], 0)
    expected = []
    with torch.no_grad():
        for i in range(2):
            streams: list[torch.Tensor] = []
            ids = rows[i : i + 1]
            cache = model.empty_cache(1)
            final = model.trunk(ids, torch.arange(n)[None], cache, streams)
            logits = model.head(model.head_hidden(final, model, model.norm)).float()
            expected.append([t.float().numpy() for t in (logits, *streams)])
    alone = [ir(rows[i : i + 1].numpy()) for i in range(2)]
    both = ir(rows.numpy())
    labels = ["logits"] + [f"layer {i}" for i in range(layers)]
    order = list(range(1, len(labels))) + [0]  # layers first, logits last
    return [
        {
            "output": labels[k],
            "vs_pytorch": float(max(np.abs(alone[i][k] - expected[i][k]).max() for i in range(2))),
            "batch2_vs_batch1": float(max(np.abs(both[k][i] - alone[i][k][0]).max() for i in range(2))),
        }
        for k in order
    ]
