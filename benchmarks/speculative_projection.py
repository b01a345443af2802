"""Projected V4-Flash decode speed-up of speculative decoding (MTP-1 and DSpark) on the benchmark machine,
from the full-width verify costs `benchmarks/layer_types.py` measured and the acceptance rates public
reports give.

    python benchmarks/speculative_projection.py [--projection benchmarks/results/v4_flash_projection.json]
                                                [--json benchmarks/results/speculative_projection.json] [--results]

Inputs (all from the projection JSON): T(S), the 43-layer cost of a target call of S new tokens
(`projection.verify_ms`, S = 1, 2, 5), and per layer type the layer's and the ends' (embed + head) verify
costs. The drafters' costs are built from the same figures: MTP-1 = one block + embed and head at S = 1 (a
CSA layer's figure: an upper bound, the MTP block has no compressor or indexer); DSpark = three stages on
the 5-row block + embed and head at S = 5 (again CSA figures per stage).

The loop is `runtime/speculative.py`'s (every call after the prompt has K + 1 tokens):
* MTP-1, acceptance a: an accepted draft gives 2 tokens per call; a rejection gives 1 and the next call
  re-feeds the correction (1 token, no draft), so 2/(2-a) tokens per call, a drafter call per clean call:
  speed-up = 2 T(1) / ((2 - a) T(2) + D_mtp).
* DSpark, mean tokens per verify call tau (bonus included, as the reports count it): the verify call is
  taken at S = 5 (bonus + 4 drafts: S = 6 was not measured), tokens per call min(tau, 5), one drafter call
  per verify call: speed-up = min(tau, 5) T(1) / (T(5) + D_dspark). Re-fed tokens after a rejection take
  draft slots in the fixed-width loop, so this is an upper bound for the same tau.
Public acceptance (V4_ARCHITECTURE.md section 9): MTP-1 50-80% on chat text; DSpark mean accepted length
2.1 on prose, 3.2-3.6 (SGLang, 8xB200), 4.4-4.7 on random prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import replace_results_block, table, write_json  # noqa: E402

MTP_ACCEPTANCE = (0.5, 0.65, 0.8)
DSPARK_TAU = (2.1, 3.2, 3.6, 4.5)
SLICE_TYPE = "CSA (ratio 4)"  # the per-layer figures the drafters' costs are built from


def project(projection: dict) -> dict:
    p = projection["projection"]
    verify = {int(k): float(v) for k, v in p["verify_ms"].items()}
    layer = projection["layer_types"][SLICE_TYPE]
    block = {int(k): float(v) for k, v in layer["layer_verify_ms"].items()}
    ends = {int(k): float(v) for k, v in layer["ends_verify_ms"].items()}
    d_mtp = block[1] + ends[1]
    d_dspark = 3 * block[5] + ends[5]
    mtp = {f"{a:.2f}": 2 * verify[1] / ((2 - a) * verify[2] + d_mtp) for a in MTP_ACCEPTANCE}
    dspark = {f"{t:.1f}": min(t, 5) * verify[1] / (verify[5] + d_dspark) for t in DSPARK_TAU}
    best_mtp, best_dspark = mtp[f"{MTP_ACCEPTANCE[1]:.2f}"], dspark[f"{DSPARK_TAU[1]:.1f}"]
    return {
        "verify_ms": verify, "drafter_ms": {"mtp": d_mtp, "dspark": d_dspark},
        "speedup_mtp_by_acceptance": mtp, "speedup_dspark_by_tau": dspark,
        "plain_tok_s": 1e3 / verify[1],
        "default": "dspark" if best_dspark > best_mtp else "mtp",
        "default_reason": f"at the reports' middle figures (MTP-1 acceptance {MTP_ACCEPTANCE[1]}, DSpark tau "
                          f"{DSPARK_TAU[1]}): MTP-1 x{best_mtp:.2f}, DSpark x{best_dspark:.2f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projection", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "v4_flash_projection.json")
    ap.add_argument("--json", default=None)
    ap.add_argument("--results", action="store_true",
                    help="also write benchmarks/RESULTS.md's `speculative-projection` block")
    args = ap.parse_args()
    source = json.loads(args.projection.read_text())
    out = project(source)
    v, d = out["verify_ms"], out["drafter_ms"]
    text = "\n".join([
        f"V4-Flash on the {source['machine'].get('cores')}-core benchmark machine (measured "
        f"{source['machine'].get('date')}; `python benchmarks/speculative_projection.py`, from "
        f"`benchmarks/results/{args.projection.name}`): target call T(1) {v[1]:.0f} ms, T(2) {v[2]:.0f} ms, "
        f"T(5) {v[5]:.0f} ms; drafter MTP-1 {d['mtp']:.0f} ms, DSpark {d['dspark']:.0f} ms per call.", "",
        table(["MTP-1 acceptance", *out["speedup_mtp_by_acceptance"]],
              [["x plain decode", *(f"{x:.2f}" for x in out["speedup_mtp_by_acceptance"].values())]]), "",
        table(["DSpark tokens per verify call", *out["speedup_dspark_by_tau"]],
              [["x plain decode", *(f"{x:.2f}" for x in out["speedup_dspark_by_tau"].values())]]), "",
        f"Default drafter for V4-Flash on this machine: **{out['default']}** ({out['default_reason']})."])
    if args.results:
        replace_results_block("speculative-projection", text)
    else:
        print(text)
    write_json(args.json, {"command": " ".join(sys.argv), "source": str(args.projection),
                           "machine": source["machine"], **out})


if __name__ == "__main__":
    main()
