"""Memory-bandwidth bound of decode: measured bandwidth / bytes of weights read per decoded token, and the
fraction of that bound an exported stateful IR reaches.

    .venv/bin/python benchmarks/bandwidth.py --ir /tmp/dsv4-bench/mid-bf16-ov-int4 --json out.json
    .venv/bin/python benchmarks/bandwidth.py --preset seed --format int4      # exports the toy first

1. Bandwidth: numpy over a `--gib` GiB float64 buffer (far larger than the caches): read (sum) with one
   thread and with one thread per core (numpy drops the GIL in both), copy with one thread per core
   (bytes read + written). Best of `--trials`; the all-core read figure is the one the bound uses.
2. Bytes per decoded token, from the IR's constants (`compression.weight_constants` maps each constant,
   its scales and zero points included, back to its official tensor name): at batch 1 a token reads every
   weight of attention (core, compressor, indexer), the router, the shared expert, the mHC mixing and the
   norms in every layer, `num_experts_per_tok / n_routed_experts` of each layer's routed experts, one row of
   the embedding and the whole head. The KV cache and computed constants (RoPE tables, masks) are not
   counted (reported separately where they are constants). `dense` = every weight constant, what a
   runtime reads if it computes all experts.
3. Measured decode tokens/s of the IR (a child process: `benchmarks/runtimes.py --worker ov`, prompt
   `--prompt`, `--new` tokens, median of `--repeats`), per precision hint; fraction = measured / bound.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (ensure_export, ensure_toy, last_json, machine, machine_line, python_main,  # noqa: E402
                     run_child, table, write_json)

import numpy as np  # noqa: E402


def measure_bandwidth(gib: float, trials: int, threads: int) -> dict[str, float]:
    n = int(gib * 2**30) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = [int(b) for b in np.linspace(0, n, threads + 1)]
    parts = list(zip(bounds[:-1], bounds[1:]))
    out: dict[str, list[float]] = {"read_1t": [], "read_all": [], "copy_all": []}
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(trials):
            t = time.perf_counter()
            src.sum()
            out["read_1t"].append(src.nbytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            list(pool.map(lambda p: src[p[0]:p[1]].sum(), parts))
            out["read_all"].append(src.nbytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            list(pool.map(lambda p: np.copyto(dst[p[0]:p[1]], src[p[0]:p[1]]), parts))
            out["copy_all"].append(2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    res = {f"{k}_gbs": max(v) for k, v in out.items()}
    res.update({f"{k}_gbs_median": statistics.median(v) for k, v in out.items()})
    return res


ACTIVE_RULES = (  # (label, official-name pattern)
    ("routed experts (top-k of E)", r"layers\.(\d+|\?)\.ffn\.experts\..*"),
    ("head", r"head\.weight"),
    ("embedding (1 row)", r"embed\.weight"),
    ("attention (core + compressor + indexer)", r"layers\.\d+\.attn\..*"),
    ("shared expert", r"layers\.\d+\.ffn\.shared_experts\..*"),
    ("router", r"layers\.\d+\.ffn\.gate\..*"),
    ("MTP (not run in decode)", r"mtp\..*"),
    ("mHC + norms", r".*"),
)


def _routed(wc, n_experts: int) -> bool:
    """An unnamed constant of the routed experts: stacked [E, ...] weights (and their scales/zero points)
    that feed a grouped matmul (`aten::_grouped_mm`) or whatever stacked-expert op the MoE is traced to."""
    consumer = wc.consumer
    cname = consumer.get_friendly_name() if consumer is not None else ""
    if consumer is not None and (consumer.get_type_name() == "GroupedMatMul" or "_grouped_mm" in cname):
        return True
    shape = tuple(wc.node.get_output_partial_shape(0).to_shape())
    return len(shape) >= 3 and shape[0] == n_experts and re.search(r"\.ffn\b", cname) is not None


def bytes_per_token(ir: Path) -> dict[str, Any]:
    import openvino as ov

    from deepseek_v4_ov.compress.policy import _nbytes, weight_constants

    model = ov.Core().read_model(str(ir / "openvino_model.xml"))
    cfg = json.loads((ir / "config.json").read_text())
    k, e, vocab = cfg["num_experts_per_tok"], cfg["n_routed_experts"], cfg["vocab_size"]
    groups: dict[str, dict[str, float]] = {label: {"ir_bytes": 0, "active_bytes": 0.0} for label, _ in ACTIVE_RULES}
    groups["other constants (RoPE tables, masks; not counted)"] = {"ir_bytes": 0, "active_bytes": 0.0}
    types: dict[str, dict[str, int]] = {}
    for wc in weight_constants(model):
        nb = _nbytes(wc.node)
        name = wc.name
        if name is None and _routed(wc, e):
            name = "layers.?.ffn.experts.?"  # the stacked experts of the grouped-matmul MoE form
        if name is None:
            groups["other constants (RoPE tables, masks; not counted)"]["ir_bytes"] += nb
            continue
        label = next(lbl for lbl, pat in ACTIVE_RULES if re.fullmatch(pat, name))
        frac = {"routed experts (top-k of E)": k / e, "embedding (1 row)": 1 / vocab,
                "MTP (not run in decode)": 0.0}.get(label, 1.0)
        groups[label]["ir_bytes"] += nb
        groups[label]["active_bytes"] += nb * frac
        t = wc.node.get_output_element_type(0).get_type_name()
        types.setdefault(label, {})
        types[label][t] = types[label].get(t, 0) + nb
    active = sum(g["active_bytes"] for g in groups.values())
    dense = sum(g["ir_bytes"] for lbl, g in groups.items() if not lbl.startswith(("other", "MTP", "embedding")))
    dense += groups["embedding (1 row)"]["active_bytes"]
    return {"groups": groups, "types": types, "active_bytes": active, "dense_bytes": dense,
            "top_k": k, "experts": e, "layers": cfg["num_hidden_layers"]}


def measure_decode(ir: Path, hint: str, prompt: int, new: int, repeats: int) -> dict[str, Any]:
    cmd = [python_main(), str(Path(__file__).resolve().parent / "runtimes.py"), "--worker", "ov", "--model", str(ir),
           "--hint", hint, "--prompt", str(prompt), "--new", str(new), "--repeats", str(repeats), "--warmup", "1"]
    rc, wall, rss, out = run_child(cmd)
    if rc != 0:
        raise RuntimeError(f"decode measurement failed:\n{out[-3000:]}")
    res = last_json(out)
    per_token = statistics.median(statistics.mean(s) for s in res["decode_s"])
    res.update(decode_s_per_token=per_token, decode_tok_s=1 / per_token, peak_rss_mb=rss)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--ir", type=Path, help="an exported stateful IR folder")
    ap.add_argument("--preset", default="seed", help="without --ir: export this toy preset (in --workdir)")
    ap.add_argument("--format", default="int4", help="without --ir: the weight format to export")
    ap.add_argument("--toy-format", default="fp32")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-bench"))
    ap.add_argument("--whole", action="store_true", help="export as one piece")
    ap.add_argument("--gib", type=float, default=1.0, help="bandwidth buffer size (GiB)")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads for the all-core figures (default: cores)")
    ap.add_argument("--hints", nargs="*", default=["default", "f32"], choices=["default", "f32"],
                    help="measure decode under these precision hints (none: bound only)")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runtimes-json", default=None,
                    help="take the measured decode from this benchmarks/runtimes.py JSON (rows 'OV stateful <fmt> "
                         "[hint]' of the same IR format) instead of measuring")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import os

    info = machine()
    print(machine_line(info), flush=True)
    ir = args.ir
    if ir is None:
        src = ensure_toy(args.workdir, args.preset, args.toy_format)
        ir = ensure_export(args.workdir, src, args.format, whole=args.whole)
    threads = args.threads or os.cpu_count() or 1
    bw = measure_bandwidth(args.gib, args.trials, threads)
    print(f"bandwidth: read 1 thread {bw['read_1t_gbs']:.1f} GB/s, read {threads} threads {bw['read_all_gbs']:.1f} GB/s, "
          f"copy {threads} threads {bw['copy_all_gbs']:.1f} GB/s (best of {args.trials})", flush=True)
    bpt = bytes_per_token(ir)
    bound = bw["read_all_gbs"] * 1e9 / bpt["active_bytes"]
    dense_bound = bw["read_all_gbs"] * 1e9 / bpt["dense_bytes"]

    measured = {}
    if args.runtimes_json:
        fmt = json.loads((ir / "openvino_config.json").read_text()).get("dtype", args.format)
        for row in json.loads(Path(args.runtimes_json).read_text())["rows"]:
            m = re.fullmatch(rf"OV stateful {re.escape(fmt)} \[(\w+)\]", row["label"])
            if m and "error" not in row:
                measured[m.group(1)] = {**row, "source": args.runtimes_json}
    for hint in [] if args.runtimes_json else args.hints:
        print(f"-- measuring decode of {ir.name} [{hint}]", flush=True)
        measured[hint] = measure_decode(ir, hint, args.prompt, args.new, args.repeats)

    ov_cfg = json.loads((ir / "openvino_config.json").read_text()) if (ir / "openvino_config.json").is_file() else {}
    title = (f"bandwidth bound: {ir} ({ov_cfg.get('dtype', '?')} {ov_cfg.get('ir', '')}), batch 1, "
             f"top-{bpt['top_k']} of {bpt['experts']} experts, {bpt['layers']} layers")
    print()
    print(title)
    print(machine_line(info))
    print(table([f"bandwidth (numpy, {args.gib:g} GiB buffer)", "GB/s best", "GB/s median"],
                [["read, 1 thread", f"{bw['read_1t_gbs']:.1f}", f"{bw['read_1t_gbs_median']:.1f}"],
                 [f"read, {threads} threads", f"{bw['read_all_gbs']:.1f}", f"{bw['read_all_gbs_median']:.1f}"],
                 [f"copy, {threads} threads (read+write)", f"{bw['copy_all_gbs']:.1f}", f"{bw['copy_all_gbs_median']:.1f}"]]))
    print()
    rows = []
    for label, g in bpt["groups"].items():
        if g["ir_bytes"] == 0:
            continue
        t = ", ".join(f"{k} {v / 1e6:,.1f}" for k, v in sorted(bpt["types"].get(label, {}).items(), key=lambda kv: -kv[1]))
        rows.append([label, f"{g['ir_bytes'] / 1e6:,.1f}", f"{g['active_bytes'] / 1e6:,.1f}", t or "-"])
    rows.append(["total read per token (active path)", "", f"{bpt['active_bytes'] / 1e6:,.1f}", ""])
    rows.append(["total if every expert is read (dense)", "", f"{bpt['dense_bytes'] / 1e6:,.1f}", ""])
    print(table(["weights", "in IR MB", "read per token MB", "element types (MB)"], rows))
    print()
    brows = [["bound (active path)", f"{bound:,.1f}", "", ""], ["bound (dense: all experts)", f"{dense_bound:,.1f}", "", ""]]
    for hint, m in measured.items():
        brows.append([f"measured stateful IR [{hint}] (exec {m.get('precision')})", f"{m['decode_tok_s']:,.2f}",
                      f"{m['decode_tok_s'] / bound:.1%}", f"{m['decode_tok_s'] / dense_bound:.1%}"])
    print(table(["decode", "tokens/s", "of bound (active)", "of bound (dense)"], brows))
    write_json(args.json, {"title": title, "machine": info, "command": " ".join(sys.argv), "ir": str(ir),
                           "bandwidth": bw, "threads": threads, "bytes_per_token": bpt, "bound_tok_s": bound,
                           "dense_bound_tok_s": dense_bound,
                           "measured": {h: {k: v for k, v in m.items() if k not in ("decode_s", "prefill_s")}
                                        for h, m in measured.items()},
                           "fraction_of_bound": {h: m["decode_tok_s"] / bound for h, m in measured.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
