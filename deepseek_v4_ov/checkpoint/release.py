"""The official DeepSeek-V4 checkpoint layout: tensor inventory, header-only dry run, exact loading.

Official tensor names are the port's parameter names (no `model.` prefix), so the mapping is the identity;
what this module adds is the storage layout (spec section 6):

* routed experts `(layers|mtp).N.ffn.experts.E.w{1,2,3}.weight`: FP4 e2m1 packed into I8 `[O, K/2]`, with
  `.scale` F8_E8M0 `[O, K/32]`;
* `attn.{wq_a,wq_b,wkv,wo_a,wo_b}`, `attn.indexer.wq_b`, `ffn.shared_experts.w{1,2,3}`, `mtp.N.{e,h}_proj`:
  FP8 e4m3 with `.scale` F8_E8M0 `[ceil(O/128), ceil(K/128)]`;
* `tid2eid` I64; `hc_*`, `attn_sink`, `ape`, `gate.bias` F32; everything else BF16.

A folder written as BF16 or FP32 (toy formats) has the same names without `.scale` companions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import torch

from deepseek_v4_ov.checkpoint import quant
from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, INDEX_NAME, CheckpointError, CheckpointReader, read_config
from deepseek_v4_ov.model.configuration_deepseek_v4 import CSA, DeepseekV4Config

# Storage classes of one logical (port) tensor.
FP8, FP4, BF16, F32, I64 = "fp8", "fp4", "bf16", "f32", "i64"
FORMATS = ("fp8", "bf16", "fp32")  # "fp8" is the release layout (FP8 + FP4 experts + E8M0 scales)

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
EXPERT_DTYPE = "fp4"

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
TORCH_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64, "I8": torch.int8,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu}

_FP4_RE = re.compile(r"(layers|mtp)\.\d+\.ffn\.experts\.\d+\.w[123]\.weight")
_FP8_RE = re.compile(
    r"(layers|mtp)\.\d+\.(attn\.(wq_a|wq_b|wkv|wo_a|wo_b|indexer\.wq_b)|ffn\.shared_experts\.w[123]|e_proj|h_proj)"
    r"\.weight"
)
_F32_RE = re.compile(r"(.*\.)?hc_\w+|.*\.(attn_sink|ape|gate\.bias)")


def storage_class(name: str) -> str:
    """How the release stores the port tensor `name`: fp8, fp4, bf16, f32 or i64."""
    if _FP4_RE.fullmatch(name):
        return FP4
    if _FP8_RE.fullmatch(name):
        return FP8
    if name.endswith(".tid2eid"):
        return I64
    return F32 if _F32_RE.fullmatch(name) else BF16


def scale_name(weight_name: str) -> str:
    return weight_name.removesuffix(".weight") + ".scale"


# ------------------------------------------------------------------------------------------------------
# Inventory
# ------------------------------------------------------------------------------------------------------
def logical_tensors(config: DeepseekV4Config) -> dict[str, tuple[int, ...]]:
    """Every port tensor (= official name) with its full-precision shape, derived from the config alone."""
    c = config
    hd, n, q, inter = c.hidden_size, c.hc_mult, c.q_lora_rank, c.moe_intermediate_size
    heads, d = c.num_attention_heads, c.head_dim
    mix = (2 + n) * n
    out: dict[str, tuple[int, ...]] = {
        "embed.weight": (c.vocab_size, hd),
        "head.weight": (c.vocab_size, hd),
        "norm.weight": (hd,),
        "hc_head_fn": (n, n * hd),
        "hc_head_base": (n,),
        "hc_head_scale": (1,),
    }

    def block(p: str, ratio: int, hashed: bool) -> None:
        for site in ("attn", "ffn"):
            h = f"{p}.hc_{site}"
            out.update({f"{h}_fn": (mix, n * hd), f"{h}_base": (mix,), f"{h}_scale": (3,)})
        out.update({
            f"{p}.attn_norm.weight": (hd,),
            f"{p}.ffn_norm.weight": (hd,),
            f"{p}.attn.wq_a.weight": (q, hd),
            f"{p}.attn.q_norm.weight": (q,),
            f"{p}.attn.wq_b.weight": (heads * d, q),
            f"{p}.attn.wkv.weight": (d, hd),
            f"{p}.attn.kv_norm.weight": (d,),
            f"{p}.attn.wo_a.weight": (c.o_groups * c.o_lora_rank, heads * d // c.o_groups),
            f"{p}.attn.wo_b.weight": (hd, c.o_groups * c.o_lora_rank),
            f"{p}.attn.attn_sink": (heads,),
        })
        if ratio:
            width = 2 * d if ratio == CSA else d  # CSA windows overlap: two halves per entry
            cp = f"{p}.attn.compressor"
            out.update({f"{cp}.wkv.weight": (width, hd), f"{cp}.wgate.weight": (width, hd),
                        f"{cp}.ape": (ratio, width), f"{cp}.norm.weight": (d,)})
        if ratio == CSA:
            ip, di = f"{p}.attn.indexer", c.index_head_dim
            out.update({
                f"{ip}.wq_b.weight": (c.index_n_heads * di, q),
                f"{ip}.weights_proj.weight": (c.index_n_heads, hd),
                f"{ip}.compressor.wkv.weight": (2 * di, hd),
                f"{ip}.compressor.wgate.weight": (2 * di, hd),
                f"{ip}.compressor.ape": (CSA, 2 * di),
                f"{ip}.compressor.norm.weight": (di,),
            })
        out[f"{p}.ffn.gate.weight"] = (c.n_routed_experts, hd)
        if hashed:
            out[f"{p}.ffn.gate.tid2eid"] = (c.vocab_size, c.num_experts_per_tok)
        else:
            out[f"{p}.ffn.gate.bias"] = (c.n_routed_experts,)
        for e in range(c.n_routed_experts):
            ep = f"{p}.ffn.experts.{e}"
            out.update({f"{ep}.w1.weight": (inter, hd), f"{ep}.w2.weight": (hd, inter), f"{ep}.w3.weight": (inter, hd)})
        sp = f"{p}.ffn.shared_experts"
        out.update({f"{sp}.w1.weight": (inter, hd), f"{sp}.w2.weight": (hd, inter), f"{sp}.w3.weight": (inter, hd)})

    for i, ratio in enumerate(c.layer_ratios):
        block(f"layers.{i}", ratio, i < c.num_hash_layers)
    for j, ratio in enumerate(c.mtp_ratios):
        p = f"mtp.{j}"
        block(p, ratio, False)
        out.update({f"{p}.e_proj.weight": (hd, hd), f"{p}.h_proj.weight": (hd, hd), f"{p}.enorm.weight": (hd,),
                    f"{p}.hnorm.weight": (hd,), f"{p}.norm.weight": (hd,), f"{p}.hc_head_fn": (n, n * hd),
                    f"{p}.hc_head_base": (n,), f"{p}.hc_head_scale": (1,)})
    return out


def stored_entries(name: str, shape: tuple[int, ...], fmt: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The file tensors (name -> (safetensors dtype, shape)) that hold one port tensor in format `fmt`."""
    kind = storage_class(name)
    if kind == I64:
        return {name: ("I64", shape)}
    if fmt == "fp32":
        return {name: ("F32", shape)}
    if fmt == "bf16" or kind in (BF16, F32):
        return {name: ("F32" if kind == F32 else "BF16", shape)}
    rows, cols = shape
    if kind == FP8:
        blk = quant.FP8_BLOCK
        return {name: ("F8_E4M3", shape), scale_name(name): ("F8_E8M0", (-(-rows // blk), -(-cols // blk)))}
    if cols % quant.FP4_GROUP:
        raise CheckpointError(f"{name}: FP4 storage needs the input dimension divisible by 32, got {cols}")
    return {name: ("I8", (rows, cols // 2)), scale_name(name): ("F8_E8M0", (rows, cols // quant.FP4_GROUP))}


def expected_tensors(config: DeepseekV4Config, fmt: str = "fp8") -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every file tensor of a checkpoint for `config` in format `fmt` ("fp8" = the release layout, with
    `.scale` companions; "bf16"; "fp32"): name -> (safetensors dtype string, shape)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown storage format {fmt!r}; choose one of {FORMATS}")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, shape in logical_tensors(config).items():
        out.update(stored_entries(name, shape, fmt))
    return out


def storage_format(folder: Path) -> str:
    """The storage format a folder's config.json declares: fp8 (quantization_config, checked against the
    release's), else fp32 or bf16 from its dtype."""
    path = Path(folder) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err
    qc = raw.get("quantization_config")
    if qc is not None:
        got = {k: qc.get(k) for k in QUANTIZATION_CONFIG}
        if got != QUANTIZATION_CONFIG or raw.get("expert_dtype", qc.get("expert_dtype")) != EXPERT_DTYPE:
            raise CheckpointError(
                f"{path}: unsupported quantization_config {qc} / expert_dtype {raw.get('expert_dtype')!r}; the "
                f"reader knows {QUANTIZATION_CONFIG} with expert_dtype {EXPERT_DTYPE!r}"
            )
        return "fp8"
    return "fp32" if raw.get("torch_dtype", raw.get("dtype")) == "float32" else "bf16"


# ------------------------------------------------------------------------------------------------------
# Writing (synthetic release checkpoints)
# ------------------------------------------------------------------------------------------------------
def encode_release(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """One port tensor in the release layout: quantised weight plus `.scale`, or the plain tensor cast."""
    kind = storage_class(name)
    if kind == FP8:
        q, s = quant.quantize_fp8(tensor)
        return {name: q, scale_name(name): s}
    if kind == FP4:
        q, s = quant.quantize_fp4(tensor)
        return {name: q, scale_name(name): s}
    return {name: tensor if kind == I64 else tensor.to(torch.float32 if kind == F32 else torch.bfloat16)}


def decode_release(name: str, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of `encode_release`: the exact FP32 value of a quantised weight, or the stored tensor."""
    kind = storage_class(name)
    if kind == FP8:
        return quant.dequantize_fp8(stored[name], stored[scale_name(name)])
    if kind == FP4:
        return quant.dequantize_fp4(stored[name], stored[scale_name(name)])
    return stored[name]


# ------------------------------------------------------------------------------------------------------
# Header-only inspection
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


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
        out[name] = TensorHeader(dtype, shape, nbytes)
    return out


def _weight_map(folder: Path) -> dict[str, str]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            return dict(json.loads(index.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from err
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) != 1:
        raise CheckpointError(f"{folder}: no {INDEX_NAME} and {len(singles)} .safetensors files")
    return dict.fromkeys(read_header(singles[0]), singles[0].name)


def check_folder(folder: Path, config: DeepseekV4Config | None = None
                 ) -> tuple[DeepseekV4Config, str, dict[str, str], dict[str, TensorHeader]]:
    """Validate a checkpoint folder from headers alone: every expected tensor present in the shard the
    index names, with the dtype and shape config.json implies, every quantised weight with its scale, no
    unknown tensor, no truncated shard. Returns (config, format, weight map, headers); raises
    CheckpointError naming tensor and shard for the first problems found."""
    folder = Path(folder)
    config = read_config(folder) if config is None else config
    fmt = storage_format(folder)
    weight_map = _weight_map(folder)
    headers: dict[str, TensorHeader] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            example = next(k for k, v in weight_map.items() if v == shard)
            raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing (it holds e.g. {example!r})")
        for name, h in read_header(path).items():
            if weight_map.get(name) != shard:
                where = f"places it in {weight_map[name]!r}" if name in weight_map else "does not list it"
                raise CheckpointError(f"{path}: tensor {name!r} is in this shard but {INDEX_NAME} {where}")
            headers[name] = h
    problems = []
    for name, shard in weight_map.items():
        if name not in headers:
            problems.append(f"{folder / shard}: tensor {name!r} is listed in {INDEX_NAME} but absent from the shard")
    expected = expected_tensors(config, fmt)
    for name, (dtype, shape) in expected.items():
        if name not in weight_map:
            if name.endswith(".scale") and (w := name.removesuffix(".scale") + ".weight") in weight_map:
                problems.append(f"{folder / weight_map[w]}: quantised weight {w!r} has no scale {name!r}")
            else:
                problems.append(f"{folder}: tensor {name!r} ({dtype}{list(shape)}) is missing from the checkpoint")
        elif name in headers and (headers[name].dtype, headers[name].shape) != (dtype, shape):
            h = headers[name]
            problems.append(f"{folder / weight_map[name]}: tensor {name!r} is {h.dtype}{list(h.shape)}, expected "
                            f"{dtype}{list(shape)} for this config.json ({fmt} layout)")
    for name in weight_map:
        if name not in expected:
            problems.append(f"{folder / weight_map[name]}: unknown tensor {name!r} for this config.json ({fmt} layout)")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"{len(problems)} problem(s) in {folder}:\n  " + "\n  ".join(problems[:10]) + more)
    return config, fmt, weight_map, headers


# ------------------------------------------------------------------------------------------------------
# Dry run: counts and projections
# ------------------------------------------------------------------------------------------------------
GROUPS = (
    ("embed / head", r"(embed|head)\.weight"),
    ("routed experts", r".*\.ffn\.experts\..*"),
    ("shared expert", r".*\.ffn\.shared_experts\..*"),
    ("router (gate weight, bias, tid2eid)", r".*\.ffn\.gate\..*"),
    ("indexer", r".*\.attn\.indexer\..*"),
    ("compressor", r".*\.attn\.compressor\..*"),
    ("attention core", r".*\.attn\..*"),
    ("mHC (hc_*)", r"(.*\.)?hc_\w+"),
    ("MTP input projections", r"mtp\.\d+\.[eh]_proj\..*"),
    ("norms", r".*norm\.weight"),
)
PROJECTED_FORMATS = ("native", "bf16", "int8", "int4")


def group_of(name: str) -> str:
    return next(g for g, pattern in GROUPS if re.fullmatch(pattern, name))


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
    unit_fp32_tensor: int  # its largest tensor dequantised to FP32
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
    config, fmt, weight_map, headers = check_folder(folder)
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
        unit_fp32_tensor=units[largest][1],
        peak=peak,
    )


# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------
def iter_state_dict(source: Path | str | CheckpointReader, config: DeepseekV4Config | None = None,
                    prefixes: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (port name, tensor) one at a time, quantised weights dequantised exactly to FP32, other tensors
    as stored. The folder is validated from headers first; `prefixes` (e.g. ["layers.3."]) restricts the
    tensors read, for streaming conversion."""
    if isinstance(source, CheckpointReader):
        reader = source
        config, fmt, weight_map, _ = check_folder(reader.folder, config)
    else:  # header check first: it names the tensor in a truncated shard, safe_open would not
        config, fmt, weight_map, _ = check_folder(Path(source), config)
        reader = CheckpointReader(Path(source))
    wanted = tuple(prefixes) if prefixes is not None else None
    for name in logical_tensors(config):
        if wanted is not None and not name.startswith(wanted):
            continue
        quantised = fmt == "fp8" and storage_class(name) in (FP8, FP4)
        stored = {k: reader.get(k) for k in ((name, scale_name(name)) if quantised else (name,))}
        try:
            tensor = decode_release(name, stored) if quantised else stored[name]
        except ValueError as err:
            raise CheckpointError(f"{reader.folder / weight_map[name]}: tensor {name!r}: {err}") from err
        yield name, tensor


def load_state_dict(source: Path | str | CheckpointReader, config: DeepseekV4Config | None = None
                    ) -> dict[str, torch.Tensor]:
    """The whole state dict of a checkpoint folder (or reader), keyed by port parameter name."""
    return dict(iter_state_dict(source, config))
