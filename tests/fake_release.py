"""Sparse fakes of the official V4-Flash releases: config.json, the index and safetensors shards whose headers
declare every tensor of the release (real names, dtypes, shapes) with its data region a hole (each shard is
truncated to its declared size), so a 160 GB checkpoint takes a few MB of disk. What the header-only paths
(`Checkpoint`, `dry_run`) read is exactly what the real folder holds; reading a weight gives zeros.

    python tests/fake_release.py OUT --release 0731     # base | dspark | 0731

`base` is `deepseek-ai/DeepSeek-V4-Flash` (MTP block `mtp.0`, 46 shards, 69,187 tensors); `dspark` and `0731`
are the later releases with the DSpark drafter (three stages `mtp.0..2`, 48 shards, 72,317 tensors); the two
have the same layout, so they are written alike."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from math import prod
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepseek_v4_ov.checkpoint.layout import DTYPE_BYTES, INDEX_NAME  # noqa: E402
from deepseek_v4_ov.checkpoint.release import expected_tensors  # noqa: E402
from deepseek_v4_ov.toys.writer import official_config_dict  # noqa: E402
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config, flash_compress_ratios  # noqa: E402

RELEASE_DSPARK = {"dspark_block_size": 5, "dspark_noise_token_id": 128799, "dspark_target_layer_ids": [40, 41, 42],
               "dspark_markov_rank": 256}
"""The DSpark releases' config.json keys (V4_ARCHITECTURE.md section 9)."""


def release_config(release: str) -> DeepseekV4Config:
    """config.json of a V4-Flash release: `base` (the defaults: 43 layers + one MTP block), or `dspark` /
    `0731` (the same 43 layers, `compress_ratios` of 46 entries ending in three 0s for the DSpark stages,
    the dspark_* keys, and `num_nextn_predict_layers` still 1)."""
    if release == "base":
        return DeepseekV4Config()
    if release in ("dspark", "0731"):
        return DeepseekV4Config(compress_ratios=flash_compress_ratios(43, 0) + [0, 0, 0], **RELEASE_DSPARK)
    raise ValueError(f"--release {release!r}: choose base, dspark or 0731")


SHARDS = {"base": 46, "dspark": 48, "0731": 48}


def write_sparse_release(folder: Path, config: DeepseekV4Config, shards: int = 46,
                         keep: Callable[[str], bool] = lambda name: True) -> None:
    """Index, config.json (`config`, release layout) and `shards` shards whose headers declare the
    release's tensors for `config` (those `keep` accepts), in inventory order; the data region is a hole."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {n: e for n, e in expected_tensors(config, "fp8").items() if keep(n)}
    sizes = {n: DTYPE_BYTES[d] * prod(s) for n, (d, s) in expected.items()}
    total, start, groups = sum(sizes.values()), 0, [dict() for _ in range(shards)]
    for name, size in sizes.items():
        groups[start * shards // total][name] = size
        start += size
    weight_map = {}
    for i, group in enumerate(groups, 1):
        filename = f"model-{i:05d}-of-{shards:05d}.safetensors"
        header, offset = {}, 0
        for name, size in group.items():
            dtype, shape = expected[name]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = filename
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / filename, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(official_config_dict(config, "fp8"), indent=2))


def write_release(folder: Path, release: str) -> None:
    """The sparse fake of one release (`base`, `dspark`, `0731`)."""
    write_sparse_release(folder, release_config(release), SHARDS[release])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--release", choices=sorted(SHARDS), default="0731")
    args = parser.parse_args(argv)
    write_release(args.output, args.release)
    print(f"wrote a sparse fake of V4-Flash ({args.release}) to {args.output}")


if __name__ == "__main__":
    main()
