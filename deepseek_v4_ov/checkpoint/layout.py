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
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
from safetensors.torch import save_file

from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "model"  # the bundled pair
BUNDLED_FILES = ("configuration_deepseek_v4.py", "modeling_deepseek_v4.py")
AUTO_MAP = {
    "AutoConfig": "configuration_deepseek_v4.DeepseekV4Config",
    "AutoModel": "modeling_deepseek_v4.DeepseekV4Model",
    "AutoModelForCausalLM": "modeling_deepseek_v4.DeepseekV4ForCausalLM",
}
"""config.json's `auto_map`: every folder (toy or exported) ships the bundled pair for trust_remote_code."""


def copy_bundled_code(folder: Path) -> None:
    for name in BUNDLED_FILES:
        shutil.copyfile(PACKAGE_DIR / name, folder / name)


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(output: Path) -> None:
    """Remove the temporary folders that an earlier run killed before it finished left beside `output`
    (named `.<output>.partial-<pid>-*`, its pid no longer running)."""
    for stale in output.parent.glob(f".{output.name}.partial-*"):
        pid = stale.name.removeprefix(f".{output.name}.partial-").split("-")[0]
        if stale.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def atomic_output_dir(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `output`; on success it replaces `output` in one atomic step (the two
    folders are exchanged, then the old one removed), on failure it is removed. A run killed at any point
    therefore leaves `output` either as it was or complete, and its temporary folder is removed by the next
    run. An existing non-empty `output` needs `overwrite`."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-{os.getpid()}-", dir=output.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; safetensors writes 0600 files
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if not output.exists():
            os.rename(tmp, output)
        elif _exchange(tmp, output):
            shutil.rmtree(tmp)  # now the old content
        else:  # no renameat2: a short window in which `output` is missing
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-{os.getpid()}-", dir=output.parent))
            os.rmdir(old)
            os.rename(output, old)
            os.rename(tmp, output)
            shutil.rmtree(old)
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


DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                "F8_E8M0": torch.float8_e8m0fnu}


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int  # absolute byte offset of the data in the shard file


def read_header(path: Path) -> dict[str, TensorHeader]:
    """The tensors a safetensors file declares, from its 8-byte length and JSON header only; checks that
    every tensor's byte range fits its dtype and shape and lies inside the file (which may be sparse)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from err
    data_len = size - 8 - n
    out: dict[str, TensorHeader] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info}") from err
        if dtype not in DTYPE_BYTES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        nbytes = prod(shape) * DTYPE_BYTES[dtype]
        if end - start != nbytes or start < 0:
            raise CheckpointError(f"{path}: tensor {name!r} spans bytes [{start}, {end}) but {dtype}{list(shape)} "
                                  f"needs {nbytes}")
        if end > data_len:
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} of the data but the file holds only "
                                  f"{data_len} (truncated shard)")
        out[name] = TensorHeader(dtype, shape, nbytes, 8 + n + start)
    return out


class CheckpointReader:
    """Lazy view of a sharded checkpoint: the index and every shard header are read once, here (names,
    dtypes, shapes and byte offsets); `get` then reads one tensor's bytes at its offset."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = dict(json.loads(index_path.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index_path}: not a safetensors index ({err})") from err
            shard_names = sorted(set(weight_map.values()))
        else:
            singles = sorted(self.folder.glob("*.safetensors"))
            if len(singles) != 1:
                raise CheckpointError(
                    f"{self.folder}: no {INDEX_NAME} and {len(singles)} .safetensors files; expected an index "
                    "or exactly one file"
                )
            weight_map, shard_names = None, [singles[0].name]
        self.headers: dict[str, TensorHeader] = {}  # tensor name -> header, over all shards
        for shard in shard_names:
            path = self.folder / shard
            if not path.is_file():
                example = next(n for n, s in weight_map.items() if s == shard)
                raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing (it holds e.g. {example!r})")
            for name, h in read_header(path).items():
                if weight_map is not None and weight_map.get(name) != shard:
                    where = f"places it in {weight_map[name]!r}" if name in weight_map else "does not list it"
                    raise CheckpointError(f"{path}: tensor {name!r} is in this shard but {INDEX_NAME} {where}")
                self.headers[name] = h
        if weight_map is None:
            weight_map = dict.fromkeys(self.headers, shard_names[0])
        for name, shard in weight_map.items():
            if name not in self.headers:
                raise CheckpointError(f"{self.folder / shard}: tensor {name!r} is listed in {INDEX_NAME} but absent")
        self.weight_map: dict[str, str] = weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype string, shape) of one tensor, from the shard header."""
        h = self.headers[name]
        return h.dtype, h.shape

    def get(self, name: str) -> torch.Tensor:
        """One tensor as stored (its dtype and shape), read from its byte range."""
        h, shard = self.headers[name], self.folder / self.weight_map[name]
        data = bytearray(h.nbytes)
        try:
            with open(shard, "rb") as f:
                f.seek(h.offset)
                got = f.readinto(data)
        except OSError as err:
            raise CheckpointError(f"{shard}: cannot read tensor {name!r} ({err})") from err
        if got != h.nbytes:
            raise CheckpointError(f"{shard}: tensor {name!r}: read {got} of {h.nbytes} bytes (truncated shard)")
        if not h.nbytes:
            return torch.empty(h.shape, dtype=TORCH_DTYPES[h.dtype])
        return torch.frombuffer(data, dtype=TORCH_DTYPES[h.dtype]).reshape(h.shape)

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
