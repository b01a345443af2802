"""What re-quantising the release's FP4 experts costs in weight error, and what exact forms cost in bytes.

    .venv/bin/python benchmarks/fp4_requant.py --json benchmarks/results/fp4_requant.json
    .venv/bin/python benchmarks/fp4_requant.py --results benchmarks/results/fp4_requant.json   # RESULTS.md block

A release expert matrix is FP4 e2m1 codes (values 0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6) times an E8M0
(power-of-two) scale per 32 inputs. Here such matrices are made by the release's own quantiser
(`checkpoint.quant.quantize_fp4`) from random weights (Gaussian, and Student-t with 4 degrees of freedom
for heavy-tailed rows), then each IR form is applied exactly as the export applies it: NNCF
`compress_weights` on a MatMul with the dequantised FP4 matrix, the compressed IR run on the CPU in f32
(no dynamic quantization) against an identity input, which returns the weights as the IR computes them.
Error = RMS(IR weight - release weight) / RMS(release weight), and the share of weights not reproduced
exactly. Bits per weight include scales and zero points.

Exact forms: f4e2m1 + f8e8m0 per 32 (`--weight-format native`, the release's own codes: 4.25 bits), and
INT8 with a power-of-two scale per 32 (2 x an FP4 value is an integer in [-12, 12], so code = 2 x value,
scale = the E8M0 scale / 2: 8.25 bits; the CPU plugin has no per-32 INT8 weight form with power-of-two
scales in NNCF, so its cost is given, not run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, machine_line, replace_results_block, table, write_json  # noqa: E402

import numpy as np  # noqa: E402

CASES = [  # (label, NNCF mode, group size, bits per weight)
    ("int4 asym g32 (the former default)", "int4_asym", 32, 4 + 20 / 32),
    ("int4 sym g32", "int4_sym", 32, 4 + 16 / 32),
    ("int4 asym g64", "int4_asym", 64, 4 + 20 / 64),
    ("int4 asym g128", "int4_asym", 128, 4 + 20 / 128),
    ("int4 sym g64 (export default)", "int4_sym", 64, 4 + 16 / 64),
    ("int4 sym g128", "int4_sym", 128, 4 + 16 / 128),
    ("mxfp4 (NNCF, e2m1 + e8m0 per 32)", "mxfp4", 32, 4 + 8 / 32),
    ("int8 asym per row (NNCF int8)", "int8_asym", -1, 8.0),
]


def release_matrix(rows: int, cols: int, dist: str, seed: int):
    import torch

    from deepseek_v4_ov.checkpoint.quant import dequantize_fp4, quantize_fp4

    gen = torch.Generator().manual_seed(seed)
    if dist == "gauss":
        w = torch.randn(rows, cols, generator=gen)
    else:  # Student-t, 4 degrees of freedom: heavy tails
        g = torch.randn(rows, cols, generator=gen)
        chi = sum(torch.randn(rows, cols, generator=gen) ** 2 for _ in range(4))
        w = g / torch.sqrt(chi / 4)
    w = w * torch.exp(torch.randn(rows, 1, generator=gen) * 0.5) * 0.02  # rows of different magnitude
    packed, scale = quantize_fp4(w)
    return dequantize_fp4(packed, scale).numpy()


def ir_weights(w: np.ndarray, mode: str, group: int) -> np.ndarray:
    """The weights the compressed IR computes with: NNCF-compressed MatMul, run on an identity input."""
    import nncf
    import openvino as ov
    import openvino.opset13 as ops

    cols = w.shape[1]
    x = ops.parameter([cols, cols], ov.Type.f32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(w), False, True)], [x])
    kwargs = {} if mode.startswith("int8") else {"group_size": group, "ratio": 1.0, "all_layers": True}
    nncf.set_log_level(40)
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode(mode), **kwargs)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    return compiled(np.eye(cols, dtype=np.float32))[0].T


def results_table(results: list[dict]) -> str:
    return table(["release weights", "IR form", "bits/weight", "rel. RMS error", "max abs error / RMS", "inexact"],
                 [[r["weights"], r["form"], f"{r['bits_per_weight']:.3f}", f"{r['rel_rms_error']:.2%}",
                   f"{r['max_abs_error_over_rms']:.3f}", f"{r['inexact_share']:.1%}"] for r in results])


def results_block(path: Path) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    return (f"`{data['command']}` ({m['date']}, {m['cpu']}, OpenVINO {m['openvino']}, NNCF {m['nncf']}; "
            f"{data['shape'][0]} x {data['shape'][1]} release matrices):\n\n" + results_table(data["results"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--json")
    ap.add_argument("--results", type=Path,
                    help="write benchmarks/RESULTS.md's `fp4-requant` block from this JSON and exit")
    args = ap.parse_args()
    if args.results:
        replace_results_block("fp4-requant", results_block(args.results))
        return 0
    info = machine()
    print(machine_line(info))
    results = []
    for dist in ("gauss", "t4"):
        w = release_matrix(args.rows, args.cols, dist, seed=0)
        ref = np.sqrt(np.mean(w.astype(np.float64) ** 2))
        for label, mode, group, bits in CASES:
            d = ir_weights(w, mode, group).astype(np.float64) - w
            results.append({"weights": dist, "form": label, "bits_per_weight": round(bits, 3),
                            "rel_rms_error": float(np.sqrt(np.mean(d ** 2)) / ref),
                            "max_abs_error_over_rms": float(np.abs(d).max() / ref),
                            "inexact_share": float(np.mean(d != 0))})
        for label, bits in (("native f4e2m1 + e8m0 per 32 (exact)", 4.25),
                            ("int8 per 32, power-of-two scale (exact, not in NNCF)", 8.25)):
            results.append({"weights": dist, "form": label, "bits_per_weight": bits, "rel_rms_error": 0.0,
                            "max_abs_error_over_rms": 0.0, "inexact_share": 0.0})
    print(results_table(results))
    write_json(args.json, {"machine": info, "command": "python benchmarks/fp4_requant.py " + " ".join(sys.argv[1:]),
                           "shape": [args.rows, args.cols], "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
