"""Decode tokens/s and time to first token: OpenVINO stateful IR vs the PyTorch port vs transformers' native
DeepSeek-V4 vs the prefill-only IR re-run per token, side by side in one run.

    .venv/bin/python benchmarks/runtimes.py --preset seed --json benchmarks/results/runtimes-seed.json
    .venv/bin/python benchmarks/runtimes.py --preset mid --toy-format bf16 --formats int4 int8 \\
        --prefill-formats int4 --prefill-hints default --prefill-new 4 --repeats 2   # needs ~35 GB RAM

What runs (each row in its own process, so each has its own peak RSS and none inherits another's memory):
  * a random toy of the preset (`deepseek_v4_ov.toys.writer.write_toy`, seed 0) in `--workdir`, exported once per
    format (`exporter.export`, stateful and prefill-only); existing exports there are reused unless
    `--fresh`;
  * `PyTorch port`: `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True, dtype=float32)`,
    eager, prompt forward then one token per forward through its cache (`past_key_values`);
  * `transformers native`: transformers >= 5.23's own `DeepseekV4ForCausalLM` in `.venv-ref`, float32,
    eager, with a `DynamicCache` (`benchmarks/hf_native_worker.py`);
  * `OV stateful <fmt>`: `ov_runtime.OVCausalLM` on CPU, prompt call then one call per token, under the
    f32 inference-precision hint and under the plugin's default (bf16 on CPUs with AVX512-BF16/AMX);
  * `OV prefill-only <fmt>`: the IR without cache state, re-run over the whole sequence for each new token
    (what a stateless export offers).
Every row gets the same prompt (`--prompt` ids, fixed seed) and generates `--new` greedy tokens; after
`--warmup` untimed sequences, `--repeats` timed ones. TTFT = the prompt forward (its last logits give the
first token); decode = the median over repeats of the mean time of the per-token calls. `x port` columns
are speed-ups over the PyTorch port (>1 = faster). PyTorch and transformers rows are FP32 weights and
compute. `tokens = port` counts how many of the greedy tokens equal the port's, from the start.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (REF_PY, ensure_export, ensure_toy, last_json, machine, machine_line,  # noqa: E402
                     python_main, run_child, table, write_json)
from hf_native_worker import prompt_ids  # noqa: E402

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------------------------
# workers (run in child processes)
# ------------------------------------------------------------------------------------------------------
def worker_port(args) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    ids = torch.from_numpy(prompt_ids(model.config.vocab_size, args.prompt))
    prefill, decode, tokens = [], [], []
    with torch.no_grad():
        for rep in range(args.warmup + args.repeats):
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
            p = time.perf_counter() - t
            steps, toks = [], []
            for _ in range(args.new):
                nxt = logits.argmax(-1, keepdim=True)
                toks.append(int(nxt[0, 0]))
                t = time.perf_counter()
                out = model(nxt, past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1]
                steps.append(time.perf_counter() - t)
            if rep >= args.warmup:
                prefill.append(p)
                decode.append(steps)
                tokens = toks
    return {"load_s": load_s, "prefill_s": prefill, "decode_s": decode, "tokens": tokens,
            "threads": torch.get_num_threads()}


def worker_ov(args) -> dict[str, Any]:
    import openvino as ov

    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM, Timings

    config = dict(F32_CONFIG) if args.hint == "f32" else {}
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    m = OVCausalLM(args.model, "CPU", config)
    ids = prompt_ids(vocab, args.prompt)
    prefill, decode, tokens = [], [], []
    for rep in range(args.warmup + args.repeats):
        m.timings = Timings(compile_s=m.timings.compile_s)
        _, toks = m.greedy(ids, args.new)
        if rep >= args.warmup:
            prefill.append(m.timings.prefill_s[0])
            decode.append(list(m.timings.decode_s))
            tokens = [int(t) for t in toks[0]]
    return {"load_s": m.timings.compile_s, "prefill_s": prefill, "decode_s": decode, "tokens": tokens,
            "precision": m.precision, "stateful": m.stateful, "openvino": ov.__version__,
            "threads": int(m.compiled.get_property("INFERENCE_NUM_THREADS"))}


# ------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------
def run_row(label: str, cmd: list[str], notes: str, save=None) -> dict[str, Any]:
    print(f"-- {label}", flush=True)
    rc, wall, rss, out = run_child(cmd)
    if rc != 0:
        tail = out.strip().splitlines()[-3:]
        print(f"   FAILED (exit {rc}): {' / '.join(tail)}", flush=True)
        return {"label": label, "error": f"exit {rc}: " + " / ".join(tail), "notes": notes}
    res = last_json(out)
    per_token = statistics.median(statistics.mean(s) for s in res["decode_s"]) if res["decode_s"][0] else float("nan")
    res.update(label=label, notes=notes, peak_rss_mb=rss, wall_s=wall,
               ttft_s=statistics.median(res["prefill_s"]), decode_s_per_token=per_token,
               decode_tok_s=1.0 / per_token)
    print(f"   TTFT {res['ttft_s'] * 1e3:,.1f} ms, decode {res['decode_tok_s']:,.2f} tok/s, "
          f"peak RSS {rss:,.0f} MB", flush=True)
    if save is not None:
        save(res)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="seed", help="toy preset (deepseek_v4_ov/toys/presets.py): seed, mid, full")
    ap.add_argument("--formats", nargs="+", default=["fp32", "int8", "int4"])
    ap.add_argument("--prefill-formats", nargs="*", default=None,
                    help="formats for the prefill-only re-run rows (default: --formats; none: skip)")
    ap.add_argument("--hints", nargs="+", default=["f32", "default"], choices=["f32", "default"],
                    help="OpenVINO CPU inference precision: f32 hint and/or the plugin's default")
    ap.add_argument("--prefill-hints", nargs="+", default=None, choices=["f32", "default"],
                    help="precision hints for the re-run rows (default: --hints)")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prefill-new", type=int, default=None, help="new tokens for the re-run rows (default --new)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--toy-format", default="fp32", choices=["fp32", "bf16", "fp8"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-bench"))
    ap.add_argument("--fresh", action="store_true", help="re-export even where an export exists")
    ap.add_argument("--whole", action="store_true", help="export as one piece (default: piece by piece)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["port", "native", "stateful", "prefill"])
    ap.add_argument("--ref-cmd", default=None,
                    help="command that runs Python with transformers >= 5.23 (default: .venv-ref/bin/python), "
                         "e.g. 'env PYTHONPATH=/tmp/site-ref python3'")
    ap.add_argument("--json", default=None, help="write the results here")
    # worker mode
    ap.add_argument("--worker", choices=["port", "ov"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--hint", default="f32", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = (worker_port if args.worker == "port" else worker_ov)(args)
        print("RESULT " + json.dumps(res))
        return 0

    info = machine()
    started = time.perf_counter()
    print(machine_line(info), flush=True)
    prefill_formats = args.formats if args.prefill_formats is None else args.prefill_formats
    prefill_new = args.new if args.prefill_new is None else args.prefill_new
    src = ensure_toy(args.workdir, args.preset, args.toy_format)
    common = ["--prompt", str(args.prompt), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    me = [python_main(), str(HERE)]
    rows: list[dict[str, Any]] = []

    def save(_row=None) -> None:  # after every row, so that an interrupted run keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"machine": info, "command": " ".join(sys.argv), "partial": True,
                                                   "rows": rows + ([_row] if _row else [])}, indent=2) + "\n")

    if "port" not in args.skip:
        rows.append(run_row("PyTorch port (eager, cache)",
                            me + ["--worker", "port", "--model", str(src), "--new", str(args.new)] + common,
                            "FP32 weights and compute", save))
    if "native" not in args.skip:
        ref = shlex.split(args.ref_cmd) if args.ref_cmd else [str(REF_PY)] if REF_PY.exists() else None
        if ref:
            rows.append(run_row("transformers native (eager, cache)",
                                ref + [str(HERE.parent / "hf_native_worker.py"), "--model", str(src),
                                 "--new", str(args.new)] + common, "FP32 weights and compute, transformers >= 5.23", save))
        else:
            print(f"-- transformers native: skipped ({REF_PY} missing)")
    for fmt in args.formats if "stateful" not in args.skip else []:
        ir = ensure_export(args.workdir, src, fmt, whole=args.whole, reuse=not args.fresh)
        for hint in args.hints:
            rows.append(run_row(f"OV stateful {fmt} [{hint}]",
                                me + ["--worker", "ov", "--model", str(ir), "--hint", hint, "--new", str(args.new)]
                                + common, f"{fmt} weights", save))
    for fmt in prefill_formats if "prefill" not in args.skip else []:
        ir = ensure_export(args.workdir, src, fmt, prefill_only=True, whole=args.whole, reuse=not args.fresh)
        for hint in args.prefill_hints or args.hints:
            rows.append(run_row(f"OV prefill-only {fmt} re-run [{hint}]",
                                me + ["--worker", "ov", "--model", str(ir), "--hint", hint,
                                      "--new", str(prefill_new)] + common,
                                f"{fmt} weights, whole sequence per token ({prefill_new} new)", save))

    port = next((r for r in rows if r["label"].startswith("PyTorch") and "error" not in r), None)
    headers = ["runtime", "precision", "TTFT ms", "decode tok/s", "ms/token", "TTFT x port", "decode x port",
               "tokens = port", "load/compile s", "peak RSS MB"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["label"], r["notes"], "FAILED", r["error"][:60], "", "", "", "", "", ""])
            continue
        precision = r.get("precision", "f32") if "precision" in r else "f32"
        same = "-"
        if port is not None and r is not port:
            n = min(len(r["tokens"]), len(port["tokens"]))
            k = next((i for i in range(n) if r["tokens"][i] != port["tokens"][i]), n)
            same = f"{k}/{n}"
        body.append([
            r["label"], f"{r['notes']}; exec {precision}", f"{r['ttft_s'] * 1e3:,.1f}", f"{r['decode_tok_s']:,.2f}",
            f"{r['decode_s_per_token'] * 1e3:,.1f}",
            f"{port['ttft_s'] / r['ttft_s']:.2f}" if port else "-",
            f"{r['decode_tok_s'] / port['decode_tok_s']:.2f}" if port else "-",
            same, f"{r['load_s']:.1f}", f"{r['peak_rss_mb']:,.0f}"])
    title = (f"runtimes: preset {args.preset} ({args.toy_format} toy), prompt {args.prompt} tokens, {args.new} new "
             f"tokens (re-run rows {prefill_new}), warm-up {args.warmup}, median of {args.repeats}")
    print()
    print(title)
    print(machine_line(info))
    print(table(headers, body))
    total = time.perf_counter() - started
    print(f"(whole run, exports included: {total / 60:.1f} min)")
    write_json(args.json, {"title": title, "total_s": total, "machine": info, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                     for k, v in vars(args).items()},
                           "command": " ".join(sys.argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
