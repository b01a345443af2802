"""Conversion in bounded memory (opt-in: `make test PYTEST_ARGS="-m slow -k conversion_memory"`, ~10 min here).

A wide release-layout toy (hidden 1024, 256 routed experts of width 512, 2 layers: 1.61 GB of FP32 experts
per layer) exported with the default command (int4) peaks above a tiny toy's export by less than 0.3x one
layer's FP32 expert bytes, and its compressed constants equal those of NNCF run on the whole in-memory FP32
model."""

from __future__ import annotations

import copy

import pytest

from conversion_memory import export_measured, write_synthetic  # benchmarks/ is on sys.path (conftest)

from deepseek_v4_ov.checkpoint.release import load_model
from deepseek_v4_ov.toys.writer import write_toy
from deepseek_v4_ov.compress.policy import CompressionOptions, compress_with
from deepseek_v4_ov.convert.pieces import convert_model
from deepseek_v4_ov.toys.presets import PRESETS
from test_weights import compressed_constants

import openvino as ov


def wide() -> dict:
    preset = copy.deepcopy(PRESETS["full"])
    preset.update(hidden_size=1024, moe_intermediate_size=512, n_routed_experts=256, num_experts_per_tok=6,
                  num_hidden_layers=2, num_hash_layers=1, num_nextn_predict_layers=0, compress_ratios=[0, 4])
    return preset


@pytest.mark.slow
def test_wide_toy_converts_in_bounded_memory(tmp_path):
    tiny = tmp_path / "tiny"
    write_toy(tiny, PRESETS["seed"], seed=0, fmt="fp8")
    src = tmp_path / "wide"
    write_synthetic(src, wide())
    base = export_measured(tiny, tmp_path / "tiny-ov", "int4")
    got = export_measured(src, tmp_path / "wide-ov", "int4", keep=True)
    layer_expert_bytes = 256 * 3 * 1024 * 512 * 4
    over = (got["peak_rss_gb"] - base["peak_rss_gb"]) * 1e9
    print(f"peak {got['peak_rss_gb']:.2f} GB, tiny {base['peak_rss_gb']:.2f} GB: +{over / 1e9:.2f} GB "
          f"= {over / layer_expert_bytes:.2f}x one layer's FP32 experts")
    assert over < 0.3 * layer_expert_bytes
    reference = compress_with(convert_model(load_model(src)), CompressionOptions("int4"))
    exported = ov.Core().read_model(str(tmp_path / "wide-ov" / "openvino_model.xml"))
    assert compressed_constants(exported) == compressed_constants(reference)
