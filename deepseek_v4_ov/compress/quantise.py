"""Data-free weight quantisation computed directly (torch, all cores), bit for bit what NNCF 3.4.0's
`compress_weights` writes, and the decompression subgraph NNCF's OpenVINO backend builds around it.

The arithmetic is NNCF's (`quantization/algorithms/weight_compression/weight_lowering.py` and its OpenVINO
twin `openvino/optimized_functions/models.py`), step for step in float32 with the same IEEE operations:

    int4_sym / int8_sym   s = (|min| >= max ? |min| : -max) / 2^(b-1); s = eps where |s| < eps;
                          q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)             (i4 / i8 codes)
    int4_asym / int8_asym lo = min(0, min), hi = max(0, max); s = (hi - lo) / (2^b - 1); eps as above;
                          z = clamp(0 - round(lo / s), 0, 2^b - 1); q = clamp(round(w / s + z), 0, 2^b - 1)
    mxfp4                 s = max|w| (eps as above) / 6; s = 2^clamp(ceil(log2 s), -127, 127) (E8M0);
                          q = w / s rounded to e2m1
    round = half to even (torch.round, OpenVINO Round, numpy.round); min/max per output row (int8: the
    whole row; int4/mxfp4: groups of `group_size` along the input axis); scales stored as f16 (E8M0 for mxfp4)
    by round to nearest even, as OpenVINO converts a float32 array.

NNCF runs that arithmetic in OpenVINO for weights of at least `NNCF_OPTIMIZED_MIN` elements and in numpy
below; the two agree for the integer modes and differ for mxfp4 in the exponent, both mirrored here
(OpenVINO: eps before the division by 6, `ceil(Log(s) / Log(2))`; numpy: eps after it, `ceil(log2(s))` in
float32: next to a power of two their last-ulp errors move the ceiling, each its own way (measured: of 1,265
values within an ulp or two of 2^-126..2^126, OpenVINO and numpy disagree on 134 and each with the exact
exponent on ~460), so that one step runs through the same OpenVINO ops, on the scales alone). The e2m1 codes
are OpenVINO's Convert in both (NNCF converts its numpy result through OpenVINO): nearest, ties to even,
the sign of zero kept. `tests/test_quantise.py` checks every
mode, group sizes, fallbacks, ties and tiny groups against NNCF byte for byte.

Which scheme a weight gets follows NNCF's rules (`scheme_for`): in 4-bit modes only MatMul / GroupedMatMul
weights take the primary mode, others (an embedding Gather) the backup; a group size that does not divide
the input size is an error, or the weight is left as is (`ignore`), or (`adjust`) the largest power of two
dividing the input size is used if it is at least 32, else the backup mode.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

MODES = ("int4_sym", "int4_asym", "int8_sym", "int8_asym", "mxfp4")
NNCF_OPTIMIZED_MIN = 10_000  # nncf MIN_INPUT_SIZE_FOR_OPTIMIZED_COMPRESSION: OpenVINO arithmetic from here on
MIN_ADJUSTED_GROUP = 32  # nncf AdvancedCompressionParameters.min_adjusted_group_size
# FP32 bytes quantised at once (rows of a weight, experts of a stack): the arithmetic's temporaries are a
# few times this, so a large weight (V4-Flash's head: 2.1 GB in FP32) never costs more than ~1 GB extra
CHUNK_BYTES = 256 << 20
_EPS = float(np.finfo(np.float32).eps)
_MATMULS = ("MatMul", "GroupedMatMul")


@dataclass(frozen=True)
class Scheme:
    """One NNCF compression config: `mode` (MODES) and `group_size` (-1: per output row)."""

    mode: str
    group_size: int = -1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"quantisation mode {self.mode!r}: choose one of {', '.join(MODES)}")

    @property
    def bits(self) -> int:
        return 8 if self.mode.startswith("int8") else 4

    @property
    def asym(self) -> bool:
        return self.mode.endswith("_asym")

    @property
    def code_type(self) -> ov.Type:
        if self.mode == "mxfp4":
            return ov.Type.f4e2m1
        return {(4, True): ov.Type.u4, (4, False): ov.Type.i4, (8, True): ov.Type.u8, (8, False): ov.Type.i8}[
            (self.bits, self.asym)]

    @property
    def scale_type(self) -> ov.Type:
        return ov.Type.f8e8m0 if self.mode == "mxfp4" else ov.Type.f16


def scheme_for(op_type: str, in_features: int, mode: str, group_size: int, fallback: str,
               backup: str | None, name: str = "") -> Scheme | None:
    """The scheme NNCF gives a weight of `op_type` with `in_features` inputs in a `compress_weights(mode,
    group_size, backup_mode=backup, group_size_fallback_mode=fallback, all_layers=True)` call (None: left
    as it is); a group size that does not divide `in_features` under fallback "error" raises ValueError
    naming the weight."""
    backup_scheme = None if backup in (None, "none") else Scheme(backup)
    if mode.startswith("int8"):
        return Scheme(mode)
    if op_type not in _MATMULS:
        return backup_scheme
    if group_size == -1 or in_features % group_size == 0:
        return Scheme(mode, group_size)
    if fallback == "ignore":
        return None
    if fallback == "adjust":
        adjusted = in_features & -in_features
        return Scheme(mode, adjusted) if adjusted >= MIN_ADJUSTED_GROUP else backup_scheme
    raise ValueError(f"--group-size {group_size} does not divide the input size {in_features} of {name or op_type}; "
                     "choose another --group-size or --group-size-fallback adjust/ignore")


@functools.cache
def _exponent_model() -> ov.CompiledModel:
    param = ops.parameter([-1], ov.Type.f32)
    exponent = ops.ceiling(ops.log(param) / ops.log(ops.constant(2.0, ov.Type.f32)))
    return ov.compile_model(ov.Model([exponent], [param]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _ov_exponent(scale: np.ndarray) -> np.ndarray:
    """ceil(Log(s) / Log(2)) by OpenVINO's CPU ops, as NNCF's model computes the MX exponent."""
    return _exponent_model()(scale.reshape(-1))[0].reshape(scale.shape)


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """4-bit e2m1 codes (sign << 3 | magnitude index) of `v` (|v| <= 6) as OpenVINO's Convert makes them:
    the nearest value, ties to the even code, the sign kept (also of a zero). The grid's spacing is 0.5
    below 2 (codes 0..4 = 2|v|), 1 below 4 (codes 4..6 = |v| + 2) and 2 up to 6 (codes 6, 7 = |v|/2 + 4), so
    rounding to it is a half-to-even `round` at that spacing (exact: the scalings are powers of two), and an
    even code is an even rounded value."""
    mag = v.abs()
    code = torch.where(mag < 4, mag.round().add_(2), (mag * 0.5).round_().add_(4))
    code = torch.where(mag < 2, (mag * 2).round_(), code).to(torch.uint8)
    return code | (torch.signbit(v).to(torch.uint8) << 3)


def quantise(weight: torch.Tensor, scheme: Scheme, numpy_rule: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes, f32 scale and zero point (asym) of `weight` (float32, the input axis last) under `scheme`:
    codes [..., groups, group] (per row: [..., inputs]) as int8/uint8 (e2m1: uint8 codes), scale and zero
    point [..., groups, 1] ([..., 1]). `numpy_rule`: NNCF's numpy arithmetic (weights of fewer than
    `NNCF_OPTIMIZED_MIN` elements)."""
    w = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
    if scheme.group_size != -1:
        w = w.reshape(*w.shape[:-1], w.shape[-1] // scheme.group_size, scheme.group_size)
    if scheme.mode == "mxfp4":
        amax = w.abs().amax(-1, keepdim=True)
        if numpy_rule:  # eps after the division, log2
            s = amax / 6.0
            s = torch.where(s < _EPS, torch.full_like(s, _EPS), s)
            exponent = torch.from_numpy(np.ceil(np.log2(s.numpy())))
        else:  # eps before the division, Log / Log(2) in OpenVINO
            s = torch.where(amax < _EPS, torch.full_like(amax, _EPS), amax) / 6.0
            exponent = torch.from_numpy(_ov_exponent(s.numpy()))
        scale = torch.pow(2.0, exponent.clamp(-127, 127))
        return _e2m1_codes(w / scale), scale, None
    mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    if scheme.asym:
        mn, mx = mn.clamp(max=0.0), mx.clamp(min=0.0)
        high = 2 ** scheme.bits - 1
        scale = (mx - mn) / float(high)
        scale = torch.where(scale.abs() < _EPS, torch.full_like(scale, _EPS), scale)
        zero = (0.0 - torch.round(mn / scale)).clamp(0, high)
        q = torch.div(w, scale).add_(zero).round_().clamp_(0, high)  # in place: one temporary of w's size
        return q.to(torch.uint8), scale, zero.to(torch.uint8)
    level = 2 ** (scheme.bits - 1)
    amn = mn.abs()
    scale = torch.where(amn >= mx, amn, -mx) / float(level)
    scale = torch.where(scale.abs() < _EPS, torch.full_like(scale, _EPS), scale)
    return torch.div(w, scale).round_().clamp_(-level, level - 1).to(torch.int8), scale, None


def _packed(values: torch.Tensor, four_bit: bool) -> np.ndarray:
    """Bytes of `values` as OpenVINO stores the element type: 4-bit two per byte, low nibble first."""
    flat = values.reshape(-1).view(torch.uint8)
    if not four_bit:
        return flat.numpy()
    return ((flat[0::2] & 0x0F) | (flat[1::2] << 4)).numpy()  # uint8 shift drops the high nibble's sign bits


class QuantisedWeight:
    """The constants of one weight of shape `shape` (input axis last) under `scheme`, filled a slice of the
    leading axis at a time (`fill`), then built into NNCF's decompression subgraph (`subgraph`)."""

    def __init__(self, shape: tuple[int, ...], scheme: Scheme, numpy_rule: bool | None = None) -> None:
        self.shape, self.scheme = tuple(shape), scheme
        self.numpy_rule = int(np.prod(shape)) < NNCF_OPTIMIZED_MIN if numpy_rule is None else numpy_rule
        g = scheme.group_size
        lead, inputs = self.shape[:-1], self.shape[-1]
        self.code_shape = [*lead, inputs // g, g] if g != -1 else [*lead, inputs]
        self.scale_shape = [*lead, inputs // g, 1] if g != -1 else [*lead, 1]
        self.codes = ov.Tensor(scheme.code_type, ov.Shape(self.code_shape))
        self.scale = ov.Tensor(scheme.scale_type, ov.Shape(self.scale_shape))
        self.zero = ov.Tensor(scheme.code_type, ov.Shape(self.scale_shape)) if scheme.asym else None

    def fill(self, start: int, part: torch.Tensor) -> None:
        """Quantise `part`, rows `start:start + len(part)` of the leading axis, into the constants."""
        codes, scale, zero = quantise(part, self.scheme, self.numpy_rule)
        four = self.scheme.bits == 4
        rows = self.shape[0]
        for tensor, values in ((self.codes, codes), (self.zero, zero)):
            if tensor is None:
                continue
            raw = _packed(values, four)
            dst = np.asarray(tensor.data).view(np.uint8).reshape(-1)
            per_row = dst.size // rows
            dst[start * per_row:start * per_row + raw.size] = raw
        if self.scheme.mode == "mxfp4":
            raw = (torch.frexp(scale).exponent + 126).to(torch.uint8).reshape(-1).numpy()  # 2^e = 0.5 * 2^(e+1)
        else:
            raw = scale.to(torch.float16).reshape(-1).view(torch.uint8).numpy()
        dst = np.asarray(self.scale.data).view(np.uint8).reshape(-1)
        per_row = dst.size // rows
        dst[start * per_row:start * per_row + raw.size] = raw

    def subgraph(self, name: str, port: int, out_type: ov.Type = ov.Type.f32) -> ov.Node:
        """The decompression NNCF's OpenVINO backend inserts for constant `name` on input `port`: codes ->
        Convert f16 (- zero point) * scale (f16) [-> Reshape to the weight's shape] -> Convert `out_type`."""
        codes = ops.constant(self.codes, shared_memory=True)
        codes.set_friendly_name(name)
        value = ops.convert(codes, ov.Type.f16)
        if self.zero is not None:
            zero = ops.constant(self.zero, shared_memory=True)
            zero.set_friendly_name(f"{name}/zero_point")
            value = ops.subtract(value, ops.convert(zero, ov.Type.f16), name=f"{name}/zero_point/subtract")
        scale = ops.constant(self.scale, shared_memory=True)
        scale.set_friendly_name(f"{name}/scale")
        if self.scheme.scale_type != ov.Type.f16:
            scale = ops.convert(scale, ov.Type.f16)
        value = ops.multiply(value, scale, name=f"{name}/fq_weights_{port}")
        if self.scheme.group_size != -1:
            value = ops.reshape(value, ops.constant(np.array(self.shape, dtype=np.int64)), special_zero=False)
        if out_type != ov.Type.f16:
            value = ops.convert(value, out_type, name=f"{name}/fq_weights_{port}/convert")
        return value


# ------------------------------------------------------------------------------------------------------
# A model's weights, as `nncf.compress_weights` does it (data-free, ratio 1)
# ------------------------------------------------------------------------------------------------------
def _weight_input(op: ov.Node) -> tuple[int, ov.Node, int] | None:
    """(port, f32 Constant, input axis) of `op`'s weight as NNCF finds it, or None."""
    kind = op.get_type_name()
    ports = {"MatMul": (1, 0), "GroupedMatMul": (1,), "Gather": (0,)}.get(kind, ())
    for port in ports:
        const = op.input_value(port).get_node()
        if const.get_type_name() != "Constant" or const.get_output_element_type(0) != ov.Type.f32:
            continue
        rank = len(const.get_output_shape(0))
        if kind == "MatMul":
            attrs = op.get_attributes()
            transposed = attrs["transpose_b"] if port == 1 else attrs["transpose_a"]
            axis = (rank - 1 if transposed else rank - 2) if port == 1 else (rank - 2 if transposed else rank - 1)
        else:
            axis = rank - 1
        return port, const, axis
    return None


def compress_ops(ov_model: ov.Model, op_names: set[str], mode: str, group_size: int = -1, fallback: str = "error",
                 backup: str | None = None) -> None:
    """Compress the weights of the ops named `op_names` in place, with the constants and subgraph that
    `nncf.compress_weights(mode, group_size, backup_mode=backup, all_layers=True, ratio=1)` restricted to
    those ops gives (module docstring)."""
    for op in ov_model.get_ordered_ops():
        if op.get_friendly_name() not in op_names:
            continue
        found = _weight_input(op)
        if found is None:
            continue
        port, const, axis = found
        shape = tuple(const.get_output_shape(0))
        name = const.get_friendly_name()
        scheme = scheme_for(op.get_type_name(), shape[axis], mode, group_size, fallback, backup, name)
        if scheme is None:
            continue
        if axis != len(shape) - 1:  # MatMul(transpose_b=False): none in the port's traced graphs
            raise ValueError(f"{name}: weight {list(shape)} with its input axis {axis} not last; the exact "
                             "quantiser takes [..., out, in] weights")
        q = QuantisedWeight(shape, scheme)
        with warnings.catch_warnings():  # the constant's memory, read-only: read, never written
            warnings.simplefilter("ignore", UserWarning)
            value = torch.from_numpy(const.get_data())
        rows = max(1, CHUNK_BYTES // (4 * int(np.prod(shape[1:]))))
        for start in range(0, shape[0], rows):
            q.fill(start, value[start:start + rows])
        op.input(port).replace_source_output(q.subgraph(name, port).output(0))
    ov_model.validate_nodes_and_infer_types()
