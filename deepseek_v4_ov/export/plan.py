"""`export --dry-run`: a whole checkpoint checked from config.json, the index and the shard headers (no weight
is read), with counts by dtype and tensor group, and per output format the projected IR size, conversion
peak and runtime memory (`project`: the same figures the export prints and checks OUTPUT's free space by)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from pathlib import Path

import torch
from transformers.initialization import no_init_weights

from deepseek_v4_ov.checkpoint.drafter import DrafterSummary, drafter_summary
from deepseek_v4_ov.checkpoint.layout import DTYPE_BYTES, INDEX_NAME
from deepseek_v4_ov.checkpoint.release import (
    GROUPS, Checkpoint, check_folder, group_of, logical_tensors, stored_entries,
)
from deepseek_v4_ov.compress.formats import NATIVE, WEIGHT_FORMATS, WeightFormat, format_named
from deepseek_v4_ov.compress.policy import CompressionOptions, theoretical_bytes
from deepseek_v4_ov.model.modeling_deepseek_v4 import Attention

PROJECTED_FORMATS = (NATIVE.name, *WEIGHT_FORMATS)
RUNTIME_CONTEXT = 32_768
"""The context (tokens, batch 1) at which runtime memory is projected (the model's maximum if shorter)."""
STATE_BYTES = 4  # the IR's states are f32


def unit_of(name: str) -> str:
    """The conversion unit of a tensor: its decoder layer or MTP block, embed, head, or the rest."""
    m = re.match(r"(layers|mtp)\.\d+", name)
    return m.group(0) if m else {"embed.weight": "embed", "head.weight": "head"}.get(name, "final norm/hc_head")


def exported(name: str) -> bool:
    """Whether the IR holds the tensor: the drafter (`mtp.*`: MTP block or DSpark stages) is not exported
    (the IR computes the target model)."""
    return not name.startswith("mtp.")


def tensor_bytes(config, weight_format: str,
                 compression: CompressionOptions | None = None) -> Callable[[str, tuple[int, ...], str], float]:
    """Bytes of one port tensor (name, shape, `group_of(name)`) in an IR of `weight_format`: `native` keeps
    the release encodings (FP4/FP8 + E8M0 scales, the rest as stored); the NNCF formats follow the precision
    policy (`compress.policy.theoretical_bytes`, scales and zero points included) with `compression`'s
    options (the format's defaults if None), spread over a group's tensors by element count, the target's
    and the drafter's separately (exact per group and part, so exact in total)."""
    if format_named(weight_format).keeps_release_codes:
        return lambda name, shape, group: sum(prod(s) * DTYPE_BYTES[d]
                                              for d, s in stored_entries(name, shape, "fp8").values())
    def part(name: str) -> tuple[str, bool]:
        return group_of(name), exported(name)

    per_part = theoretical_bytes(config, compression or CompressionOptions(weight_format), include_mtp=True, key=part)
    elements: dict[tuple[str, bool], int] = {}
    for name, shape in logical_tensors(config).items():
        elements[part(name)] = elements.get(part(name), 0) + prod(shape)
    factor = {k: per_part.get(k, 0.0) / n for k, n in elements.items()}
    return lambda name, shape, group: prod(shape) * factor[group, exported(name)]


def decode_state_bytes(config, context: int = RUNTIME_CONTEXT) -> int:
    """Bytes of the stateful IR's decode state (f32, batch 1) after `context` tokens (the states
    `DeepseekV4Cache` names), from the attention module of each decoder layer's kind (built on the meta
    device): the window (W-1 rows of head_dim); per compressor (a compressed layer's own and, on CSA, the
    indexer's) of ratio r its entries (context/r rows of its width), the open window (at most r-1 rows of
    kv and gate, twice as wide where windows overlap) and, where they overlap, the previous halves (r rows
    of kv and gate). The MTP block is not exported."""
    with torch.device("meta"), no_init_weights():
        attention = {kind: Attention(config, kind) for kind in set(config.layer_types)}
    rows = 0
    for kind in config.layer_types:
        attn = attention[kind]
        rows += min(attn.window - 1, context) * attn.head_dim
        for comp in (attn.compressor, attn.indexer and attn.indexer.compressor):
            if comp is not None:
                width = comp.dim * (2 if comp.overlap else 1)
                rows += context // comp.ratio * comp.dim + 2 * (comp.ratio - 1) * width
                if comp.overlap:
                    rows += 2 * comp.ratio * comp.dim
    return STATE_BYTES * rows


def size_text(nbytes: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= div:
            return f"{nbytes / div:,.2f} {unit}"
    return f"{nbytes:.0f} B"


@dataclass(frozen=True)
class Projection:
    """What one export of a checkpoint will take, from its headers and config alone.

    ir_bytes      the IR's weights (`openvino_model.bin`; the graph `.xml`, a few MB, is not counted)
    peak_bytes    conversion peak, streaming by unit: the largest unit as stored + the same unit converted
                  + one tensor of it dequantised to FP32
    state_bytes   the decode state after `context` tokens (`decode_state_bytes`)
    runtime_bytes what a runtime holds to decode at `context` tokens: the weights as in the IR (the CPU
                  plugin keeps compressed constants compressed and decompresses inside its matmuls) + the
                  decode state. Not counted: one decode step's activations (a few hidden-size vectors per
                  token), the runtime's own code, and weights a plugin expands when compiling (f8e4m3 on CPUs
                  without FP8, docs/export.md "Reading official checkpoints").
    disk_bytes    free space the export needs beside OUTPUT: the pieces' files and the stitched IR exist
                  together until the stitch ends, so twice the IR.
    drafter_bytes the drafter's weights in the same format (reported beside the target's, not exported)."""

    weight_format: str
    ir_bytes: int
    peak_bytes: int
    state_bytes: int
    context: int = RUNTIME_CONTEXT
    drafter_bytes: int = 0  # the drafter's weights (`mtp.*`) in this format; not in the IR, not in the figures above

    @property
    def format(self) -> WeightFormat:
        return format_named(self.weight_format)

    @property
    def runtime_bytes(self) -> int:
        return self.ir_bytes + self.state_bytes

    @property
    def disk_bytes(self) -> int:
        return 2 * self.ir_bytes

    @property
    def cpu_private_bytes(self) -> int:
        """The CPU plugin's private memory for the weights of this format (its `cpu_expansion`; 1x otherwise)."""
        return int(self.ir_bytes * (self.format.cpu_expansion or 1.0))

    def describe(self) -> str:
        return (f"{self.weight_format}: IR weights ~{size_text(self.ir_bytes)}, conversion peak "
                f"~{size_text(self.peak_bytes)}, runtime ~{size_text(self.runtime_bytes)} (weights + decode state "
                f"{size_text(self.state_bytes)} at {self.context:,} tokens, batch 1)")


@lru_cache(maxsize=2)
def _layout(checkpoint: Checkpoint) -> tuple[dict[str, tuple[int, int]], list[tuple[str, tuple[int, ...], str, str]]]:
    """The exported units -> (stored bytes, largest tensor in FP32 bytes), and every port tensor as
    (name, shape, unit, group); read once per checkpoint."""
    stored: dict[str, int] = {}
    for name, h in checkpoint.headers.items():
        if exported(name):
            stored[unit_of(name)] = stored.get(unit_of(name), 0) + h.nbytes
    largest = dict.fromkeys(stored, 0)
    tensors = []
    for name, shape in logical_tensors(checkpoint.config).items():
        unit = unit_of(name)
        if exported(name):
            largest[unit] = max(largest[unit], 4 * prod(shape))
        tensors.append((name, shape, unit, group_of(name)))
    return {u: (stored[u], largest[u]) for u in stored}, tensors


def project(checkpoint: Checkpoint, weight_format: str, compression: CompressionOptions | None = None,
            context: int = RUNTIME_CONTEXT) -> Projection:
    """The projection of exporting `checkpoint` to `weight_format` (see `Projection`)."""
    config = checkpoint.config
    context = min(context, config.max_position_embeddings)
    nbytes = tensor_bytes(config, weight_format, compression)
    units, tensors = _layout(checkpoint)
    converted = dict.fromkeys(units, 0.0)
    drafter = 0.0
    for name, shape, unit, group in tensors:
        if exported(name):
            converted[unit] += nbytes(name, shape, group)
        else:
            drafter += nbytes(name, shape, group)
    peak = max(stored + converted[u] + largest for u, (stored, largest) in units.items())
    return Projection(weight_format, round(sum(converted.values())), round(peak), decode_state_bytes(config, context),
                      context, round(drafter))


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
    projections: dict[str, Projection] = field(default_factory=dict)  # output format (default options) -> figures
    mtp_bytes: int = 0  # stored bytes of the drafter (`mtp.*`, not exported)
    drafter: DrafterSummary = DrafterSummary(None, ())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    @property
    def projected(self) -> dict[str, int]:
        """Output format -> projected IR weight bytes."""
        return {f: p.ir_bytes for f, p in self.projections.items()}

    def format_table(self) -> str:
        lines = [
            f"checkpoint {self.folder} ({self.storage_format} layout, {self.shards} shards)",
            f"  tensors {self.tensors:,}; weights with an E8M0 scale {self.scaled_weights:,}; "
            f"mtp.* tensors {self.mtp_tensors:,}",
            f"  payload {self.total_bytes:,} bytes ({size_text(self.total_bytes)})"
            + ("" if self.index_total_size in (None, self.total_bytes)
               else f"; index metadata says {self.index_total_size:,}"),
            "  by dtype: " + ", ".join(f"{d} {b:,}" for d, b in sorted(self.bytes_by_dtype.items())),
            f"  drafter: {self.drafter.describe()}",
            f"  target {self.tensors - self.mtp_tensors:,} tensors, {self.total_bytes - self.mtp_bytes:,} bytes "
            f"({size_text(self.total_bytes - self.mtp_bytes)})"
            + (f"; drafter {self.mtp_tensors:,} tensors, {self.mtp_bytes:,} bytes ({size_text(self.mtp_bytes)})"
               if self.mtp_tensors else ""),
            "  mapping (official name = port parameter name):",
        ]
        lines += [f"    {g:<38} {c:>7,} tensors {size_text(b):>12}" for g, (c, b) in self.groups.items() if c]
        context = next(iter(self.projections.values())).context
        drafter = self.drafter.kind is not None
        lines.append(f"  projected per --weight-format (default options): target IR weights, conversion peak (streamed "
                     f"by unit), runtime memory (weights + decode state at {context:,} tokens)"
                     + ("; the drafter's weights (not exported)" if drafter else ""))
        lines += [f"    {f:<7} IR {size_text(p.ir_bytes):>12}   peak ~{size_text(p.peak_bytes):>12}   runtime "
                  f"~{size_text(p.runtime_bytes):>12}"
                  + (f"   drafter {size_text(p.drafter_bytes):>12}" if drafter else "")
                  for f, p in self.projections.items()]
        return "\n".join(lines)


def dry_run(source: Path | str | Checkpoint) -> DryRunReport:
    """Check a whole checkpoint from config.json, the index and the shard headers (no weight is read)
    and summarise it. Raises CheckpointError naming tensor and shard on the first problems."""
    checkpoint = source if isinstance(source, Checkpoint) else check_folder(Path(source))
    folder, fmt, weight_map, headers = checkpoint.folder, checkpoint.fmt, checkpoint.weight_map, checkpoint.headers
    by_dtype: dict[str, int] = {}
    groups = {g: [0, 0] for g, _ in GROUPS}
    for name, h in headers.items():
        by_dtype[h.dtype] = by_dtype.get(h.dtype, 0) + h.nbytes
        base = name.removesuffix(".scale") + ".weight" if name.endswith(".scale") else name
        g = groups[group_of(base)]
        g[0] += 1
        g[1] += h.nbytes
    index = Path(folder) / INDEX_NAME
    total = json.loads(index.read_text()).get("metadata", {}).get("total_size") if index.is_file() else None
    return DryRunReport(
        folder=Path(folder),
        storage_format=fmt,
        shards=len(set(weight_map.values())),
        tensors=len(headers),
        scaled_weights=sum(n.endswith(".scale") for n in headers),
        mtp_tensors=sum(n.startswith("mtp.") for n in headers),
        bytes_by_dtype=by_dtype,
        index_total_size=int(total) if total is not None else None,
        groups={g: (c, b) for g, (c, b) in groups.items()},
        projections={f: project(checkpoint, f) for f in PROJECTED_FORMATS},
        mtp_bytes=sum(h.nbytes for n, h in headers.items() if not exported(n)),
        drafter=drafter_summary(checkpoint.config, headers),
    )
