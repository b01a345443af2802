"""Decode cost against context length and against the number of routed experts, on the `seed` toy geometry.

    .venv/bin/python benchmarks/decode_scaling.py [--json] [--repeats 3] [--tokens 16]

(a) context: stateful FP32 IR, ms per decoded token at context 128 / 1024 / 4096 (prefill ctx-T tokens, then
    decode T tokens one by one), next to the prefill-only IR, whose only way to make a token is to run the
    whole sequence again (ms per token = one forward over ctx tokens); ratio to the 128-token value printed.
(b) experts: stateful FP32 IR with 8 / 64 / 256 routed experts at fixed top-2 (seed geometry otherwise), ms per
    decoded token at context ~128, 128-token prefill ms, IR op count, GroupedMatMul ops in the IR and
    GatherMatmul nodes in the compiled CPU graph (the MoE's "grouped" form); ratio to 8.

Every timing: one warm-up run, then `--repeats` runs, median over all measured calls. Everything runs in this
one process, one after the other, INFERENCE_PRECISION_HINT=f32. `--json` writes decode_scaling.json next to
this script. A full run takes about 5-8 minutes on 2 cores (mostly tracing the three expert variants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import torch  # noqa: E402

from deepseek_v4_ov.convert.pieces import convert_model  # noqa: E402
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM  # noqa: E402
from deepseek_v4_ov.toys.writer import build_toy_model  # noqa: E402
from deepseek_v4_ov.toys.presets import PRESETS  # noqa: E402

CONTEXTS = (128, 1024, 4096)
EXPERTS = (8, 64, 256)


def machine() -> dict:
    info = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), "openvino": ov.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name"))
        mem = Path("/proc/meminfo").read_text()
        kib = int(next(line.split()[1] for line in mem.splitlines() if line.startswith("MemTotal")))
        info["ram_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    return info


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ids_for(n: int, seed: int, vocab: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (1, n), generator=gen).numpy()


def model_for(experts: int):
    preset = dict(PRESETS["seed"], n_routed_experts=experts)
    return build_toy_model(preset, 0, fmt="fp32").float().eval()


def ir_stats(ov_model: ov.Model, lm: OVCausalLM) -> dict:
    types = [op.get_type_name() for op in ov_model.get_ops()]
    runtime = [op.get_rt_info()["layerType"].astype(str) for op in lm.compiled.get_runtime_model().get_ops()]
    return {"ir_ops": len(types), "grouped_matmul": types.count("GroupedMatMul"),
            "runtime_gather_matmul": runtime.count("GatherMatmul"), "runtime_nodes": len(runtime)}


def stateful_decode(lm: OVCausalLM, ctx: int, tokens: int, repeats: int, vocab: int) -> dict:
    """Prefill ctx-tokens, then `tokens` one-token calls; warm-up + repeats; median ms per call."""
    prompt = ids_for(ctx - tokens, 1, vocab)
    steps = ids_for(tokens, 2, vocab)
    decode, prefill = [], []
    for run in range(repeats + 1):
        lm.reset()
        lm(prompt)
        if run:
            prefill.append(lm.last_s)
        for i in range(tokens):
            lm(steps[:, i : i + 1])
            if run:
                decode.append(lm.last_s)
    return {"decode_ms": 1e3 * statistics.median(decode), "prefill_ms": 1e3 * statistics.median(prefill),
            "prefill_tokens": ctx - tokens}


def prefill_only_step(lm: OVCausalLM, ctx: int, repeats: int, vocab: int) -> float:
    """ms for one token from the prefill-only IR at context ctx: one forward over all ctx tokens."""
    seq = ids_for(ctx, 3, vocab)
    times = []
    for run in range(repeats + 1):
        lm(seq)
        if run:
            times.append(lm.last_s)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="write decode_scaling.json next to this script")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="decode steps per run")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--experts", type=int, nargs="+", default=list(EXPERTS))
    args = parser.parse_args()
    torch.manual_seed(0)
    info = machine()
    print(f"date {info['date_utc']} UTC | CPU {info['cpu']} | {info['cores']} cores | RAM {info.get('ram_gib')} GiB")
    print(f"OpenVINO {info['openvino']} | torch {info['torch']} | INFERENCE_PRECISION_HINT=f32 | warm-up 1 + "
          f"{args.repeats} repeats, median | seed geometry (hidden 128, 4 layers, top-2)")
    result = {"machine": info, "repeats": args.repeats, "decode_tokens": args.tokens}
    core = ov.Core()
    vocab = PRESETS["seed"]["vocab_size"]

    # ---- (b) experts first: the 8-expert model is reused for (a)
    rows, base_model, base_ir = [], None, None
    for experts in args.experts:
        model = model_for(experts)
        start = time.perf_counter()
        ov_model = convert_model(model)
        convert_s = time.perf_counter() - start
        lm = OVCausalLM(ov_model, "CPU", F32_CONFIG, core=core)
        row = {"experts": experts, "convert_s": convert_s, "compile_s": lm.timings.compile_s,
               **ir_stats(ov_model, lm), **stateful_decode(lm, 128 + args.tokens, args.tokens, args.repeats, vocab)}
        rows.append(row)
        print(f"  experts {experts}: {row['ir_ops']} IR ops, decode {row['decode_ms']:.2f} ms/token "
              f"(convert {convert_s:.0f} s)", flush=True)
        if experts == min(args.experts):
            base_model, base_ir = model, lm
        else:
            del lm, ov_model, model
    result["experts"] = rows

    # ---- (a) context: stateful (the 8-expert IR) vs prefill-only
    start = time.perf_counter()
    prefill_ir = convert_model(base_model, prefill_only=True)
    po = OVCausalLM(prefill_ir, "CPU", F32_CONFIG, core=core)
    print(f"  prefill-only IR converted ({time.perf_counter() - start:.0f} s)", flush=True)
    ctx_rows = []
    for ctx in args.contexts:
        row = {"context": ctx, **stateful_decode(base_ir, ctx, args.tokens, args.repeats, vocab),
               "prefill_only_ms_per_token": prefill_only_step(po, ctx, args.repeats, vocab)}
        ctx_rows.append(row)
        print(f"  context {ctx}: stateful {row['decode_ms']:.2f} ms/token, prefill-only "
              f"{row['prefill_only_ms_per_token']:.1f} ms/token", flush=True)
    result["context"] = ctx_rows
    result["peak_rss_gib"] = peak_rss_gib()

    print()
    print("(a) decode ms/token against context (experts %d, top-2)" % min(args.experts))
    print(f"{'context':>8} {'stateful':>10} {'ratio':>6} {'prefill-only':>13} {'ratio':>7} {'prefill ms':>11}")
    c0 = ctx_rows[0]
    for r in ctx_rows:
        print(f"{r['context']:>8} {r['decode_ms']:>10.2f} {r['decode_ms'] / c0['decode_ms']:>6.2f} "
              f"{r['prefill_only_ms_per_token']:>13.1f} "
              f"{r['prefill_only_ms_per_token'] / c0['prefill_only_ms_per_token']:>7.2f} "
              f"{r['prefill_ms']:>8.1f} ({r['prefill_tokens']} tok)")
    print()
    print("(b) decode ms/token against routed experts (top-2, context ~%d)" % (128 + args.tokens))
    print(f"{'experts':>8} {'IR ops':>7} {'GroupedMatMul':>14} {'GatherMatmul(rt)':>17} {'decode':>8} {'ratio':>6} "
          f"{'prefill ms':>11} {'convert s':>10}")
    e0 = rows[0]
    for r in rows:
        print(f"{r['experts']:>8} {r['ir_ops']:>7} {r['grouped_matmul']:>14} {r['runtime_gather_matmul']:>17} "
              f"{r['decode_ms']:>8.2f} {r['decode_ms'] / e0['decode_ms']:>6.2f} "
              f"{r['prefill_ms']:>8.1f} ({r['prefill_tokens']}) {r['convert_s']:>7.0f}")
    print(f"\npeak RSS of this process: {result['peak_rss_gib']:.2f} GiB")
    if args.json:
        out = Path(__file__).with_suffix(".json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
