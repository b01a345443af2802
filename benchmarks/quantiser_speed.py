"""The exact quantiser (compress/quantise.py) against NNCF's `compress_weights` on one chunk of stacked
experts at V4-Flash's width, same constants asserted:

    python benchmarks/quantiser_speed.py --experts 16 --modes int4_sym int4_asym int8_asym mxfp4 \
        --json benchmarks/results/quantiser_speed.json

A GroupedMatMul with an FP32 [experts, 2048, 4096] weight (Gaussian, std 0.02) is compressed by NNCF (its
OpenVINO arithmetic) and by the quantiser (`QuantisedWeight.fill` in chunks of `quantise.CHUNK_BYTES`, with
torch's threads), each timed on its own; the constants must be byte-identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, machine_line, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--modes", nargs="+", default=["int4_sym", "int4_asym", "int8_asym", "mxfp4"])
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import openvino.opset17 as opset17
    import torch

    import nncf_reference
    from deepseek_v4_ov.compress import quantise

    info = machine()
    print(machine_line(info), f"torch threads {torch.get_num_threads()}", flush=True)
    shape = (args.experts, args.rows, args.cols)
    w = (np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    gb = w.nbytes / 1e9
    rows = []
    for mode in args.modes:
        group = -1 if mode.startswith("int8") else (32 if mode == "mxfp4" else 64)
        const = ops.constant(w, shared_memory=True)
        const.set_friendly_name("experts")
        x, offsets = ops.parameter([-1, args.cols], ov.Type.f32), ops.parameter([args.experts], ov.Type.i32)
        gmm = opset17.grouped_matmul(x, const, offsets)
        gmm.set_friendly_name("gmm")
        model = ov.Model([ops.result(gmm)], [x, offsets])
        start = time.perf_counter()
        nncf_reference.compress_ops(model, {"gmm"}, mode, group, "error", "int8_asym")
        nncf_s = time.perf_counter() - start
        want = {op.get_friendly_name(): op.get_data().tobytes() for op in model.get_ops()
                if op.get_type_name() == "Constant" and op.get_friendly_name().startswith("experts")}
        del model
        scheme = quantise.Scheme(mode, group)
        start = time.perf_counter()
        q = quantise.QuantisedWeight(shape, scheme)
        per = max(1, quantise.CHUNK_BYTES // (4 * args.rows * args.cols))
        t = torch.from_numpy(w)
        for k in range(0, args.experts, per):
            q.fill(k, t[k:k + per])
        ours_s = time.perf_counter() - start
        got = {"experts": bytes(q.codes.data.view(np.uint8)), "experts/scale": bytes(q.scale.data.view(np.uint8))}
        if q.zero is not None:
            got["experts/zero_point"] = bytes(q.zero.data.view(np.uint8))
        assert got == want, f"{mode}: constants differ from NNCF's"
        rows.append({"mode": mode, "group_size": group, "fp32_gb": round(gb, 3), "nncf_s": round(nncf_s, 2),
                     "exact_s": round(ours_s, 2), "speedup": round(nncf_s / ours_s, 1),
                     "exact_gbs": round(gb / ours_s, 2), "nncf_gbs": round(gb / nncf_s, 2)})
        print(rows[-1], flush=True)
    print(table(["mode", "group", "FP32 GB", "NNCF s", "exact s", "x", "exact GB/s"],
                [[r["mode"], r["group_size"], r["fp32_gb"], r["nncf_s"], r["exact_s"], r["speedup"], r["exact_gbs"]]
                 for r in rows]))
    command = "python benchmarks/quantiser_speed.py " + " ".join(sys.argv[1:])
    write_json(args.json, {"machine": info, "command": command, "shape": list(shape), "rows": rows})


if __name__ == "__main__":
    main()
