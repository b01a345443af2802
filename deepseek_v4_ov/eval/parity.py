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
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from deepseek_v4_ov.convert import static as static_cache
from deepseek_v4_ov.eval import text_eval
from deepseek_v4_ov.eval.metrics import agreeing_prefix, compare_logits, prompt_set
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM

STATIC = "STATIC-CPU"
"""Pseudo-device: the static-shape (NPU-style) model compiled on CPU."""


@dataclass
class Cell:
    device: str
    weight_format: str
    status: str = "ok"  # ok | failed | absent
    error: str = ""
    precision: str = ""
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    top1_agreement: float = float("nan")
    top5_overlap: float = float("nan")
    kl_mean: float = float("nan")
    first_token_agree: float = float("nan")  # fraction of prompts whose first new token matches
    agreeing_prefix: list[int] = field(default_factory=list)  # per prompt, out of new_tokens
    batch2_max_abs: float = float("nan")  # batch of 2 vs each row alone, same IR
    ppl: float = float("nan")  # perplexity of the prompts under the IR's prompt logits (text_eval.perplexity)
    ppl_rel: float = float("nan")  # ppl / PyTorch's ppl - 1
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
    stats, firsts, prefixes, all_logits, gaps = [], [], [], [], []
    for ids, logits, tokens, margins in zip(ref.prompts, ref.logits, ref.tokens, ref.margins):
        ov_logits, ov_tokens = runner.greedy(ids.numpy(), new_tokens)
        all_logits.append(ov_logits)
        stats.append(compare_logits(torch.from_numpy(logits), torch.from_numpy(ov_logits)))
        ov_tokens = ov_tokens[0].tolist()
        firsts.append(float(ov_tokens[:1] == tokens[:1]))
        prefixes.append(agreeing_prefix(tokens, ov_tokens))
        where = text_eval.first_disagreement(tokens, ov_tokens)
        gaps.append(None if where is None else margins[where])
    cell.ppl = text_eval.perplexity(all_logits, ref.prompts)
    cell.ppl_rel = cell.ppl / ref.ppl - 1
    cell.disagree_margin = gaps
    cell.max_abs = max(s.max_abs for s in stats)
    cell.mean_abs = float(np.mean([s.mean_abs for s in stats]))
    cell.top1_agreement = float(np.mean([s.top1_agreement for s in stats]))
    cell.top5_overlap = float(np.mean([s.top5_overlap for s in stats]))
    cell.kl_mean = float(np.mean([s.kl_mean for s in stats]))
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


def static_model(model, weight_format: str, max_len: int, workdir: Path, log=print) -> Path:
    """The static-shape IR of `model` for `max_len` tokens, compressed to `weight_format` (reused if saved)."""
    from deepseek_v4_ov.compress.policy import compress

    path = Path(workdir) / f"{weight_format}-static" / "openvino_model.xml"
    if path.is_file() and static_cache.max_len_of(ov.Core().read_model(path)) == max_len:
        return path
    log(f"[parity] exporting {weight_format} (static shapes, max_len {max_len})")
    ov_model = compress(static_cache.convert(model, max_len), weight_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, path, compress_to_fp16=False)
    return path


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

    `model_dir` None: the trained toy (`toy/trained`, release layout) written to `workdir/trained`.
    `prompt_source` "random": seeded random ids crossing the window and two ratio-128 boundaries;
    "heldout": windows of the shipped held-out Python source (never trained on), encoded with the model's
    own tokenizer. `prompt_length` fixes every prompt's length (default: `default_lengths`)."""
    from deepseek_v4_ov.checkpoint.layout import read_config
    from deepseek_v4_ov.checkpoint.release import load_model
    from deepseek_v4_ov.export.pipeline import export

    workdir = Path(workdir)
    if prompt_length is not None and prompt_length < 2:
        raise ValueError(f"--prompt-length {prompt_length}: a prompt needs at least 2 tokens (perplexity scores "
                         "token t+1 from position t)")
    if model_dir is None:
        from toy.trained import write_trained_toy

        model_dir = workdir / "trained"
        if not (model_dir / "config.json").is_file():
            log(f"[parity] writing the trained toy (release layout) to {model_dir}")
            write_trained_toy(model_dir, "trained", "fp8", overwrite=True)
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    available = ov.Core().available_devices
    devices = devices or sorted({d.split(".")[0] for d in available} | {STATIC})
    lengths = (prompt_length,) * prompts if prompt_length else default_lengths(config, prompts)
    if prompt_source == "heldout":
        prompt_ids = text_eval.heldout_prompts(model_dir, prompts, max(lengths))
        prompt_ids = [p[:, :n] for p, n in zip(prompt_ids, lengths)]
    elif prompt_source == "random":
        prompt_ids = prompt_set(config.vocab_size, lengths, seed=0)
    else:
        raise ValueError(f"prompt_source {prompt_source!r}: choose 'random' or 'heldout'")
    log(f"[parity] reference: PyTorch port (FP32) on {prompt_source} prompts of {list(lengths)} tokens, "
        f"{new_tokens} new tokens")
    model = load_model(model_dir).float().eval()
    ref = reference_outputs(model, prompt_ids, new_tokens)
    mtp = text_eval.mtp_accuracy(model, prompt_ids)
    log(f"[parity] PyTorch perplexity {ref.ppl:.4f}" + (f"; MTP top-1 on t+2 {mtp['mtp_top1_t+2']:.3f} (main "
                                                         f"model on t+1 {mtp['main_top1_t+1']:.3f})" if mtp else ""))
    static_len = max(lengths) + new_tokens

    cells: list[Cell] = []
    for fmt in weight_formats:
        stateful = workdir / f"{fmt}-stateful"
        if not (stateful / "openvino_model.xml").is_file():
            log(f"[parity] exporting {fmt} (stateful)")
            export(model_dir, stateful, weight_format=fmt, overwrite=True, convert_tokenizer=False,
                   log=lambda line: None)
        static = None  # the static-shape model, built when a static cell first needs it
        for device in devices:
            cell = Cell(device, fmt)
            cells.append(cell)
            base = device if device != STATIC else "CPU"
            if not any(d.split(".")[0] == base for d in available):
                cell.status, cell.error = "absent", f"{device} not in ov.Core().available_devices {available}"
                continue
            try:
                cfg = device_config(device, fmt, cpu_precision)
                if device in ("NPU", STATIC):
                    static = static or static_model(model, fmt, static_len, workdir, log)
                    runner = static_cache.StaticCacheLM(static, base, cfg)
                else:
                    runner = OVCausalLM(stateful, base, cfg)
                run_cell(runner, ref, new_tokens, cell)
                if device not in ("NPU", STATIC):
                    cell.batch2_max_abs = batch2_gap(runner, prompt_ids)
                log(f"[parity] {fmt:6s} {device:10s} max|d| {cell.max_abs:.2e}  top1 {cell.top1_agreement:.3f}  "
                    f"ppl {cell.ppl:.4f} ({100 * cell.ppl_rel:+.2f}%)  prefix {cell.agreeing_prefix}")
            except Exception as err:  # a device that cannot compile or run is a result, not a crash
                cell.status, cell.error = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                log(f"[parity] {fmt:6s} {device:10s} FAILED: {cell.error}")
    meta = {
        "model": str(model_dir),
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
    ("max|dlogit|", lambda c: f"{c.max_abs:.2e}"),
    ("mean|dlogit|", lambda c: f"{c.mean_abs:.2e}"),
    ("top1", lambda c: f"{c.top1_agreement:.3f}"),
    ("top5", lambda c: f"{c.top5_overlap:.3f}"),
    ("KL", lambda c: f"{c.kl_mean:.2e}"),
    ("1st tok", lambda c: f"{c.first_token_agree:.2f}"),
    ("ppl", lambda c: f"{c.ppl:.4f}"),
    ("dppl", lambda c: f"{100 * c.ppl_rel:+.2f}%"),
    ("greedy prefix", lambda c: "/".join(map(str, c.agreeing_prefix))),
    ("margin@diff", lambda c: "/".join("-" if g is None else f"{g:.2f}" for g in c.disagree_margin)),
    ("batch2", lambda c: f"{c.batch2_max_abs:.1e}"),
    ("compile s", lambda c: f"{c.compile_s:.1f}"),
    ("prefill ms", lambda c: f"{c.prefill_ms:.1f}"),
    ("decode ms/tok", lambda c: f"{c.decode_ms:.2f}"),
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
