"""Official release layout: FP8/FP4 toy round trip, header-only dry run at the real V4-Flash geometry,
and named errors for broken checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepseek_v4_ov import cli
from deepseek_v4_ov.export.plan import RUNTIME_CONTEXT, decode_state_bytes, dry_run, project
from deepseek_v4_ov.checkpoint.layout import INDEX_NAME, CheckpointError, CheckpointReader, read_config
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
from deepseek_v4_ov.checkpoint.release import (
    check_folder,
    expected_tensors,
    iter_state_dict,
    load_state_dict,
    logical_tensors,
)
from deepseek_v4_ov.toys.writer import write_toy
from deepseek_v4_ov.compress.policy import CompressionOptions
from fake_release import write_sparse_release
from deepseek_v4_ov.toys.presets import PRESETS


@pytest.fixture(scope="module")
def fp8_toy(tmp_path_factory):
    """The `full` preset written in the release layout over several shards, with its in-memory model."""
    folder = tmp_path_factory.mktemp("official") / "full-fp8"
    model = write_toy(folder, PRESETS["full"], seed=0, fmt="fp8", max_shard_bytes=150_000)
    return folder, model


@pytest.fixture
def broken(fp8_toy, tmp_path):
    """A private copy of the fp8 toy to damage."""
    folder = tmp_path / "broken"
    shutil.copytree(fp8_toy[0], folder)
    return folder


def shard_of(folder: Path, name: str) -> Path:
    return folder / json.loads((folder / INDEX_NAME).read_text())["weight_map"][name]


# ------------------------------------------------------------------------------------------------------
# Layout and round trip
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["seed", "full"])
def test_inventory_matches_the_port(preset):
    config = DeepseekV4Config(**PRESETS[preset])
    model = DeepseekV4ForCausalLM(config)
    assert logical_tensors(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_fp8_toy_is_written_in_the_release_layout(fp8_toy):
    folder, _ = fp8_toy
    reader = CheckpointReader(folder)
    assert len(set(reader.weight_map.values())) > 1
    expected = expected_tensors(read_config(folder), "fp8")
    assert {n: reader.info(n) for n in reader.names()} == expected
    dtypes = {n: d for n, (d, _) in expected.items()}
    assert dtypes["layers.0.ffn.experts.3.w2.weight"] == "I8"
    assert dtypes["layers.0.ffn.experts.3.w2.scale"] == "F8_E8M0"
    for name in ("layers.2.attn.wq_a", "layers.2.attn.indexer.wq_b", "layers.5.ffn.shared_experts.w2", "mtp.0.e_proj"):
        assert (dtypes[f"{name}.weight"], dtypes[f"{name}.scale"]) == ("F8_E4M3", "F8_E8M0")
    assert dtypes["layers.2.attn.compressor.wkv.weight"] == "BF16" and dtypes["layers.0.ffn.gate.tid2eid"] == "I64"
    assert dtypes["layers.3.ffn.gate.bias"] == "F32" and dtypes["mtp.0.hc_head_fn"] == "F32"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
    assert config["expert_dtype"] == "fp4"


def test_round_trip_gives_identical_weights_and_logits(fp8_toy):
    folder, model = fp8_toy
    state = load_state_dict(folder)
    reference = model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(state[name].to(tensor.dtype), tensor), name
    loaded = DeepseekV4ForCausalLM(read_config(folder)).eval()
    loaded.load_state_dict(state)
    ids = torch.randint(2, 512, (1, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(ids).logits, loaded(ids).logits
    assert want.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("fmt", ["bf16", "fp32"])
def test_plain_formats_load_and_dry_run(tmp_path, fmt):
    model = write_toy(tmp_path / fmt, PRESETS["full"], seed=0, fmt=fmt)
    assert dry_run(tmp_path / fmt).storage_format == fmt
    state = load_state_dict(tmp_path / fmt)
    assert all(torch.equal(state[k].to(v.dtype), v) for k, v in model.state_dict().items())


def test_streaming_by_prefix_reads_one_layer(fp8_toy):
    folder, model = fp8_toy
    layer = dict(iter_state_dict(folder, prefixes=["layers.3."]))
    assert layer and all(n.startswith("layers.3.") for n in layer)
    name = "layers.3.ffn.experts.7.w1.weight"
    assert torch.equal(layer[name], model.state_dict()[name])


# ------------------------------------------------------------------------------------------------------
# Dry run at the real V4-Flash geometry (sparse header-only shards)
# ------------------------------------------------------------------------------------------------------
def test_dry_run_counts_match_the_release(tmp_path):
    write_sparse_release(tmp_path, DeepseekV4Config())
    report = dry_run(tmp_path)
    assert (report.tensors, report.scaled_weights, report.mtp_tensors) == (69_187, 34_167, 1_575)
    assert report.total_bytes == 159_609_485_896 == report.index_total_size
    assert report.shards == 46
    assert report.drafter.describe() == "MTP-1 (base release), tensors per block mtp.0: 1,575"
    assert report.projected["native"] == report.total_bytes - report.mtp_bytes  # the IR has no MTP block
    table = report.format_table()
    assert "69,187" in table and "routed experts" in table and "int4" in table
    assert "drafter: MTP-1 (base release)" in table and "drafter 1,575 tensors" in table


def test_dry_run_projects_size_peak_and_runtime(tmp_path, capsys):
    """At the real geometry: fp32 is the ~1.1 TB the issue names, the default for a release-layout source
    (int4) is ~15% of it, near the release's own codes (native); runtime = the IR's weights + the decode
    state at 32k tokens; the CLI prints the chosen format's three figures (auto -> int4 here)."""
    write_sparse_release(tmp_path, DeepseekV4Config())
    checkpoint = check_folder(tmp_path)
    report = dry_run(checkpoint)
    p = report.projections
    assert 1.10e12 < p["fp32"].ir_bytes < 1.15e12 and p["fp16"].ir_bytes * 2 == pytest.approx(p["fp32"].ir_bytes, 1e-3)
    # int4 (sym g64: 4.25 bits, as FP4 + E8M0) is within 1% of native: its INT8 head saves what native's f16 head costs
    assert abs(p["int4"].ir_bytes / p["native"].ir_bytes - 1) < 0.01 and 1.1 * p["native"].ir_bytes < p["int8"].ir_bytes
    for proj in p.values():
        assert proj.context == RUNTIME_CONTEXT and proj.runtime_bytes == proj.ir_bytes + proj.state_bytes
        assert proj.ir_bytes / 40 < proj.peak_bytes < proj.ir_bytes  # one layer of 43 (+ stored + FP32 scratch)
    assert p["int4"].state_bytes == decode_state_bytes(checkpoint.config, RUNTIME_CONTEXT)
    assert project(checkpoint, "int4", CompressionOptions("int4", ratio=0.5)).ir_bytes > p["int4"].ir_bytes
    assert cli.main(["export", "--model", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"this export: int4: IR weights ~{p['int4'].ir_bytes / 1e9:,.2f} GB" in out
    assert "(--weight-format auto is int4 for this fp8 checkpoint)" in out and "runtime ~" in out


def test_decode_state_matches_the_cache(fp8_toy):
    """`decode_state_bytes` from the config equals the port's cache after a prompt whose length leaves every
    open window one row short of full (383 = 3 mod 4 = 127 mod 128), the largest state of that length."""
    _, model = fp8_toy
    with torch.no_grad():
        cache = model(torch.randint(2, 500, (1, 383))).past_key_values.tensors
    held = sum(t.numel() * t.element_size() for k, t in cache.items() if k.startswith("layers."))
    assert decode_state_bytes(model.config, 383) == held


# ------------------------------------------------------------------------------------------------------
# Broken checkpoints: errors name tensor and shard
# ------------------------------------------------------------------------------------------------------
def assert_names(err: pytest.ExceptionInfo, tensor: str, shard: Path) -> None:
    message = str(err.value)
    assert tensor in message and shard.name in message, message


def test_truncated_shard(broken):
    shard = shard_of(broken, "layers.4.ffn.experts.0.w1.weight")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    with open(shard, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    last = max(header, key=lambda n: header[n]["data_offsets"][1])  # the tensor cut short
    for call in (dry_run, load_state_dict):
        with pytest.raises(CheckpointError, match="truncated") as err:
            call(broken)
        assert_names(err, last, shard)


def test_corrupt_header(broken):
    shard = shard_of(broken, "head.weight")
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\x00garbage!!\xff\xfe"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as err:
        dry_run(broken)
    assert shard.name in str(err.value)


def _rewrite(folder: Path, name: str, new: torch.Tensor | None) -> Path:
    """Replace (or with None drop) one tensor in its shard and the index."""
    shard = shard_of(folder, name)
    tensors = load_file(shard)
    if new is None:
        del tensors[name]
        index = json.loads((folder / INDEX_NAME).read_text())
        del index["weight_map"][name]
        (folder / INDEX_NAME).write_text(json.dumps(index))
    else:
        tensors[name] = new
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def test_missing_scale(broken):
    _rewrite(broken, "layers.1.ffn.experts.5.w3.scale", None)
    shard = shard_of(broken, "layers.1.ffn.experts.5.w3.weight")
    for call in (dry_run, load_state_dict):
        with pytest.raises(CheckpointError, match="has no scale") as err:
            call(broken)
        assert_names(err, "layers.1.ffn.experts.5.w3.weight", shard)


@pytest.mark.parametrize("name,dtype", [
    ("layers.2.attn.wq_a.weight", torch.bfloat16),
    ("layers.2.attn.wq_a.scale", torch.float32),
    ("layers.0.ffn.experts.1.w2.weight", torch.uint8),
    ("layers.3.ffn.gate.bias", torch.bfloat16),
])
def test_wrong_dtype(broken, name, dtype):
    original = load_file(shard_of(broken, name))[name]
    shard = _rewrite(broken, name, original.view(torch.uint8).to(dtype) if original.element_size() == 1
                     else original.to(dtype))
    for call in (dry_run, load_state_dict):
        with pytest.raises(CheckpointError, match="expected") as err:
            call(broken)
        assert_names(err, name, shard)


def test_wrong_shape(broken):
    wrong = torch.zeros(2, 1, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    shard = _rewrite(broken, "layers.2.attn.wq_a.scale", wrong)
    with pytest.raises(CheckpointError, match=r"F8_E8M0\[2, 1\], expected F8_E8M0\[1, 1\]") as err:
        load_state_dict(broken)
    assert_names(err, "layers.2.attn.wq_a.scale", shard)


def test_unknown_and_missing_tensors(broken):
    shard = shard_of(broken, "layers.0.attn.wq_a.weight")
    save_file({**load_file(shard), "layers.0.attn.bogus.weight": torch.zeros(2)}, shard)
    index = json.loads((broken / INDEX_NAME).read_text())
    index["weight_map"]["layers.0.attn.bogus.weight"] = shard.name
    (broken / INDEX_NAME).write_text(json.dumps(index))
    _rewrite(broken, "mtp.0.h_proj.weight", None)
    with pytest.raises(CheckpointError) as err:
        dry_run(broken)
    message = str(err.value)
    assert "unknown tensor 'layers.0.attn.bogus.weight'" in message and shard.name in message
    assert "'mtp.0.h_proj.weight'" in message and "missing" in message
