"""Checkpoints in the official DeepSeek-V4 release layout: config.json, safetensors shards and
`model.safetensors.index.json`, official tensor names.

Reading is lazy (one tensor at a time through `safe_open`), and every problem is reported before any
work with the file and tensor it concerns.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read as a DeepSeek-V4 release; the message names the culprit."""


# ------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------
def write_shards(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> dict[str, str]:
    """Write `tensors` as `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes` each
    (a larger single tensor gets a shard of its own) plus the index; return the weight map."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


@contextmanager
def atomic_output_dir(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `output`; on success it replaces `output`, on failure it is removed,
    so an interrupted run never leaves a half-written folder. An existing non-empty `output` needs
    `overwrite`."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; safetensors writes 0600 files
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------
def read_config(folder: Path) -> DeepseekV4Config:
    """config.json of a V4 folder, checked for model_type and consistency."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a DeepSeek-V4 folder needs config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if raw.get("model_type") != "deepseek_v4":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'deepseek_v4'")
    for key in ("auto_map", "architectures", "transformers_version", "model_type"):
        raw.pop(key, None)
    try:
        return DeepseekV4Config(**raw)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err


class CheckpointReader:
    """Lazy view of a sharded checkpoint: names, shapes and dtypes from headers; tensors on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index_path}: not a safetensors index ({err})") from err
        else:
            singles = sorted(self.folder.glob("*.safetensors"))
            if len(singles) != 1:
                raise CheckpointError(
                    f"{self.folder}: no {INDEX_NAME} and {len(singles)} .safetensors files; expected an index "
                    "or exactly one file"
                )
            weight_map = None
            single = singles[0].name
        self._headers: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
        shard_names = sorted(set(weight_map.values())) if weight_map is not None else [single]
        for shard in shard_names:
            path = self.folder / shard
            if not path.is_file():
                example = next(n for n, s in weight_map.items() if s == shard)
                raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing (it holds e.g. {example!r})")
            try:
                with safe_open(str(path), framework="pt") as f:
                    self._headers[shard] = {
                        name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()
                    }
            except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
                raise CheckpointError(f"{path}: unreadable safetensors shard ({err})") from err
        if weight_map is None:
            weight_map = dict.fromkeys(self._headers[single], single)
        for name, shard in weight_map.items():
            if name not in self._headers[shard]:
                raise CheckpointError(f"{self.folder / shard}: tensor {name!r} is listed in {INDEX_NAME} but absent")
        self.weight_map: dict[str, str] = weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype string, shape) of one tensor, from the shard header."""
        return self._headers[self.weight_map[name]][name]

    def get(self, name: str) -> torch.Tensor:
        shard = self.folder / self.weight_map[name]
        try:
            with safe_open(str(shard), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as err:
            raise CheckpointError(f"{shard}: cannot read tensor {name!r} ({err})") from err

    def check_against(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Every expected tensor present with its shape, and nothing unexpected."""
        missing = [n for n in expected if n not in self.weight_map]
        if missing:
            raise CheckpointError(
                f"{self.folder}: {len(missing)} tensor(s) missing from the checkpoint, e.g. {missing[:3]}"
            )
        unknown = [n for n in self.weight_map if n not in expected]
        if unknown:
            raise CheckpointError(
                f"{self.folder / self.weight_map[unknown[0]]}: unknown tensor {unknown[0]!r} "
                f"({len(unknown)} unknown in all) for this config"
            )
        for name, shape in expected.items():
            got = self.info(name)[1]
            if got != tuple(shape):
                raise CheckpointError(
                    f"{self.folder / self.weight_map[name]}: tensor {name!r} has shape {list(got)}, "
                    f"expected {list(shape)} from config.json"
                )
