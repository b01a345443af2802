"""`deepseek-v4-ov` command line: toy, export, parity, demo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .toy import FORMATS


def add_toy(sub: argparse._SubParsersAction) -> None:
    from toy.presets import PRESETS

    p = sub.add_parser("toy", help="write a random-weight toy checkpoint in the official release layout")
    p.add_argument("output", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=FORMATS, default="bf16", help="storage format of the weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    p.set_defaults(run=run_toy)


def run_toy(args: argparse.Namespace) -> None:
    from toy.presets import PRESETS

    from .toy import write_toy

    start = time.perf_counter()
    print(f"writing toy '{args.preset}' (seed {args.seed}, {args.format}) to {args.output}")
    model = write_toy(args.output, PRESETS[args.preset], args.seed, args.format, overwrite=args.overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in args.output.glob("*.safetensors"))
    shards = len(list(args.output.glob("*.safetensors")))
    print(f"done in {time.perf_counter() - start:.1f}s: {n_params:,} parameters, {shards} shard(s), "
          f"{size / 1e6:.2f} MB of weights")


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the built-in seed toy")
    p.add_argument("--workdir", type=Path, default=Path("out/demo"))
    p.set_defaults(run=lambda args: __import__("deepseek_v4_ov.demo", fromlist=["main"]).main(args.workdir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepseek-v4-ov", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_toy, add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileExistsError, ValueError) as err:
        print(f"deepseek-v4-ov {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
