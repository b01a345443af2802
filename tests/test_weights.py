"""Weights bound straight from the source (compress/weights.py): the routed experts compressed a chunk of
experts at a time give the constants that NNCF gives for the whole traced model, bit for bit (the exact
quantiser for int4/int8/mxfp4, NNCF itself in chunks for --ratio < 1)."""

from __future__ import annotations

import pytest

from deepseek_v4_ov.toys.writer import build_toy_model
import nncf_reference
from deepseek_v4_ov.compress import policy, quantise, weights
from deepseek_v4_ov.compress.policy import CompressionOptions, compress_with, weight_constants
from deepseek_v4_ov.convert.pieces import convert_model, convert_piece, units_of
from deepseek_v4_ov.toys.presets import PRESETS


@pytest.fixture(scope="module")
def model():
    """`seed` cut to two layers (CSA, HCA), with 16 experts of 64x128: more than the 8 the trace uses, so the
    bound IR's router and experts are wider than the traced stand-ins."""
    return build_toy_model({**PRESETS["seed"], "num_hidden_layers": 2, "compress_ratios": [4, 128],
                            "n_routed_experts": 16}, seed=0)


def compressed_constants(ov_model) -> dict[tuple[str, str], list[bytes]]:
    """Every compressed weight constant (values, scales, zero points) by official name and part. f32 and the
    integer index constants a module's ops make (slice bounds, gather indices: `resolve` names them after the
    module, and the whole-model trace and a piece's trace may fold them differently) are not weights."""
    out: dict[tuple[str, str], list[bytes]] = {}
    for wc in weight_constants(ov_model):
        if wc.name is None or wc.node.get_output_element_type(0).get_type_name() in ("f32", "i32", "i64"):
            continue
        out.setdefault((wc.name, wc.part), []).append(wc.node.get_data().tobytes())
    return {k: sorted(v) for k, v in out.items()}


def nncf_whole_model(model, opts: CompressionOptions, monkeypatch):
    """The FP32 IR of the whole model compressed under the policy by NNCF itself."""
    with monkeypatch.context() as m:
        m.setattr(policy, "compress_ops", nncf_reference.compress_ops)
        return compress_with(convert_model(model), opts)


@pytest.mark.parametrize("opts", [CompressionOptions("int4"), CompressionOptions("int4", sym=False, group_size=32),
                                  CompressionOptions("mxfp4"), CompressionOptions("int8")], ids=str)
def test_exact_chunks_equal_whole_model_nncf(model, opts, monkeypatch):
    """The exact quantiser, fed 3 experts at a time, gives NNCF's constants on the whole FP32 model."""
    reference = nncf_whole_model(model, opts, monkeypatch)
    fills = []
    real = weights.QuantisedWeight.fill
    monkeypatch.setattr(weights.QuantisedWeight, "fill", lambda self, start, part: fills.append(len(part))
                        or real(self, start, part))
    monkeypatch.setattr(quantise, "CHUNK_BYTES", 3 * 4 * 64 * 128)  # 16 experts of 64 x 128: 3+3+3+3+3+1
    bound = convert_piece(model.config, units_of(model.config), first_stateful=True)
    weights.bind_weights(bound, weights.ModelWeights(model), opts)
    expert_fills = fills[-2 * 3 * 6:]  # after the piece's other weights (their rows in chunks of the same bytes)
    assert expert_fills == [3, 3, 3, 3, 3, 1] * 2 * 3  # two layers, three projections
    got, want = compressed_constants(bound), compressed_constants(reference)
    assert any("experts" in name for name, _ in want)
    assert got == want


def test_nncf_chunks_equal_whole_model_nncf(model, monkeypatch):
    """fp16 (no quantiser) is still compressed in chunks of experts, concatenated; the constants are the
    whole model's."""
    opts = CompressionOptions("fp16")
    reference = compress_with(convert_model(model), opts)
    calls = []
    real = weights.compress_with
    monkeypatch.setattr(weights, "compress_with", lambda m, o: calls.append(m) or real(m, o))
    monkeypatch.setattr(weights, "SMALL_LAYER_BYTES", 0)  # chunk even a toy's experts:
    monkeypatch.setattr(weights, "CHUNKS_PER_LAYER", 3)  # 16 experts in chunks of 6, 6 and 4
    bound = convert_piece(model.config, units_of(model.config), first_stateful=True)
    weights.bind_weights(bound, weights.ModelWeights(model), opts)
    assert len(calls) == 1 + 2 * 3  # the piece's other weights once, then three chunks per layer
    got, want = compressed_constants(bound), compressed_constants(reference)
    assert any("experts" in name for name, _ in want)
    assert got == want


def test_ir_traced_with_fewer_experts_equals_pytorch(model):
    """The trace runs the router and experts with 8 stand-in experts; bound to the model's 16, the FP32 IR
    gives the port's logits (FP32 summation-order noise, <= 1e-5 observed elsewhere; bound 1e-4)."""
    import numpy as np
    import torch

    from conftest import prompt
    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM

    ids = prompt(150, batch=2)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    runner = OVCausalLM(convert_model(model), "CPU", F32_CONFIG)
    assert float(np.abs(runner(ids.numpy()) - ref).max()) <= 1e-4
