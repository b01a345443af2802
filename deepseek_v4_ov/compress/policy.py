"""Weight compression of the exported IR (NNCF `compress_weights`) with a precision policy that mirrors
the DeepSeek-V4 release.

Formats (`--weight-format`, named as in `optimum-cli export openvino`):

    fp32   nothing changes
    fp16   weight matrices stored as f16 (f16 constant + Convert, what `compress_to_fp16` writes)
    int8   INT8_ASYM per output channel (INT8_SYM with `sym`)
    int4   INT4_SYM, group 64 by default (narrower inputs: the largest group that divides them); INT4_ASYM
           with `sym=False` (`--asym`). Why: `benchmarks/fp4_requant.py` (error re-quantising the release's
           FP4 experts) and `benchmarks/layer_types.py` forms (the CPU plugin keeps ~6-9 bytes of f32
           scale/zero point per group beside its copy of the weights: private memory per weight byte
           int4 asym g32 ~1.5, sym g64 ~1.13); README "Runtime on a Xeon"
    mxfp4  NNCF MXFP4: e2m1 values with an E8M0 scale per 32 inputs (the OCP microscaling format)

Precision policy. The release itself says which tensors tolerate low precision: it stores the routed
experts in FP4, the attention projections and the shared experts in FP8, and keeps the embedding, the
head, the router, the compressors and the indexer's `weights_proj` in BF16 and the mHC mixing
(`hc_*`), the attention sinks, the compressor `ape` and the router bias in F32. We follow that, one
IR precision per release storage class (`official.storage_class` of the tensor's official name):

    release FP4  routed experts                                  -> the chosen format (`ratio` of them;
                                                                    the rest in the backup precision)
    release FP8  attention wq_a/wq_b/wkv/wo_a/wo_b, indexer wq_b,
                 shared experts, MTP e_proj/h_proj              -> 8 bit: the backup precision in 4-bit
                                                                    formats (int8_asym unless
                                                                    `backup_precision`), the format itself
                                                                    for int8; with `all_layers` the format
    release BF16 compressor wkv/wgate (matrices of >= 1M        -> 8 bit as the FP8 tensors in the
                 elements, `LARGE_BF16`)                           compressed formats, f16 in fp16
    release BF16 embed, router gate, indexer weights_proj       -> f16 (exact for BF16 values in f16's
                                                                    normal range); embed/head take the
                                                                    format with `all_layers`
    release BF16 head                                           -> 8 bit as the FP8 tensors
                                                                    (`head_precision` "int8", the default),
                                                                    or f16 ("f16")
    release F32  hc_*_fn (mHC), attn_sink, ape, gate.bias        -> f32, always
    vectors (norm weights) and computed constants (RoPE tables, masks, shapes) are left as traced (f32).

Why not NNCF's default (everything but embed/head in 4 bit, embed/head in INT8)? The router gate decides
which experts run (a flipped top-k is a different computation, not a small error), the mHC matrices feed
a Sinkhorn normalisation, and the compressor/indexer weights pick which compressed entries attention sees;
all are tiny (~0.3 % of V4-Flash) and the release's authors kept them in 16/32 bit. 4 bit goes where the
release already uses 4 bit; the FP8 tensors get 8 bit. `fp32` leaves everything in f32.
The departures: the compressors' large BF16 matrices take 8 bit (`LARGE_BF16`: read every token, and run as
f32 by the CPU plugin when left in f16), and the LM head (BF16 in the release) is INT8 per output channel by default, because
batch-1 decode reads all of it every token (V4-Flash: 1.06 GB in f16, 0.53 GB in INT8) and the CPU
plugin runs the f16 head at well under the memory bandwidth (`benchmarks/layer_types.py` forms: head
f16 vs int8); `head_precision="f16"` (`--head-precision f16`) keeps the release's 16 bits, and
`head_precision="int4"` (4-bit formats) gives the head the chosen format (the quality table in the README
measures what each costs).

The policy is applied with NNCF `ignored_scope` built from the IR: every weight constant is mapped back
to its official tensor name (`resolve`), from the constant's own name (`self.model.<official name>`) or,
for constants the frontend renamed, from the module path of the op that consumes it
(`__module.model.<module path>/aten::<op>`). `precision_report` reads the element types of the IR's
constants per tensor group, so the policy can be checked on the saved IR.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import openvino as ov

from deepseek_v4_ov.checkpoint.release import BF16, F32, FP4, FP8, I64, group_of, storage_class
from deepseek_v4_ov.compress.formats import (
    DATA_AWARE_FORMATS, FOUR_BIT_FORMATS, INT8, QUANTISED_FORMATS, WeightFormat, format_named,
)
from deepseek_v4_ov.compress.quantise import compress_ops

BACKUP_PRECISIONS = ("none", "int8_sym", "int8_asym")
GROUP_SIZE_FALLBACKS = ("error", "ignore", "adjust")
HEAD_PRECISIONS = ("int8", "f16", "int4")
OTHER = "other constants"

# ops NNCF may compress the weights of; every one outside a pass's target set goes to its ignored_scope
_WEIGHTED_TYPES = {"MatMul", "GroupedMatMul", "Gather", "Convolution", "GroupConvolution", "ConvolutionBackpropData",
                   "GroupConvolutionBackpropData", "Einsum", "EmbeddingBagOffsets", "EmbeddingBagPacked",
                   "EmbeddingSegmentsSum"}
# ops between a weight constant and its consumer (frontend reshapes, NNCF decompression)
_PASS_THROUGH = {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Subtract", "Multiply"}
_LINEAR_LEAVES = {"wq_a", "wq_b", "wkv", "wo_a", "wo_b", "weights_proj", "w1", "w2", "w3", "gate", "head",
                  "e_proj", "h_proj", "wgate"}
_MODULE_RE = re.compile(r"__module\.model(?:\.([\w.]+?))?/aten::(\w+)/")
_SUFFIX_RE = re.compile(r"^(.*?)(?:_compressed)?(?:/(scale|zero_point|second_order_scale|zero_point/subtract))?$")


@dataclass(frozen=True)
class CompressionOptions:
    """What `optimum-cli export openvino` calls the weight-only compression options (data-free ones)."""

    weight_format: str = "fp32"  # a policy format's name (`format`: its record)
    group_size: int | None = None  # None: the format's default_group_size
    sym: bool | None = None  # None: symmetric for int4, asymmetric for int8
    ratio: float | None = None  # None: 1.0
    backup_precision: str | None = None  # None: int8_asym
    all_layers: bool = False
    awq: bool = False  # data-free AWQ (scales from weight magnitudes)
    group_size_fallback: str | None = None  # None: error
    head_precision: str | None = None  # None: int8 (`HEAD_PRECISIONS`; int8/int4/mxfp4 formats only)
    scale_estimation: bool = False  # data-aware (a dataset given to `compress_with`): int4 only

    @property
    def format(self) -> WeightFormat:
        """The record of `weight_format`; ValueError for a name that is not a policy format."""
        return format_named(self.weight_format, policy=True)

    @property
    def symmetric(self) -> bool:
        return self.sym if self.sym is not None else self.format.default_sym

    @property
    def data_free(self) -> bool:
        """Whether NNCF would compress each weight on its own values alone (ratio 1, no AWQ, no scale
        estimation): then the exact quantiser (`compress/quantise.py`) computes what it would; else NNCF ranks
        or scales across weights. A dataset given to `compress_with` also sends it to NNCF (data-aware)."""
        return (self.format.quantised and not self.awq and not self.scale_estimation
                and self.resolved().get("ratio", 1.0) == 1.0)

    @property
    def head_int8(self) -> bool:
        """Whether the LM head is stored in 8 bit (the default of the compressed formats: decode reads the
        whole head every token, see the module docstring)."""
        return self.format.quantised and (self.head_precision or "int8") == "int8"

    def validate(self) -> None:
        """Raise ValueError naming the first option that does not apply to the chosen format."""
        fmt = self.format
        given = {"--group-size": self.group_size is not None, "--ratio": self.ratio is not None,
                 "--backup-precision": self.backup_precision is not None, "--awq": self.awq,
                 "--group-size-fallback": self.group_size_fallback is not None,
                 "--scale-estimation": self.scale_estimation}
        if self.head_precision is not None and self.head_precision not in HEAD_PRECISIONS:
            raise ValueError(f"--head-precision {self.head_precision!r}: choose one of {', '.join(HEAD_PRECISIONS)}")
        if not fmt.quantised:
            given.update({"--sym": self.sym is True, "--asym": self.sym is False, "--all-layers": self.all_layers,
                          "--head-precision": self.head_precision is not None})
            bad = [k for k, v in given.items() if v]
            if bad:
                raise ValueError(f"{bad[0]} applies to {'/'.join(QUANTISED_FORMATS)} weight formats, not {fmt.name}")
            return
        four_bit = f"4-bit weight formats ({', '.join(FOUR_BIT_FORMATS)})"
        if fmt.eight_bit_primary:
            bad = [k for k, v in given.items() if v and k not in ("--group-size", "--head-precision")]
            if bad:
                raise ValueError(f"{bad[0]} applies to {four_bit}, not {fmt.name}")
        else:
            if self.scale_estimation and not fmt.data_aware:
                raise ValueError(f"--scale-estimation applies to {', '.join(DATA_AWARE_FORMATS)}, not {fmt.name}")
            if self.sym and not fmt.integer:
                raise ValueError(f"--sym applies to integer formats; {fmt.name} has no zero point")
        if fmt.group_rule and self.group_size not in (None, fmt.default_group_size):
            raise ValueError(f"--group-size {self.group_size}: {fmt.group_rule}")
        if fmt.eight_bit_primary:
            if self.head_precision == "int4":
                raise ValueError(f"--head-precision int4 applies to {four_bit}, not {fmt.name}")
            return
        if self.awq and not fmt.takes_awq:
            raise ValueError(f"--awq is not supported by NNCF for {fmt.name}")
        if self.group_size is not None and not (self.group_size == -1 or self.group_size > 0):
            raise ValueError(f"--group-size {self.group_size}: a positive group size or -1 (per channel)")
        if self.ratio is not None and not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"--ratio {self.ratio}: must lie in [0, 1]")
        if self.backup_precision is not None and self.backup_precision not in BACKUP_PRECISIONS:
            raise ValueError(f"--backup-precision {self.backup_precision!r}: choose one of "
                             f"{', '.join(BACKUP_PRECISIONS)}")
        if self.group_size_fallback is not None and self.group_size_fallback not in GROUP_SIZE_FALLBACKS:
            raise ValueError(f"--group-size-fallback {self.group_size_fallback!r}: choose one of "
                             f"{', '.join(GROUP_SIZE_FALLBACKS)}")

    def resolved(self) -> dict[str, Any]:
        """The options with defaults filled in, as recorded in openvino_config.json."""
        fmt = self.format
        out: dict[str, Any] = {"weight_format": fmt.name}
        if not fmt.quantised:
            return out
        if fmt.eight_bit_primary:
            return {**out, "mode": fmt.mode(self.symmetric), "group_size": fmt.default_group_size,
                    "all_layers": self.all_layers, "head_precision": self.head_precision or "int8"}
        default_group = self.group_size is None and not fmt.group_rule
        return {**out, "mode": fmt.mode(self.symmetric),
                "group_size": fmt.default_group_size if self.group_size is None else self.group_size,
                "ratio": 1.0 if self.ratio is None else self.ratio,
                "backup_precision": self.backup_precision or "int8_asym",
                "all_layers": self.all_layers, "awq": self.awq, "scale_estimation": self.scale_estimation,
                # the default group narrows where an input is narrower (small toys); a given one is checked
                "group_size_fallback": self.group_size_fallback or ("adjust" if default_group else "error"),
                "head_precision": self.head_precision or "int8"}


# ------------------------------------------------------------------------------------------------------
# Mapping IR constants to official tensor names
# ------------------------------------------------------------------------------------------------------
@dataclass
class WeightConstant:
    node: Any  # the Constant op
    name: str | None  # official tensor name (a representative one where the IR cannot tell wkv from wgate)
    part: str  # weight | scale | zero_point
    consumer: Any | None  # the op that uses the (decompressed) weight: MatMul, Gather, Einsum, ...

    @property
    def group(self) -> str:
        if self.name is None:
            return OTHER
        try:
            return group_of(self.name)
        except StopIteration:
            return OTHER

    @property
    def storage(self) -> str | None:
        return None if self.name is None else storage_class(self.name)


_RESHAPE_ATEN = {"to", "view", "reshape", "t", "transpose", "permute", "unsqueeze", "squeeze", "contiguous",
                 "flatten", "unflatten", "expand", "float", "type_as"}


def _passes(op) -> bool:
    """A reshape/convert step between a weight and its real consumer: a frontend reshape of the weight
    or an NNCF/FP16 decompression step (not an elementwise op of the model, e.g. a norm's Multiply)."""
    if op.get_type_name() not in _PASS_THROUGH:
        return False
    m = _MODULE_RE.match(op.get_friendly_name())
    return m is None or m.group(2) in _RESHAPE_ATEN


def _consumer(node, depth: int = 8):
    """The first op after `node` that is not a reshape/convert/decompression step."""
    op = node
    for _ in range(depth):
        targets = list(op.output(0).get_target_inputs())
        if not targets:
            return None
        nxt = targets[0].get_node()
        if not _passes(nxt):
            return nxt
        op = nxt
    return None


def _aten_op(consumer) -> str | None:
    if consumer is None:
        return None
    m = _MODULE_RE.match(consumer.get_friendly_name())
    if m and m.group(2) not in _RESHAPE_ATEN:
        return m.group(2)
    by_type = {"MatMul": "linear", "GroupedMatMul": "linear", "Gather": "index", "Einsum": "einsum", "Multiply": "mul"}
    return by_type.get(consumer.get_type_name())


def _from_module(path: str, op: str, const_shape: tuple[int, ...]) -> str | None:
    """Representative official name of a weight used by `aten::<op>` inside module `path`."""
    leaf = path.rsplit(".", 1)[-1] if path else ""
    matrix = len([d for d in const_shape if d != 1]) >= 2
    if op in ("linear", "matmul", "mm", "bmm", "einsum", "_grouped_mm") and matrix:  # _grouped_mm: MoE grouped form
        if leaf in _LINEAR_LEAVES:
            return f"{path}.weight"
        if leaf == "compressor":
            return f"{path}.wkv.weight"
        if leaf == "embed":
            return "embed.weight"
        if re.fullmatch(r"(layers|mtp)\.\d+", path):
            return f"{path}.hc_attn_fn"
        if path == "":
            return "hc_head_fn"
        m = re.fullmatch(r"((?:layers|mtp)\.\d+\.ffn)(\.experts(\.\d+)?)?", path)
        # one expert, or the routed experts stacked [E, O, I] ([E, O, groups, group size] once group-quantised)
        if m and (m.group(3) or len(const_shape) >= 3):
            return f"{m.group(1)}.experts.{(m.group(3) or '.0')[1:]}.w1.weight"
        return None
    if op in ("embedding",) and leaf == "embed":
        return "embed.weight"
    if op in ("index", "index_select") and leaf == "compressor":
        return f"{path}.ape"
    if op in ("mul", "add") and leaf.endswith("norm"):
        return f"{path}.weight"
    return None


def row_block_name(name: str, start: int, stop: int) -> str:
    """The constant name of rows `start:stop` of weight `name` held as a weight of its own (wo_a's groups,
    one linear each); `resolve` reads it as `name`."""
    return f"{name}[{start}:{stop}]"


def resolve(const) -> WeightConstant:
    """Official name and part of one IR Constant (name None: not a model weight, e.g. a RoPE table)."""
    friendly = const.get_friendly_name()
    base, suffix = _SUFFIX_RE.match(friendly).groups()
    part = {"scale": "scale", "second_order_scale": "scale"}.get(suffix or "", "zero_point" if suffix else "weight")
    consumer = _consumer(const)
    m = re.match(r"self\.(?:model\.)?(.+?)(?:\[\d+:\d+\])?$", base)  # [a:b]: a block of rows (weights.py)
    if m:
        return WeightConstant(const, m.group(1), part, consumer)
    shape = tuple(const.get_output_partial_shape(0).to_shape())
    own = _MODULE_RE.match(base)  # a constant the frontend named after the op that made it (aten::to)
    used = _MODULE_RE.match(consumer.get_friendly_name()) if consumer is not None else None
    module = own or used
    op = _aten_op(consumer)
    if module is not None and op is not None:
        return WeightConstant(const, _from_module(module.group(1) or "", op, shape), part, consumer)
    return WeightConstant(const, None, part, consumer)


def weight_constants(ov_model: ov.Model) -> list[WeightConstant]:
    return [resolve(op) for op in ov_model.get_ops() if op.get_type_name() == "Constant"]


def _weighted_op(wc: WeightConstant):
    """The op NNCF would treat as the owner of this weight (MatMul / Gather / ...), or None."""
    op = wc.consumer
    return op if op is not None and op.get_type_name() in _WEIGHTED_TYPES else None


# ------------------------------------------------------------------------------------------------------
# Compression
# ------------------------------------------------------------------------------------------------------
PRIMARY, EIGHT_BIT, HALF, FULL = "primary", "8-bit", "f16", "f32"


LARGE_BF16 = 1 << 20
"""A BF16-class matrix of at least this many elements (the compressors' wkv/wgate, 4.2M and 1.0M at V4-Flash
widths) is stored in 8 bit by the compressed formats: the CPU plugin runs an f16 matrix outside a compressed
FullyConnected as f32, i.e. 4x its INT8 bytes read on every token. The embedding (a row lookup, read one row
per token) and the router gate (its top-k decides which experts run; 256 x 4096) keep f16."""


def target_of(name: str, opts: CompressionOptions, elements: int) -> str:
    """Where the policy puts a weight matrix with official name `name` of `elements` elements (before
    `ratio`)."""
    kind = storage_class(name)
    if kind == FP4:
        return PRIMARY
    eight = PRIMARY if opts.format.eight_bit_primary else EIGHT_BIT
    if kind == FP8:
        return PRIMARY if opts.all_layers else eight
    if kind == BF16 and name in ("embed.weight", "head.weight") and opts.all_layers:
        return PRIMARY
    if name == "head.weight" and opts.head_precision == "int4":
        return PRIMARY  # validate() allows it for the 4-bit formats only
    if name == "head.weight" and opts.head_int8:
        return eight
    if (kind == BF16 and elements >= LARGE_BF16 and opts.format.quantised
            and name not in ("embed.weight", "head.weight") and not name.endswith(".ffn.gate.weight")):
        return eight
    if kind == BF16:
        return HALF
    return FULL  # F32 class (hc_*, sinks, ape, gate.bias) and I64 tables


def plan(ov_model: ov.Model, opts: CompressionOptions) -> dict[str, list[str]]:
    """Names of the weighted ops per policy target (primary / 8-bit / f16 / f32 / unknown)."""
    out: dict[str, list[str]] = {PRIMARY: [], EIGHT_BIT: [], HALF: [], FULL: [], "unknown": []}
    seen = set()
    for wc in weight_constants(ov_model):
        op = _weighted_op(wc)
        if op is None or wc.part != "weight" or op.get_friendly_name() in seen:
            continue
        if wc.node.get_output_element_type(0) not in (ov.Type.f32, ov.Type.f16, ov.Type.bf16):
            continue
        seen.add(op.get_friendly_name())
        elements = math.prod(wc.node.get_output_partial_shape(0).to_shape())
        out["unknown" if wc.name is None else target_of(wc.name, opts, elements)].append(op.get_friendly_name())
    return out


def _ignored_all_but(ov_model: ov.Model, keep: set[str]):
    import nncf

    names = [op.get_friendly_name() for op in ov_model.get_ops()
             if op.get_type_name() in _WEIGHTED_TYPES and op.get_friendly_name() not in keep]
    return nncf.IgnoredScope(names=names, validate=False)


def compress(ov_model: ov.Model, weight_format: str = "fp32", group_size: int | None = None,
             sym: bool | None = None,
             ratio: float | None = None, backup_precision: str | None = None, all_layers: bool = False,
             awq: bool = False, group_size_fallback: str | None = None, head_precision: str | None = None,
             verbose: bool = False) -> ov.Model:
    """Compress `ov_model` in place (and return it) following the module's precision policy."""
    opts = CompressionOptions(weight_format, group_size, sym, ratio, backup_precision, all_layers, awq,
                              group_size_fallback, head_precision)
    return compress_with(ov_model, opts, verbose)


def compress_with(ov_model: ov.Model, opts: CompressionOptions, verbose: bool = False,
                  dataset: list[dict] | None = None) -> ov.Model:
    """Compress `ov_model` in place (and return it) as `opts` say, under the module's precision policy;
    `dataset` (inputs of `ov_model`, one dict per sample): NNCF's data-aware 4-bit compression on them
    (AWQ with `opts.awq`, scale estimation with `opts.scale_estimation`; `compress/calibrate.py`)."""
    opts.validate()
    if opts.scale_estimation and dataset is None:
        raise ValueError("--scale-estimation is data-aware: it needs --dataset")
    fmt = opts.format
    if not fmt.compressed:
        return ov_model
    if fmt.quantised:
        # data-free (ratio 1, no AWQ, no scale estimation, no dataset): the exact quantiser, NNCF's constants
        # computed directly; else NNCF
        r = opts.resolved()
        targets = plan(ov_model, opts)
        if targets[PRIMARY] and opts.data_free and dataset is None:
            compress_ops(ov_model, set(targets[PRIMARY]), r["mode"], r.get("group_size", -1),
                         r.get("group_size_fallback", "error"), r.get("backup_precision"))
        elif targets[PRIMARY]:
            ov_model = _nncf_primary(ov_model, opts, set(targets[PRIMARY]), verbose, dataset)
        backup = r.get("backup_precision", "none")
        if targets[EIGHT_BIT] and backup != "none":  # per channel: always data-free
            compress_ops(ov_model, set(targets[EIGHT_BIT]), backup)
    _to_f16(ov_model)
    return ov_model


def _nncf_primary(ov_model: ov.Model, opts: CompressionOptions, ops: set[str], verbose: bool,
                  dataset: list[dict] | None = None) -> ov.Model:
    """NNCF's `compress_weights` on the ops `ops` (the primary target) where it ranks or scales weights
    against each other (`--ratio` < 1, `--awq`, `--scale-estimation`) or compresses on `dataset` (inputs of
    `ov_model`, one dict per sample: data-aware); any format, so that tests can run the policy on NNCF alone."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    if not verbose:
        nncf.set_log_level(40)  # NNCF's per-run tables; the exporter prints its own progress
    # NNCF's progress bar (rich, on stdout), drawn once per call: an export makes several calls per piece
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    r = opts.resolved()
    kwargs: dict[str, Any] = {}
    if not opts.format.eight_bit_primary:  # NNCF's INT8 modes take none of these (per channel, no ratio)
        kwargs = {
            "all_layers": True,  # embed/head are placed by the policy, not by NNCF
            "ratio": r["ratio"], "group_size": r["group_size"],
            "backup_mode": nncf.BackupMode(r["backup_precision"]),
            "awq": opts.awq or None,
            "scale_estimation": opts.scale_estimation or None,
            "advanced_parameters": AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode(r["group_size_fallback"])),
        }
        if dataset is not None:
            kwargs.update(dataset=nncf.Dataset(dataset), subset_size=len(dataset))
    try:
        with quiet:
            return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode(r["mode"]),
                                         ignored_scope=_ignored_all_but(ov_model, ops), **kwargs)
    except nncf.errors.InvalidGroupSizeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"--group-size {r['group_size']}: {first[0]} {first[-1].strip()}") from err


def _to_f16(ov_model: ov.Model) -> None:
    """Store every still-f32 weight matrix of release class FP4/FP8/BF16 as f16 + a decompression Convert
    (OpenVINO's own FP16 compression, applied to these constants only; f32-class tensors, vectors and
    computed constants are untouched)."""
    from openvino._offline_transformations import compress_model_transformation

    chosen = []
    for wc in weight_constants(ov_model):
        if wc.part != "weight" or wc.name is None or wc.node.get_output_element_type(0) != ov.Type.f32:
            continue
        shape = tuple(wc.node.get_output_partial_shape(0).to_shape())
        if len([d for d in shape if d != 1]) < 2 or storage_class(wc.name) not in (FP4, FP8, BF16):
            continue
        chosen.append(wc.node)
    if not chosen:
        return
    import openvino.opset13 as ops

    copies = [ops.constant(c.get_data(), name=c.get_friendly_name()) for c in chosen]
    tmp = ov.Model([ops.result(c) for c in copies], [])
    compress_model_transformation(tmp)  # Constant f16 -> Convert f32 marked as decompression
    for const, result in zip(chosen, tmp.get_results()):
        src = result.input_value(0)
        for target in list(const.output(0).get_target_inputs()):
            target.replace_source_output(src)
    ov_model.validate_nodes_and_infer_types()


def _bits_per_element(target: str, opts: CompressionOptions, in_features: int) -> float:
    """Storage bits per weight element of a [*, in_features] matrix placed at `target` (scales and zero
    points included: f16 scales, u4/u8 zero points, E8M0 MX scales)."""
    r = opts.resolved()
    fmt = opts.format
    if target == FULL:
        return 32.0
    if not fmt.quantised:
        return float(fmt.bits)
    if target == HALF:
        return 16.0

    def eight(mode: str) -> float:
        return INT8.stored_bits(mode == "int8_sym", in_features)

    if target == EIGHT_BIT:
        backup = r.get("backup_precision", "int8_asym")
        return 16.0 if backup == "none" else eight(backup)
    if fmt.eight_bit_primary:
        return fmt.stored_bits(opts.symmetric, in_features)
    g = in_features if r["group_size"] == -1 else r["group_size"]
    four = fmt.stored_bits(opts.symmetric, g)
    backup = r["backup_precision"]
    rest = 16.0 if backup == "none" else eight(backup)
    return r["ratio"] * four + (1 - r["ratio"]) * rest


def theoretical_bytes(config, opts: CompressionOptions, include_mtp: bool = False,
                      key: Callable[[str], Hashable] = group_of) -> dict[Hashable, float]:
    """Bytes per tensor group (or per `key(name)`) of the weights alone under the policy (what `.bin` would
    hold with no graph constants): 2-D weights by their target precision, vectors f32, I64 tables 8 bytes."""
    from deepseek_v4_ov.checkpoint.release import logical_tensors

    out: dict[Hashable, float] = {}
    for name, shape in logical_tensors(config).items():
        if name.startswith("mtp.") and not include_mtp:
            continue
        n = math.prod(shape)
        if storage_class(name) == I64:
            bits = 64.0
        elif len(shape) == 2 and name.endswith(".weight"):
            bits = _bits_per_element(target_of(name, opts, n), opts, shape[1])
        else:
            bits = 32.0
        group = key(name)
        out[group] = out.get(group, 0.0) + n * bits / 8
    return out


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------
@dataclass
class GroupPrecision:
    weights: dict[str, int] = field(default_factory=dict)  # element type -> elements of weight values
    scales: dict[str, int] = field(default_factory=dict)  # scales and zero points
    nbytes: int = 0
    group_sizes: set[int] = field(default_factory=set)  # quantisation groups seen (-1: per channel)

    def describe(self) -> str:
        w = ", ".join(f"{t} {n:,}" for t, n in sorted(self.weights.items(), key=lambda kv: -kv[1]))
        extra = ""
        if self.scales:
            gs = ", ".join("per channel" if g == -1 else f"group {g}" for g in sorted(self.group_sizes)) or "-"
            extra = f" + scales/zp {', '.join(f'{t} {n:,}' for t, n in sorted(self.scales.items()))} ({gs})"
        return f"{w}{extra}"

    def add(self, other: GroupPrecision) -> None:
        """Accumulate another part's figures (the pieces of one export)."""
        for mine, theirs in ((self.weights, other.weights), (self.scales, other.scales)):
            for t, n in theirs.items():
                mine[t] = mine.get(t, 0) + n
        self.nbytes += other.nbytes
        self.group_sizes |= other.group_sizes


def _nbytes(node) -> int:
    shape = node.get_output_partial_shape(0).to_shape()
    return (int(np.prod(shape, dtype=np.int64)) * node.get_output_element_type(0).bitwidth + 7) // 8


def precision_report(ov_model: ov.Model) -> dict[str, GroupPrecision]:
    """Per tensor group (the dry run's groups, plus 'other constants'): element types of the weight
    constants as stored in the IR, their scales/zero points, bytes, and quantisation group sizes."""
    out: dict[str, GroupPrecision] = {}
    for wc in weight_constants(ov_model):
        group = wc.group
        g = out.setdefault(group, GroupPrecision())
        node = wc.node
        t = node.get_output_element_type(0).get_type_name()
        shape = tuple(node.get_output_partial_shape(0).to_shape())
        n = int(np.prod(shape, dtype=np.int64))
        g.nbytes += _nbytes(node)
        if wc.part == "weight":
            g.weights[t] = g.weights.get(t, 0) + n
            if node.get_output_element_type(0).bitwidth <= 8 and group != OTHER and len(shape) >= 2:
                # one more axis than the matrix's own ([O, I], or [E, O, I] under a GroupedMatMul): grouped
                stacked = wc.consumer is not None and (wc.consumer.get_type_name() == "GroupedMatMul"
                                                       or "aten::_grouped_mm" in wc.consumer.get_friendly_name())
                base = 3 if stacked else 2
                g.group_sizes.add(shape[-1] if len(shape) == base + 1 else -1)
        else:
            g.scales[t] = g.scales.get(t, 0) + n
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == OTHER, -kv[1].nbytes)))


def report_dict(report: dict[str, GroupPrecision]) -> dict[str, Any]:
    return {g: {**asdict(p), "group_sizes": sorted(p.group_sizes)} for g, p in report.items()}


def format_report(report: dict[str, GroupPrecision]) -> str:
    width = max(len(g) for g in report)
    return "\n".join(f"  {g:<{width}}  {p.nbytes / 1e6:8.3f} MB  {p.describe()}" for g, p in report.items())


__all__ = ["BACKUP_PRECISIONS", "GROUP_SIZE_FALLBACKS", "CompressionOptions", "compress",
           "compress_with", "plan", "precision_report", "format_report", "report_dict", "resolve",
           "weight_constants", "target_of", "theoretical_bytes", "F32", "row_block_name"]
