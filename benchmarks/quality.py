"""The quality table: every weight format variant of the trained toys against the PyTorch port in FP32, in
users' terms, and the default 4-bit recipe chosen from it.

    .venv/bin/python benchmarks/quality.py [--models trained,trained-full] [--variants V1,V2,...]
                                           [--prompts 8] [--prompt-length 512] [--json FILE]
    .venv/bin/python benchmarks/quality.py --results RUN.json [RUN2.json]   # RESULTS.md block from runs' JSON

Per model (written in the release layout: FP4 experts, FP8 linears) and variant (`parity.variant`:
`int4:asym:g32`, `int4:head-f16`, ...), `parity.run` on CPU (FP32 inference hint) over `--prompts` windows
of `--prompt-length` tokens of held-out Python source (deepseek_v4_ov/toys/data/heldout.txt, never trained on),
teacher-forced: mean and 99th-percentile KL divergence to the port (nats), same-top-1 share, perplexity and
its change, the greedy prefix of `--new-tokens` as a secondary column, the IR's size and its export key.
Exports are kept in --workdir and reused only while their export key is this run's. Speed beside it: the
routed experts' and the head's forms at V4-Flash width, one call, from `benchmarks/layer_types.py`'s
forms (`benchmarks/results/v4_flash_projection.json`, 16-core Xeon): decode at V4-Flash scale is bound by
reading these weights, which a toy cannot show.

The default recipe (`choose`): among the int4 variants (the runnable 4-bit format: mxfp4/native keep the
FP4 codes but the CPU plugin expands them to f32, `WeightFormat.cpu_expansion`), KL first: the lowest mean KL
relative to the current default (`int4`) on the same model, averaged over the models that measured the
variant (the toys' KL differ by model, the ratio does not depend on it); variants equal at two significant
digits count as equal, and the fastest form of those at V4-Flash width (experts + head) wins (speed second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (machine, machine_line, python_main, replace_results_block, run_child, table,  # noqa: E402
                     write_json)

MODELS = ("trained", "trained-full")
VARIANTS = ("fp32", "int8", "int4:g32", "int4", "int4:g128:adjust", "int4:asym:g32", "int4:asym",
            "int4:asym:g128:adjust", "int4:awq", "int4:head-f16", "int4:head-int4", "mxfp4", "native")
FORMS = ROOT / "benchmarks" / "results" / "v4_flash_projection.json"
KL_DIGITS = ".1e"  # the precision the table prints mean KL at
BASELINE = "int4"  # the export's int4 default, measured on every model: KL is compared relative to it


def variant_forms(spec: str, forms: dict[str, float]) -> tuple[float | None, float | None]:
    """(experts ms/call, head ms/call) of the forms `benchmarks/layer_types.py` measured for `spec` at V4-Flash
    width (None where that form was not measured)."""
    from deepseek_v4_ov.eval.parity import variant

    o = variant(spec)
    fmt, head = o["weight_format"], o.get("head_precision", "int8")
    if fmt in ("int4",):
        sym = o.get("sym", True)
        g = o.get("group_size", 64)
        experts = next((ms for label, ms in forms.items()
                        if label.startswith(f"experts grouped int4 {'sym' if sym else 'asym'} g{g}")), None)
    else:
        experts = {"int8": forms.get("experts grouped int8"),
                   "native": forms.get("experts grouped f4e2m1 (native)")}.get(fmt)
    if fmt == "fp32":
        return None, None
    head_label = {"int8": "head int8 per row", "f16": "head f16", "int4": "head int4 sym g64"}[head]
    return experts, next((ms for label, ms in forms.items() if label.startswith(head_label)), None)


def cli_flags(options: dict) -> list[str]:
    """`deepseek-v4-ov export` flags of a variant's `export` keywords."""
    flags = []
    for key, value in options.items():
        if key == "sym":
            flags.append("--sym" if value else "--asym")
        elif value is True:
            flags.append("--" + key.replace("_", "-"))
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def export_cost(folder: Path, work: Path, spec: str) -> dict:
    """Export variant `spec` in a child process into the folder `parity.run` then reuses (same key): its
    wall time and peak RSS (ru_maxrss)."""
    from deepseek_v4_ov.eval.parity import slug, variant

    out = work / f"{slug(spec)}-stateful"
    cmd = [python_main(), "-m", "deepseek_v4_ov.cli", "export", "--model", str(folder), str(out),
           *cli_flags(variant(spec)), "--disable-convert-tokenizer", "--overwrite"]
    rc, wall, rss, output = run_child(cmd)
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n{output[-4000:]}")
    print(f"  {spec}: exported in {wall:.1f}s, peak RSS {rss:,.0f} MB", flush=True)
    return {"export_s": wall, "peak_rss_mb": rss}


def measure(args) -> dict:
    from deepseek_v4_ov.toys.trained import write_trained_toy

    from deepseek_v4_ov.eval import parity

    variants = tuple(args.variants.split(","))
    for spec in variants:
        parity.variant(spec)  # every check before any work
    models = tuple(args.models.split(","))
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"--models {name}: choose from {', '.join(MODELS)}")
    info = machine()
    print(machine_line(info), flush=True)
    forms = {f["label"]: f["ms"] for f in json.loads(FORMS.read_text())["forms"]}
    runs = {}
    for name in models:
        work = args.workdir / name
        folder = work / "checkpoint"
        write_trained_toy(folder, name, "fp8", overwrite=True)  # deterministic: the same digest every run
        costs = {spec: export_cost(folder, work, spec) for spec in args.cost}
        start = time.perf_counter()
        cells, meta = parity.run(folder, work, ["CPU"], variants, args.prompts, args.new_tokens,
                                 prompt_source="heldout", prompt_length=args.prompt_length)
        rows = []
        for c in cells:
            row = {k: getattr(c, k) for k in ("weight_format", "status", "error", "kl_mean", "kl_p99", "same_top1",
                                              "ppl", "ppl_delta", "agreeing_prefix", "decode_ms", "ir",
                                              "export_key")}
            if c.status == "ok":
                ir = Path(c.ir)
                row["ir_mb"] = (ir.stat().st_size + ir.with_suffix(".bin").stat().st_size) / 1e6
            row["experts_ms"], row["head_ms"] = variant_forms(c.weight_format, forms)
            row.update(costs.get(c.weight_format, {}))
            rows.append(row)
        runs[name] = {"meta": meta, "rows": rows, "seconds": time.perf_counter() - start}
    command = ("benchmarks/quality.py --models " + ",".join(models) + f" --prompts {args.prompts} --prompt-length "
               f"{args.prompt_length} --new-tokens {args.new_tokens}"
               + ("" if variants == VARIANTS else " --variants " + ",".join(variants))
               + (" --cost " + " ".join(args.cost) if args.cost else ""))
    return {"machine": info, "command": command, "forms": str(FORMS.relative_to(ROOT)), "runs": runs}


def choose(result: dict) -> tuple[str, str]:
    """The default 4-bit recipe (module docstring) and the reason, in words."""
    rel: dict[str, list[float]] = {}
    speed: dict[str, float] = {}
    for run in result["runs"].values():
        kl = {r["weight_format"]: r["kl_mean"] for r in run["rows"]
              if r["status"] == "ok" and r["weight_format"].split(":")[0] == "int4"}
        for spec, value in kl.items():
            rel.setdefault(spec, []).append(value / kl[BASELINE])
        for r in run["rows"]:
            if r["weight_format"] in kl and r["experts_ms"] is not None and r["head_ms"] is not None:
                speed[r["weight_format"]] = r["experts_ms"] + r["head_ms"]
    score = {v: float(format(sum(k) / len(k), ".2g")) for v, k in rel.items()}
    best = min(score.values())
    tied = [v for v, k in score.items() if k == best]
    timed = [v for v in tied if v in speed]
    pick = min(timed, key=speed.get) if timed else tied[0]
    ranking = ", ".join(f"{v} {k:.2f}" for v, k in sorted(score.items(), key=lambda kv: kv[1]))
    why = (f"int4 variants by mean KL relative to {BASELINE} on the same model, averaged over the models that "
           f"measured them: {ranking}"
           + (f"; of the lowest, the fastest at V4-Flash width (experts + head ms/call {speed[pick]:.2f})"
              if len(tied) > 1 and timed else ""))
    return pick, why


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def merged(results: list[dict]) -> dict:
    """Runs of several invocations (e.g. one per model) as one result."""
    runs = {name: {**run, "command": r["command"], "machine": r["machine"]} for r in results
            for name, run in r["runs"].items()}
    return {"runs": runs, "forms": results[0]["forms"]}


def block(result: dict) -> str:
    lines = [f"Speed columns: one call at V4-Flash width from `{result['forms']}` (`benchmarks/layer_types.py` "
             "forms, 16-core Xeon); `-` where that form was not measured.", ""]
    for name, run in result["runs"].items():
        meta = run["meta"]
        lines += [f"`{run['command']}`; {machine_line(run['machine'])}", ""]
        lines += [f"**{name}** (release layout; PyTorch FP32 perplexity {meta['pytorch_ppl']:.4f} over "
                  f"{len(meta['prompt_lengths'])} x {meta['prompt_lengths'][0]} held-out tokens, teacher-forced; "
                  f"greedy prefix of {meta['new_tokens']} new tokens; source digest {meta['source_digest'][:12]}; "
                  f"{run['seconds']:.0f} s)", ""]
        rows = []
        for r in run["rows"]:
            if r["status"] != "ok":
                rows.append([r["weight_format"], r["status"] + ": " + r["error"][:90], *[""] * 10])
                continue
            prefix = r["agreeing_prefix"]
            rows.append([r["weight_format"], f"{r['kl_mean']:{KL_DIGITS}}", f"{r['kl_p99']:.1e}",
                         f"{r['same_top1']:.4f}",
                         f"{r['ppl']:.4f}", f"{100 * r['ppl_delta']:+.2f}%", f"{sum(prefix) / len(prefix):.1f}",
                         f"{r['ir_mb']:.2f}", fmt(r["experts_ms"], ".3f"), fmt(r["head_ms"], ".3f"),
                         f"{r['export_s']:.0f} s / {r['peak_rss_mb']:,.0f} MB" if "export_s" in r else "-",
                         r["export_key"]])
        lines += [table(["variant", "KL mean", "KL p99", "same top-1", "ppl", "vs PyTorch", "greedy prefix (mean)",
                         "IR MB", "experts ms (V4-Flash)", "head ms (V4-Flash)", "export time / peak RSS",
                         "export key"], rows), ""]
    pick, why = choose(result)
    lines.append(f"Default 4-bit recipe by this rule: **{pick}** ({why}).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="parity variants FORMAT[:OPTION...]")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-length", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("out/quality"))
    ap.add_argument("--cost", nargs="*", default=[], help="variants to export in a child process first, for their "
                                                        "conversion time and peak memory")
    ap.add_argument("--json", help="write the run here")
    ap.add_argument("--results", type=Path, nargs="+",
                    help="write benchmarks/RESULTS.md's `quality` block from these runs' JSON (no measuring)")
    args = ap.parse_args()
    if args.results is not None:
        for path in args.results:
            if not path.is_file():
                raise SystemExit(f"--results {path}: no such file (a JSON written by --json)")
        replace_results_block("quality", block(merged([json.loads(p.read_text()) for p in args.results])))
        return
    result = measure(args)
    write_json(args.json, result)
    print(block(merged([result])))


if __name__ == "__main__":
    main()
