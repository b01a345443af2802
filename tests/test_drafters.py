"""Every checkpoint layout (issue #14, "Read every layout"): the base release (MTP block `mtp.0`), the
`-DSpark`/`-0731` releases (DSpark stages `mtp.0..2`, detected from the `dspark_*` keys and counted in the
index) and target-only folders. Sparse fakes with the real inventories pass the dry run with the releases'
counts; a drafter that config.json and the index disagree on fails first, naming both; toys are written in
each layout, read back exactly, and load with or without their drafter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from deepseek_v4_ov import cli
from deepseek_v4_ov.export.plan import dry_run
from deepseek_v4_ov.checkpoint.layout import INDEX_NAME, CheckpointError
from deepseek_v4_ov.checkpoint.release import Checkpoint, load_model, load_state_dict, logical_tensors
from deepseek_v4_ov.toys.writer import toy_config, write_toy
from deepseek_v4_ov.model.configuration_deepseek_v4 import DSPARK, MTP, DeepseekV4Config
from fake_release import release_config, write_release, write_sparse_release
from deepseek_v4_ov.toys.presets import PRESETS


@pytest.fixture(scope="module")
def fake_0731(tmp_path_factory) -> Path:
    """A sparse fake of V4-Flash-0731: 48 shards, 72,317 tensors, ~0 bytes of disk."""
    folder = tmp_path_factory.mktemp("v4-flash-0731")
    write_release(folder, "0731")
    return folder


def variant(source: Path, folder: Path, edit_config) -> Path:
    """`source`'s shards (symlinked: sparse files are never copied) and index, with config.json edited."""
    folder.mkdir()
    for path in source.iterdir():
        if path.name != "config.json":
            (folder / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    edit_config(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------------------------------------------
# Sparse fakes of the releases
# ------------------------------------------------------------------------------------------------------
def test_0731_fake_passes_the_dry_run_with_the_release_counts(fake_0731):
    config = json.loads((fake_0731 / "config.json").read_text())
    assert (config["num_hidden_layers"], len(config["compress_ratios"]), config["compress_ratios"][43:]) == (43, 46, [0] * 3)
    assert config["num_nextn_predict_layers"] == 1 and config["dspark_target_layer_ids"] == [40, 41, 42]
    report = dry_run(fake_0731)
    assert (report.tensors, report.shards, report.mtp_tensors) == (72_317, 48, 4_705)
    assert report.total_bytes == 166_878_536_440 == report.index_total_size  # the published size of the 48 shards
    d = report.drafter
    assert (d.kind, d.stage_tensors, d.block_size, d.target_layers, d.markov_rank) == (
        DSPARK, (1_568, 1_565, 1_572), 5, (40, 41, 42), 256)
    native = report.projections["native"]
    assert native.ir_bytes == report.total_bytes - report.mtp_bytes and native.drafter_bytes == report.mtp_bytes
    for p in report.projections.values():
        assert 0 < p.drafter_bytes < p.ir_bytes / 10
    out = report.format_table()  # what `export --dry-run` prints first
    assert ("drafter: DSpark (-DSpark/-0731 releases), 3 stages, block size 5, target layers [40, 41, 42], Markov "
            "rank 256, noise token 128799; tensors per stage mtp.0/mtp.1/mtp.2: 1,568 / 1,565 / 1,572") in out
    assert "target 67,612 tensors" in out and "drafter 4,705 tensors, 10,862,838,300 bytes" in out
    assert re.search(rf"native .* drafter +{native.drafter_bytes / 1e9:,.2f} GB\n", out), out


def test_0731_fake_without_a_stage_fails_naming_both_counts(tmp_path):
    write_sparse_release(tmp_path, release_config("0731"), 48, keep=lambda name: not name.startswith("mtp.2."))
    with pytest.raises(CheckpointError) as err:
        dry_run(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: config.json declares a DSpark drafter of 3 stage(s)"), message
    assert f"{INDEX_NAME} has 3,133 mtp.* tensors in 2 stage(s) mtp.0..mtp.1: a DSpark drafter" in message


def test_0731_config_with_45_compress_ratios_fails(fake_0731, tmp_path):
    folder = variant(fake_0731, tmp_path / "v", lambda c: c.update(compress_ratios=c["compress_ratios"][:45]))
    with pytest.raises(CheckpointError) as err:
        Checkpoint(folder)
    message = str(err.value)
    assert "a DSpark drafter of 2 stage(s) (dspark_* keys; compress_ratios has 45 entries for 43 decoder layers)" in message
    assert "4,705 mtp.* tensors in 3 stage(s) mtp.0..mtp.2" in message and str(folder) in message
    assert "num_nextn_predict_layers is not used for it" in message


@pytest.mark.parametrize("nextn, says", [(1, "an MTP drafter of 1 block(s) (num_nextn_predict_layers=1"),
                                         (0, "no drafter (num_nextn_predict_layers=0")])
def test_dspark_index_without_dspark_keys_fails(fake_0731, tmp_path, nextn, says):
    def edit(config):
        for key in [k for k in config if k.startswith("dspark_")]:
            del config[key]
        config["num_nextn_predict_layers"] = nextn

    with pytest.raises(CheckpointError) as err:
        Checkpoint(variant(fake_0731, tmp_path / "v", edit))
    message = str(err.value)
    assert says in message and "a DSpark drafter (e.g. 'mtp.0.main_proj.weight')" in message
    assert "config.json needs the dspark_* keys" in message


@pytest.mark.parametrize("drafter", [DSPARK, MTP])
def test_declared_drafter_without_mtp_tensors_fails(tmp_path, drafter):
    config = DeepseekV4Config(**toy_config(PRESETS["seed"], drafter=drafter))
    write_sparse_release(tmp_path, config, 2, keep=lambda name: not name.startswith("mtp."))
    with pytest.raises(CheckpointError, match=f"config.json declares an? {'DSpark' if drafter == DSPARK else 'MTP'} "
                                              f"drafter .* but {INDEX_NAME} has no mtp.\\* tensor"):
        dry_run(tmp_path)


def test_unnumbered_stages_fail(tmp_path):
    config = DeepseekV4Config(**toy_config(PRESETS["seed"], drafter="mtp"))
    write_sparse_release(tmp_path, config, 1)
    index = json.loads((tmp_path / INDEX_NAME).read_text())  # rename mtp.0 -> mtp.1 in the index and the header
    index["weight_map"] = {n.replace("mtp.0.", "mtp.1."): s for n, s in index["weight_map"].items()}
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    shard = tmp_path / index["weight_map"]["embed.weight"]
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    shard.write_bytes(data[:8] + data[8:8 + n].replace(b'"mtp.0.', b'"mtp.1.') + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"in 1 stage\(s\) mtp\.1: an MTP drafter"):
        dry_run(tmp_path)


# ------------------------------------------------------------------------------------------------------
# Toys in each layout
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dspark_toy(tmp_path_factory):
    """The `seed` preset as a DSpark checkpoint in the release layout (main_proj FP8, experts FP4)."""
    folder = tmp_path_factory.mktemp("dspark") / "seed-dspark-fp8"
    model = write_toy(folder, toy_config(PRESETS["seed"], drafter="dspark"), seed=0, fmt="fp8", max_shard_bytes=1 << 20)
    return folder, model


def test_dspark_toy_layout_and_exact_round_trip(dspark_toy):
    folder, model = dspark_toy
    config = json.loads((folder / "config.json").read_text())
    assert (config["compress_ratios"], config["num_nextn_predict_layers"], config["dspark_block_size"],
            config["dspark_noise_token_id"], config["dspark_target_layer_ids"], config["dspark_markov_rank"]) == (
        [0, 0, 4, 128, 0, 0, 0], 1, 5, 511, [1, 2, 3], 16)
    checkpoint = Checkpoint(folder)
    assert checkpoint.headers["mtp.0.main_proj.weight"].dtype == "F8_E4M3" and "mtp.0.main_proj.scale" in checkpoint.headers
    assert checkpoint.headers["mtp.2.markov_head.markov_w1.weight"].dtype == "BF16"
    assert logical_tensors(model.config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = load_state_dict(checkpoint)
    assert state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name].to(tensor.dtype), tensor), name
    loaded = load_model(folder)
    ids = torch.randint(2, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(ids), loaded(ids)
        assert torch.equal(want.logits, got.logits)
        bonus = want.logits[:, -1:].argmax(-1)
        a = model.dspark_draft(want.dspark_hidden, bonus, want.past_key_values)
        b = loaded.dspark_draft(got.dspark_hidden, bonus, got.past_key_values)
    assert set(a.keys()) == {"tokens", "logits", "confidence"}
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_target_alone_reads_no_drafter_tensor(dspark_toy, monkeypatch):
    folder, model = dspark_toy
    read = []
    original = Checkpoint.get
    monkeypatch.setattr(Checkpoint, "get", lambda self, name: read.append(name) or original(self, name))
    target = load_model(folder, drafter=False)
    assert read and not [n for n in read if n.startswith("mtp.")]
    assert target.config.drafter is None and target.config.compress_ratios == [0, 0, 4, 128]
    assert not any(n.startswith("mtp.") for n in target.state_dict())
    full = model.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in target.state_dict().items())
    ids = torch.randint(2, 512, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(target(ids).logits, model(ids).logits)
    report = dry_run(Checkpoint(folder).without_drafter())
    assert (report.drafter.kind, report.mtp_tensors) == (None, 0) and "drafter: none" in report.format_table()


def run_toy(*argv) -> int:
    return cli.main(["toy", *map(str, argv)])


@pytest.mark.parametrize("preset, drafter, stages, names", [
    ("seed", "mtp", ["0"], ["mtp.0.e_proj.weight"]),
    ("full", "none", [], []),
    ("full", "dspark", ["0", "1", "2"], ["mtp.0.main_proj.scale", "mtp.2.confidence_head.proj.weight"]),
])
def test_toy_cli_drafter_option(tmp_path, capsys, preset, drafter, stages, names):
    out = tmp_path / "toy"
    assert run_toy(out, "--preset", preset, "--drafter", drafter, "--format", "fp8") == 0
    assert f"--drafter {drafter}" in capsys.readouterr().out
    index = json.loads((out / INDEX_NAME).read_text())["weight_map"]
    assert sorted({n.split(".")[1] for n in index if n.startswith("mtp.")}) == stages
    assert all(n in index for n in names)
    assert dry_run(out).drafter.kind == (None if drafter == "none" else drafter)


def test_toy_drafter_errors_name_the_option(tmp_path, capsys):
    with pytest.raises(ValueError, match="--drafter 'eagle': choose one of mtp, dspark, none"):
        toy_config(PRESETS["seed"], drafter="eagle")
    assert run_toy(tmp_path / "out", "--preset", "trained", "--drafter", "mtp") == 2
    err = capsys.readouterr().err
    assert "--drafter mtp: the trained preset 'trained' has trained weights for the drafters none only" in err
    assert not (tmp_path / "out").exists()
