"""Reproducer: one MoE matmul (or one LM-head matmul) over compressed weights with random values; OpenVINO
CPU time per call and the private memory compile adds, per weight format and graph form.

    python compressed_moe.py --weights int4 --group 32 --form grouped --tokens 1   # V4-Flash experts, decode
    python compressed_moe.py --weights int4 --group 32 --form fused --tokens 1     # same bytes, one FC
    python compressed_moe.py --weights f4e2m1 --form grouped                       # FP4 experts (MXFP4 layout)
    python compressed_moe.py --experts 1 --top 1 --n 129280 --weights int8 --form fused   # the LM head
    python compressed_moe.py --experts 1 --top 1 --n 4096 --weights f8e4m3 --group 128 --form fused
    python compressed_moe.py --weights int4 --tokens 256 --hint bf16                 # prefill, bf16

Weights W [E, N, K] (default: DeepSeek-V4-Flash's 256 routed experts, N=2048, K=4096), each token picks
--top experts (fixed random routing). Forms:
  grouped  GroupedMatMul (opset17) over the expert-sorted (token, expert) rows, as a MoE traced from
           torch._grouped_mm; the CPU plugin compiles it to GatherMatmul and reads only the picked experts
  each     one MatMul per picked expert with that expert's weights as its own constant (routing known when
           the graph is built: the plugin's best case for the same bytes)
  fused    one MatMul over the picked experts' weights concatenated [top*N, K]
Weight formats, decompressed the way NNCF / the release layout writes them: int4 (u4 codes, u4 zero point,
f16 scale per --group; --sym: i4 codes, no zero point), int8 (u8 codes, u8 zero point, f16 scale per row), f4e2m1 (f8e8m0 scale per 32),
f8e4m3 (f8e8m0 scale per --group along a row, the release's 128x128 block scales repeated per row),
f16. The model is saved to an IR and compiled from the file (weights memory-mapped, as in deployment);
`private_mb` is the anonymous memory compile and the calls add (/proc/self/smaps_rollup), per byte of
the weight constants built. Between calls a --evict-mb buffer is read, so each call reads its weights
from memory, not from the L3 cache (as in a model whose weights are far larger than the cache).
Prints one line and `RESULT {json}`.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import openvino.opset17 as ops17


def anon_mb() -> float:
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def const(codes: np.ndarray, etype: ov.Type, shape: list[int]):
    t = ov.Tensor(etype, ov.Shape(shape))
    np.asarray(t.data).view(np.uint8).reshape(-1)[:] = codes.reshape(-1)
    return ops.constant(t)


def weights(fmt: str, shape: list[int], group: int, rng, sym: bool = False):
    """Decompression subgraph [*shape] f32 (shape [..., K]) and the bytes its constants hold."""
    *lead, k = shape
    rows = int(np.prod(lead))
    u8 = lambda count: rng.integers(0, 256, count, dtype=np.uint8)  # noqa: E731
    if fmt == "f16":
        w = const(u8(rows * k * 2) & np.uint8(0xBB), ov.Type.f16, shape)  # (odd bytes: |value| < 2)
        return ops.convert(w, ov.Type.f32), rows * k * 2
    if fmt in ("int4", "int8"):
        g = group if fmt == "int4" else k
        bits = 4 if fmt == "int4" else 8
        etype = {(4, False): ov.Type.u4, (8, False): ov.Type.u8, (4, True): ov.Type.i4, (8, True): ov.Type.i8}[
            bits, sym]
        w = ops.convert(const(u8(rows * k * bits // 8), etype, [*lead, k // g, g]), ov.Type.f16)
        scale = ops.constant((rng.random((*lead, k // g, 1), dtype=np.float32) * 1e-2).astype(np.float16))
        if not sym:  # NNCF's asymmetric modes: a zero point per group, same type as the codes
            w = ops.subtract(w, ops.convert(const(u8(max(1, rows * (k // g) * bits // 8)), etype,
                                                  [*lead, k // g, 1]), ov.Type.f16))
        deq = ops.multiply(w, scale)
        nbytes = rows * k * bits // 8 + rows * (k // g) * (2 + (0 if sym else bits / 8))
    elif fmt == "f4e2m1":
        w = const(u8(rows * k // 2), ov.Type.f4e2m1, [*lead, k // 32, 32])
        scale = const(rng.integers(118, 125, rows * k // 32, dtype=np.uint8), ov.Type.f8e8m0, [*lead, k // 32, 1])
        deq = ops.multiply(ops.convert(w, ov.Type.f32), ops.convert(scale, ov.Type.f32))
        nbytes = rows * k // 2 + rows * k // 32
    elif fmt == "f8e4m3":  # the release's FP8 linears: e8m0 scale per 128x128 block, repeated per row
        codes = u8(rows * k) & np.uint8(0xF7)  # (never 0x7F/0xFF, the NaNs)
        w = const(codes, ov.Type.f8e4m3, [*lead, k // group, group])
        scale = const(rng.integers(118, 125, rows * k // group, dtype=np.uint8), ov.Type.f8e8m0,
                      [*lead, k // group, 1])
        deq = ops.multiply(ops.convert(w, ov.Type.f32), ops.convert(scale, ov.Type.f32))
        nbytes = rows * k + rows * k // group
    else:
        raise SystemExit(f"unknown --weights {fmt}")
    deq = ops.reshape(deq, ops.constant(np.array(shape, dtype=np.int64)), False)
    return ops.convert(deq, ov.Type.f32), nbytes


def build(args, rng):
    e, n, k, top, t = args.experts, args.n, args.k, args.top, args.tokens
    picks = np.stack([rng.choice(e, top, replace=False) for _ in range(t)])  # [T, top]
    x = ops.parameter([t, k], ov.Type.f32, name="x")
    if args.form == "grouped":
        w, nbytes = weights(args.weights, [e, n, k], args.group, rng, args.sym)
        order = np.argsort(picks.reshape(-1), kind="stable")
        rows = ops.gather(x, ops.constant((order // top).astype(np.int32)), ops.constant(np.int32(0)))
        offsets = np.cumsum(np.bincount(picks.reshape(-1), minlength=e)).astype(np.int32)
        out = ops17.grouped_matmul(rows, w, ops.constant(offsets))
        touched = len(np.unique(picks))
    else:
        # every token uses the same `top` experts in these static forms: only their weights are built
        if args.form == "each":
            parts = [weights(args.weights, [n, k], args.group, rng, args.sym) for _ in range(top)]
            out = ops.concat([ops.matmul(x, w, False, True) for w, _ in parts], 1) if top > 1 else \
                ops.matmul(x, parts[0][0], False, True)
            nbytes = parts[0][1] * top
        else:
            w, nbytes = weights(args.weights, [top * n, k], args.group, rng, args.sym)
            out = ops.matmul(x, w, False, True)
        return ov.Model([out], [x], "moe"), nbytes, nbytes
    return ov.Model([out], [x], "moe"), nbytes, nbytes * touched / e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--weights", default="int4", choices=["int4", "int8", "f4e2m1", "f8e4m3", "f16"])
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--sym", action="store_true", help="int4/int8 without zero points (i4/i8 codes)")
    ap.add_argument("--form", default="grouped", choices=["grouped", "each", "fused"])
    ap.add_argument("--hint", default="f32", help="INFERENCE_PRECISION_HINT (f32, bf16)")
    ap.add_argument("--dq", type=int, default=None, help="DYNAMIC_QUANTIZATION_GROUP_SIZE (0 = off; default: plugin's)")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--evict-mb", type=int, default=1024, help="buffer read between calls (larger than the L3)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    model, nbytes, read_bytes = build(args, rng)
    config = {"INFERENCE_PRECISION_HINT": args.hint, "PERF_COUNT": "YES"}
    if args.dq is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(args.dq)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "moe.xml")
        ov.save_model(model, path, compress_to_fp16=False)
        del model
        evict = np.ones(args.evict_mb << 17)  # float64: read between calls so no weight stays in the L3 cache
        base = anon_mb()
        t0 = time.perf_counter()
        compiled = core.compile_model(path, "CPU", config)
        compile_s = time.perf_counter() - t0
        request = compiled.create_infer_request()
        x = rng.standard_normal((args.tokens, args.k), dtype=np.float32)
        times = []
        for _ in range(args.calls):
            evict.sum()
            t0 = time.perf_counter()
            request.infer({"x": x})
            times.append(time.perf_counter() - t0)
        private = anon_mb() - base
        prof: dict[str, float] = {}
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                key = f"{p.node_type}:{p.exec_type}"
                prof[key] = prof.get(key, 0.0) + p.real_time.total_seconds() * 1e3
        ms = 1e3 * statistics.median(times[len(times) // 3:])
    res = {**vars(args), "ms": round(ms, 4), "read_gbs": round(read_bytes / ms / 1e6, 2),
           "weight_mb": round(nbytes / 1e6, 1), "private_mb": round(private, 1),
           "private_per_weight_byte": round(private * 1e6 / nbytes, 3), "compile_s": round(compile_s, 2),
           "profile_ms": {k: round(v, 4) for k, v in sorted(prof.items(), key=lambda kv: -kv[1])[:6]},
           "openvino": ov.__version__}
    print(f"{args.form} {args.weights}{' sym' if args.sym else ''} g{args.group} E{args.experts} top{args.top} N{args.n} K{args.k} T{args.tokens} "
          f"[{args.hint}, dq {args.dq}]: {ms:.3f} ms, {res['read_gbs']} GB/s of the picked weights, private "
          f"{private:.0f} MB for {nbytes / 1e6:.0f} MB of weights; top ops {res['profile_ms']}")
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
