"""Export time and peak memory per preset and weight format.

    .venv/bin/python benchmarks/export_cost.py --preset seed --formats fp32 int8 int4 --json out.json
    .venv/bin/python benchmarks/export_cost.py --preset mid --toy-format bf16 --formats int4

The toy checkpoint of the preset (`--toy-format`, written once into `--workdir`) is exported once per format
(`--kinds stateful prefill-only` for both IRs), each export in a fresh child process
(`exporter.export(..., convert_tokenizer=False)`); peak memory is that child's ru_maxrss (os.wait4), time
its wall clock (Python start-up and imports included) next to the exporter's own per-stage times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_toy, export_child, machine, machine_line, table, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", nargs="+", default=["seed"])
    ap.add_argument("--formats", nargs="+", default=["fp32", "int8", "int4"])
    ap.add_argument("--toy-format", default="fp32", choices=["fp32", "bf16", "fp8"])
    ap.add_argument("--kinds", nargs="+", default=["stateful"], choices=["stateful", "prefill-only"],
                    help="which IRs to export per format")
    ap.add_argument("--whole", action="store_true", help="export as one piece (default: piece by piece)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the exported folders (default: delete each)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import shutil

    info = machine()
    print(machine_line(info), flush=True)
    rows, results = [], []
    for preset in args.preset:
        src = ensure_toy(args.workdir, preset, args.toy_format)
        src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        for fmt in args.formats:
            for prefill_only in [k == "prefill-only" for k in args.kinds]:
                kind = "prefill-only" if prefill_only else "stateful"
                # the folder name benchmarks/runtimes.py reuses (with --keep)
                out = args.workdir / f"{src.name}-ov-{fmt}{'-prefill' if prefill_only else ''}"
                print(f"-- {preset} {fmt} {kind}", flush=True)
                try:
                    res = export_child(src, out, fmt, prefill_only=prefill_only, whole=args.whole)
                except RuntimeError as err:
                    print(f"   FAILED: {str(err).splitlines()[-1]}", flush=True)
                    rows.append([preset, fmt, kind, "FAILED", "", "", "", ""])
                    results.append({"preset": preset, "format": fmt, "kind": kind, "error": str(err)[-2000:]})
                    continue
                finally:
                    if not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in res["times"].items())
                print(f"   {res['child_wall_s']:.1f}s, peak RSS {res['peak_rss_mb']:,.0f} MB, IR "
                      f"{res['ir_bytes'] / 1e6:,.1f} MB", flush=True)
                rows.append([preset, fmt, kind, f"{res['child_wall_s']:.1f}", stages, f"{res['peak_rss_mb']:,.0f}",
                             f"{res['ir_bytes'] / 1e6:,.1f}", f"{src_bytes / 1e6:,.1f}"])
                results.append({"preset": preset, "format": fmt, "kind": kind, "source_bytes": src_bytes, **res})
    title = (f"export cost: {', '.join(args.preset)} ({args.toy_format} toy), "
             f"{'one-piece' if args.whole else 'piece-wise'} export, one child process per export")
    print()
    print(title)
    print(machine_line(info))
    print(table(["preset", "format", "IR", "wall s", "stages s (exporter)", "peak RSS MB", "IR MB", "source MB"], rows))
    write_json(args.json, {"title": title, "machine": info, "command": " ".join(sys.argv), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
