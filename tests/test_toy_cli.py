"""`deepseek-v4-ov toy OUT --preset NAME --set key=value ...`: config fields of a preset overridden from the
command line (JSON values, else strings), each key and value checked against `DeepseekV4Config` and the
geometry by the config itself; bad input fails with exit code 2, one line naming the field, nothing written."""

from __future__ import annotations

import json

import pytest

from deepseek_v4_ov import cli
from deepseek_v4_ov.toys.writer import parse_set, toy_config
from deepseek_v4_ov.toys.presets import PRESETS


def run_toy(*argv) -> int:
    return cli.main(["toy", *map(str, argv)])


def test_set_overrides_the_preset(tmp_path, capsys):
    """A full-width-style slice of `full`: lists and numbers as JSON; the folder's config.json holds them and
    everything else is the preset's."""
    out = tmp_path / "slice"
    assert run_toy(out, "--preset", "full", "--set", "num_hidden_layers=2", "--set", "num_hash_layers=1",
                   "--set", "compress_ratios=[4,128,0]", "--set", "n_routed_experts=16",
                   "--set", "hidden_act=silu", "--set", "rms_norm_eps=1e-5", "--format", "fp8") == 0
    assert "num_hidden_layers=2" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_hash_layers"], cfg["compress_ratios"], cfg["n_routed_experts"],
            cfg["rms_norm_eps"]) == (2, 1, [4, 128, 0], 16, 1e-5)
    assert cfg["hidden_size"] == PRESETS["full"]["hidden_size"] and "quantization_config" in cfg
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "layers.1.ffn.experts.15.w1.weight" in index and "layers.2.attn.wkv.weight" not in index


def test_mid_full_width_slice_geometry():
    """The issue's example, checked without building its weights: V4-Flash's 256 experts on one CSA layer."""
    cfg = toy_config(PRESETS["mid"], ["n_routed_experts=256", "num_hidden_layers=1", "compress_ratios=[4]"])
    assert (cfg["n_routed_experts"], cfg["num_hidden_layers"], cfg["compress_ratios"]) == (256, 1, [4])
    assert PRESETS["mid"]["n_routed_experts"] == 16  # the preset itself is untouched


def test_values_parse_as_json_else_string():
    assert parse_set("compress_ratios=[0, 4]") == ("compress_ratios", [0, 4])
    assert parse_set("rope_scaling=null") == ("rope_scaling", None)
    assert parse_set("scoring_func=sqrtsoftplus") == ("scoring_func", "sqrtsoftplus")
    assert parse_set("eos_token_id=[1,2]") == ("eos_token_id", [1, 2])


@pytest.mark.parametrize("sets, expected", [
    (["num_hidden_layers=abc"], "--set num_hidden_layers=abc: `num_hidden_layers` must be int, got str 'abc'"),
    (["n_routed_experts=8.5"], "`n_routed_experts` must be int, got float 8.5"),
    (["compress_ratios=[0,\"4\"]"], "`compress_ratios` must be list[int] | None"),
    (["rms_norm_eps=true"], "`rms_norm_eps` must be float, got bool True"),
    (["n_experts=3"], "--set n_experts: unknown config field (did you mean"),
    (["experts_implementation=grouped"], "--set experts_implementation: unknown config field"),
    (["num_hidden_layers"], "--set 'num_hidden_layers': expected KEY=VALUE"),
    (["num_hash_layers=9"], "DeepseekV4Config: invalid `num_hash_layers`: 9 > num_hidden_layers=4"),
    (["compress_ratios=[0,4]"], "invalid `compress_ratios`: has 2 entries, needs num_hidden_layers"),
    (["compress_ratios=[0,0,5,4]"], "invalid `compress_ratios`: unknown ratio(s) [5]"),
    (["num_experts_per_tok=9"], "invalid `num_experts_per_tok`: 9 > n_routed_experts=8"),
])
def test_bad_set_fails_naming_the_field(tmp_path, capsys, sets, expected):
    argv = [x for item in sets for x in ("--set", item)]
    assert run_toy(tmp_path / "out", "--preset", "seed", *argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("deepseek-v4-ov toy: error: ") and expected in err, err
    assert out == "" and not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_later_set_wins_and_existing_output_is_refused_first(tmp_path, capsys):
    assert toy_config(PRESETS["seed"], ["num_hidden_layers=2", "num_hidden_layers=3"])["num_hidden_layers"] == 3
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run_toy(out, "--preset", "seed") == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "precious"
