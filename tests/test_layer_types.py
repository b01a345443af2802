"""Named layer kinds (`DeepseekV4Config.layer_types`) and the tensor inventory read off the model."""

import json

import pytest

from deepseek_v4_ov.checkpoint.layout import CheckpointReader
from deepseek_v4_ov.checkpoint.release import expected_tensors, logical_tensors
from deepseek_v4_ov.toys.writer import toy_config, write_toy
from deepseek_v4_ov.model.configuration_deepseek_v4 import CSA, HCA, SLIDING, DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
from deepseek_v4_ov.toys.presets import PRESETS

SMALL = {**PRESETS["seed"], "num_hidden_layers": 4, "num_nextn_predict_layers": 1, "compress_ratios": [0, 4, 128, 4, 0]}


def test_layer_types_are_derived_from_the_ratios():
    config = DeepseekV4Config(**SMALL)
    assert config.layer_types == [SLIDING, CSA, HCA, CSA] and config.mtp_layer_types == [SLIDING]
    assert DeepseekV4Config().layer_types[:4] == [SLIDING, SLIDING, CSA, HCA]  # V4-Flash's schedule
    model = DeepseekV4ForCausalLM(config)
    assert [b.layer_type for b in model.layers] == config.layer_types
    assert [(b.attn.compressor is not None, b.attn.indexer is not None) for b in model.layers] == [
        (False, False), (True, True), (True, False), (True, True)]


def test_given_layer_types_are_checked_against_the_ratios():
    assert DeepseekV4Config(**SMALL, layer_types=[SLIDING, CSA, HCA, CSA]).layer_types == [SLIDING, CSA, HCA, CSA]
    with pytest.raises(ValueError, match=r"invalid `layer_types`: layer 2 is 'compressed_sparse_attention', but "
                                         r"compress_ratios\[2\] = 128 makes it 'heavily_compressed_attention'"):
        DeepseekV4Config(**SMALL, layer_types=[SLIDING, CSA, CSA, CSA])
    with pytest.raises(ValueError, match="invalid `layer_types`: has 3 entries, needs num_hidden_layers = 4"):
        DeepseekV4Config(**SMALL, layer_types=[SLIDING, CSA, HCA])


def test_layer_types_round_trip_without_being_saved(tmp_path):
    """config.json keeps the official `compress_ratios` only; `layer_types` comes back from them."""
    config = DeepseekV4Config(**SMALL, layer_types=[SLIDING, CSA, HCA, CSA])
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "layer_types" not in saved and saved["compress_ratios"] == SMALL["compress_ratios"]
    loaded = DeepseekV4Config.from_pretrained(tmp_path)
    assert loaded.layer_types == config.layer_types and loaded.to_dict() == config.to_dict()


@pytest.mark.parametrize("drafter", ["mtp", "dspark"])
def test_inventory_from_the_model_is_what_a_toy_release_holds(tmp_path, drafter):
    """The inventory (the meta-device model's state dict, in its order) with the release's storage layout is
    exactly the name, dtype and shape of every tensor a toy in the release layout holds."""
    config = DeepseekV4Config(**toy_config(PRESETS["seed"], drafter=drafter))
    model = write_toy(tmp_path / "toy", toy_config(PRESETS["seed"], drafter=drafter), seed=0, fmt="fp8")
    assert list(logical_tensors(config).items()) == [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    headers = CheckpointReader(tmp_path / "toy").headers
    assert {name: (h.dtype, tuple(h.shape)) for name, h in headers.items()} == expected_tensors(config, "fp8")
