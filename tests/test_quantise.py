"""The exact quantiser (compress/quantise.py) against NNCF 3.4.0's `compress_weights`, byte for byte: every
mode and group size the CLI offers, groups that fall back, ties, all-zero and tiny groups, weights below
and above NNCF's size switch between its numpy and OpenVINO arithmetic, stacked experts."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import openvino.opset17 as opset17
import pytest
import torch

import nncf_reference
from deepseek_v4_ov.compress import quantise


def _weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Gaussian rows with the hard cases mixed in: values on the release's FP4 grid times powers of two
    (exact ties in w / scale), all-zero groups, groups far below f32 eps (eps scales), groups of f16-subnormal
    scale, positive-only and negative-only rows."""
    gen = np.random.default_rng(seed)
    w = (gen.standard_normal(shape) * 0.02).astype(np.float32)
    flat = w.reshape(-1, shape[-1])
    rows = flat.shape[0]
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    k = max(1, rows // 8)
    flat[:k] = grid[gen.integers(0, 8, (k, shape[-1]))] * np.float32(2.0) ** gen.integers(-9, -3, (k, 1)) \
        * gen.choice([-1, 1], (k, shape[-1])).astype(np.float32)
    flat[k:k + 2, :64] = 0.0
    flat[k + 2, :] *= 1e-7
    flat[k + 3, :] *= 2e-4
    flat[k + 4] = np.abs(flat[k + 4])
    flat[k + 5] = -np.abs(flat[k + 5])
    return w


def _model(weights: dict[str, np.ndarray]) -> ov.Model:
    """One MatMul (2-D weight [O, I], transpose_b) or GroupedMatMul (3-D [E, O, I]) per weight."""
    params, results = [], []
    for name, w in weights.items():
        const = ops.constant(w)
        const.set_friendly_name(name)
        x = ops.parameter([-1, w.shape[-1]], ov.Type.f32)
        params.append(x)
        if w.ndim == 2:
            y = ops.matmul(x, const, False, True, name=f"{name}/op")
        else:
            offsets = ops.parameter([w.shape[0]], ov.Type.i32)
            params.append(offsets)
            y = opset17.grouped_matmul(x, const, offsets)
            y.set_friendly_name(f"{name}/op")
        results.append(ops.result(y))
    return ov.Model(results, params)


def _constants(model: ov.Model) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Constants by name (generated names, e.g. a Reshape's target shape, by their content)."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            value = (op.get_output_element_type(0).get_type_name(), tuple(op.get_output_shape(0)),
                     op.get_data().tobytes())
            name = op.get_friendly_name()
            out[f"{value[:2]}{hash(value[2])}" if name.startswith("Constant_") else name] = value
    return out


def _structure(model: ov.Model) -> list[tuple[str, str, str]]:
    return sorted((op.get_type_name(), "" if op.get_friendly_name().split("_")[0] in ("Constant", op.get_type_name())
                   else op.get_friendly_name(),
                   op.get_output_element_type(0).get_type_name()) for op in model.get_ops())


def _compare(weights: dict[str, np.ndarray], mode: str, group_size: int = -1, fallback: str = "error",
             backup: str = "int8_asym") -> None:
    reference = _model(weights)
    nncf_reference.compress_ops(reference, {f"{n}/op" for n in weights}, mode, group_size, fallback, backup)
    ours = _model(weights)
    quantise.compress_ops(ours, {f"{n}/op" for n in weights}, mode, group_size, fallback, backup)
    want, got = _constants(reference), _constants(ours)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name][:2] == want[name][:2], name
        assert got[name][2] == want[name][2], (name, mode, group_size)
    assert _structure(ours) == _structure(reference)


@pytest.mark.parametrize("mode,group_size", [("int4_sym", 64), ("int4_sym", 128), ("int4_sym", 32), ("int4_sym", -1),
                                             ("int4_asym", 64), ("int4_asym", 32), ("int4_asym", 128),
                                             ("int8_asym", -1), ("int8_sym", -1), ("mxfp4", 32)])
def test_full_width_matrix_equals_nncf(mode, group_size):
    """A 2048 x 4096 matrix (V4-Flash's expert width) and a narrow one below NNCF's size switch."""
    _compare({"big": _weights((2048, 4096), 0), "small": _weights((16, 256), 1)}, mode, group_size)


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "mxfp4", "int8_asym"])
def test_stacked_experts_equal_nncf(mode):
    """GroupedMatMul weights [E, O, I]: groups along the input axis of every expert."""
    _compare({"experts": _weights((6, 96, 512), 2)}, mode, 32 if mode != "int8_asym" else -1)


@pytest.mark.parametrize("fallback,backup", [("adjust", "int8_asym"), ("adjust", "int8_sym"), ("adjust", "none"),
                                             ("ignore", "int8_asym")])
def test_group_fallbacks_equal_nncf(fallback, backup):
    """Input sizes 96 (adjusted to 32), 80 (16 < 32: the backup mode), 192 (64 divides it) under group 64."""
    _compare({"w96": _weights((64, 96), 3), "w80": _weights((128, 80), 4), "w192": _weights((256, 192), 5)},
             "int4_asym", 64, fallback, backup)


def test_error_fallback_names_the_weight():
    model = _model({"w96": _weights((64, 96), 3)})
    with pytest.raises(ValueError, match="--group-size 64 does not divide the input size 96 of w96"):
        quantise.compress_ops(model, {"w96/op"}, "int4_sym", 64)


def test_chunks_fill_the_same_constants():
    """Filling a stack a few experts at a time gives the constants of one call."""
    w = torch.from_numpy(_weights((7, 64, 256), 6))
    for mode in ("int4_sym", "int4_asym", "mxfp4", "int8_sym"):
        scheme = quantise.Scheme(mode, -1 if mode.startswith("int8") else 32)
        whole, parts = (quantise.QuantisedWeight(w.shape, scheme, numpy_rule=False) for _ in range(2))
        whole.fill(0, w)
        for start in range(0, 7, 3):
            parts.fill(start, w[start:start + 3])
        for a, b in ((whole.codes, parts.codes), (whole.scale, parts.scale), (whole.zero, parts.zero)):
            assert a is None and b is None or bytes(a.data.view(np.uint8)) == bytes(b.data.view(np.uint8))
