"""`export --dry-run`: a whole checkpoint checked from config.json, the index and the shard headers (no weight
is read), with counts by dtype and tensor group and projected IR sizes and peak memory per output format."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from deepseek_v4_ov.checkpoint.layout import DTYPE_BYTES, INDEX_NAME
from deepseek_v4_ov.checkpoint.release import (
    BF16, F32, FP4, FP8, GROUPS, I64, check_folder, group_of, logical_tensors, storage_class, stored_entries,
)

PROJECTED_FORMATS = ("native", "bf16", "int8", "int4")


def unit_of(name: str) -> str:
    """The conversion unit of a tensor: its decoder layer or MTP block, embed, head, or the rest."""
    m = re.match(r"(layers|mtp)\.\d+", name)
    return m.group(0) if m else {"embed.weight": "embed", "head.weight": "head"}.get(name, "final norm/hc_head")


def projected_bytes(name: str, shape: tuple[int, ...], fmt: str) -> int:
    """Size of one port tensor in an exported IR (weights only), by format:
    native = the release encodings kept (FP4/FP8 + E8M0 scales); bf16 = floats as BF16, F32 tensors kept;
    int8 = 2-D weights as 8 bit + an FP16 scale per row; int4 = 2-D weights as 4 bit + an FP16 scale per
    128 inputs, embed/head 8 bit per row. Zero points (asymmetric modes) are not counted."""
    kind, numel = storage_class(name), prod(shape)
    plain = {I64: 8, F32: 4}.get(kind, 2) * numel
    if fmt == "native":
        return sum(prod(s) * DTYPE_BYTES[d] for d, s in stored_entries(name, shape, "fp8").values())
    matrix = kind in (FP8, FP4) or (kind == BF16 and len(shape) == 2)
    if fmt == "bf16" or not matrix:
        return plain
    if fmt == "int8" or name in ("embed.weight", "head.weight"):
        return numel + 2 * shape[0]
    return numel // 2 + 2 * shape[0] * -(-shape[1] // 128)


def _size(nbytes: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= div:
            return f"{nbytes / div:,.2f} {unit}"
    return f"{nbytes} B"


@dataclass
class DryRunReport:
    folder: Path
    storage_format: str
    shards: int
    tensors: int
    scaled_weights: int
    mtp_tensors: int
    bytes_by_dtype: dict[str, int]
    index_total_size: int | None
    groups: dict[str, tuple[int, int]]  # group -> (tensors incl. scales, stored bytes)
    projected: dict[str, int]  # output format -> bytes
    largest_unit: str
    unit_stored: int  # stored bytes of the largest unit
    peak: dict[str, int] = field(default_factory=dict)  # output format -> projected peak bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def format_table(self) -> str:
        lines = [
            f"checkpoint {self.folder} ({self.storage_format} layout, {self.shards} shards)",
            f"  tensors {self.tensors:,}; weights with an E8M0 scale {self.scaled_weights:,}; "
            f"mtp.* tensors {self.mtp_tensors:,}",
            f"  payload {self.total_bytes:,} bytes ({_size(self.total_bytes)})"
            + ("" if self.index_total_size in (None, self.total_bytes)
               else f"; index metadata says {self.index_total_size:,}"),
            "  by dtype: " + ", ".join(f"{d} {b:,}" for d, b in sorted(self.bytes_by_dtype.items())),
            "  mapping (official name = port parameter name):",
        ]
        lines += [f"    {g:<38} {c:>7,} tensors {_size(b):>12}" for g, (c, b) in self.groups.items() if c]
        lines.append("  projected IR size / peak memory (streamed by unit; largest unit "
                     f"{self.largest_unit}: {_size(self.unit_stored)} stored):")
        lines += [f"    {f:<7} {_size(self.projected[f]):>12}   peak ~{_size(self.peak[f])}" for f in PROJECTED_FORMATS]
        return "\n".join(lines)


def dry_run(folder: Path | str) -> DryRunReport:
    """Check a whole checkpoint from config.json, the index and the shard headers (no weight is read)
    and summarise it. Raises CheckpointError naming tensor and shard on the first problems."""
    folder = Path(folder)
    checkpoint = check_folder(folder)
    config, fmt, weight_map, headers = checkpoint.config, checkpoint.fmt, checkpoint.weight_map, checkpoint.headers
    by_dtype: dict[str, int] = {}
    groups = {g: [0, 0] for g, _ in GROUPS}
    units: dict[str, list[int]] = {}  # unit -> [stored bytes, largest FP32 tensor, *projected bytes]
    for name, h in headers.items():
        by_dtype[h.dtype] = by_dtype.get(h.dtype, 0) + h.nbytes
        base = name.removesuffix(".scale") + ".weight" if name.endswith(".scale") else name
        g = groups[group_of(base)]
        g[0] += 1
        g[1] += h.nbytes
        units.setdefault(unit_of(name), [0, 0] + [0] * len(PROJECTED_FORMATS))[0] += h.nbytes
    projected = dict.fromkeys(PROJECTED_FORMATS, 0)
    for name, shape in logical_tensors(config).items():
        u = units[unit_of(name)]
        u[1] = max(u[1], 4 * prod(shape))
        for i, f in enumerate(PROJECTED_FORMATS):
            b = projected_bytes(name, shape, f)
            u[2 + i] += b
            projected[f] += b
    # Peak while streaming: one unit as stored + the same unit converted + one tensor dequantised to FP32.
    peak = {f: max(u[0] + u[2 + i] + u[1] for u in units.values()) for i, f in enumerate(PROJECTED_FORMATS)}
    largest = max(units, key=lambda k: units[k][0])
    index = folder / INDEX_NAME
    total = json.loads(index.read_text()).get("metadata", {}).get("total_size") if index.is_file() else None
    return DryRunReport(
        folder=folder,
        storage_format=fmt,
        shards=len(set(weight_map.values())),
        tensors=len(headers),
        scaled_weights=sum(n.endswith(".scale") for n in headers),
        mtp_tensors=sum(n.startswith("mtp.") for n in headers),
        bytes_by_dtype=by_dtype,
        index_total_size=int(total) if total is not None else None,
        groups={g: (c, b) for g, (c, b) in groups.items()},
        projected=projected,
        largest_unit=largest,
        unit_stored=units[largest][0],
        peak=peak,
    )
