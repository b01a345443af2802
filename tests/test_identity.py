"""Reusing an export only for what it was made from (`export/identity.py`): the source checkpoint's digest,
the export options and the package version are its key; parity, the demo and the benchmarks reuse a kept
export only while its recorded key is theirs (issue #22)."""

from __future__ import annotations

import json

import pytest
import torch

import deepseek_v4_ov
from deepseek_v4_ov.toys.writer import write_toy
from deepseek_v4_ov.eval import parity
from deepseek_v4_ov.eval.metrics import compare_logits
from deepseek_v4_ov.export import identity, reuse
from deepseek_v4_ov.toys.presets import PRESETS


def test_source_digest_tells_two_toys_of_one_geometry_apart(tmp_path):
    a, b, a2 = tmp_path / "a", tmp_path / "b", tmp_path / "a2"
    for folder, seed in ((a, 0), (b, 1), (a2, 0)):
        write_toy(folder, PRESETS["seed"], seed=seed, fmt="bf16")
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()  # same geometry...
    assert identity.source_digest(a) != identity.source_digest(b)  # ...other weights
    assert identity.source_digest(a) == identity.source_digest(a2)  # the same toy written twice


def test_large_shards_are_sampled(tmp_path, monkeypatch):
    """Above FULL_DIGEST_BYTES a shard is digested by its header and sampled blocks: a change in the data
    inside a sampled block changes the digest."""
    write_toy(tmp_path / "t", PRESETS["seed"], seed=0, fmt="fp32")
    monkeypatch.setattr(identity, "FULL_DIGEST_BYTES", 1024)
    monkeypatch.setattr(identity, "SAMPLE_BYTES", 256)
    before = identity.source_digest(tmp_path / "t")
    shard = sorted((tmp_path / "t").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last sampled block ends at the end of the file
    shard.write_bytes(bytes(data))
    assert identity.source_digest(tmp_path / "t") != before


def test_a_changed_option_or_package_version_re_exports(toy, tmp_path, monkeypatch):
    folder, _ = toy("seed")
    out = tmp_path / "ir"
    quiet = lambda line: None  # noqa: E731
    first, reused = reuse.ensure_export(folder, out, log=quiet, weight_format="int8", convert_tokenizer=False)
    assert not reused
    ov_config = json.loads((out / "openvino_config.json").read_text())
    assert ov_config["export_key"] == first["key"] and ov_config["identity"]["source_digest"] == \
        identity.source_digest(folder)
    assert reuse.ensure_export(folder, out, log=quiet, weight_format="int8", convert_tokenizer=False)[1]
    sym, reused = reuse.ensure_export(folder, out, log=quiet, weight_format="int8", sym=True,
                                         convert_tokenizer=False)
    assert not reused and sym["key"] != first["key"]
    monkeypatch.setattr(deepseek_v4_ov, "__version__", "99.0")
    identity.code_version.cache_clear()
    try:
        bumped, reused = reuse.ensure_export(folder, out, log=quiet, weight_format="int8", sym=True,
                                                convert_tokenizer=False)
        assert not reused and bumped["code_version"].startswith("99.0+")
        assert "package version" in identity.why_stale(sym, bumped)
    finally:
        identity.code_version.cache_clear()


def test_parity_on_one_model_then_another_reports_the_second(toy, tmp_path):
    """The bug of issue #22: the second run reused the first model's IRs and reported their figures."""
    (seed, _), (other, _) = toy("seed"), (tmp_path / "seed1", write_toy(tmp_path / "seed1", PRESETS["seed"], seed=1,
                                                                          fmt="fp32"))
    kw = dict(devices=["CPU"], weight_formats=("fp32",), prompts=2, new_tokens=4, log=lambda line: None)
    first, meta1 = parity.run(seed, tmp_path / "work", **kw)
    second, meta2 = parity.run(other, tmp_path / "work", **kw)
    assert meta1["source_digest"] != meta2["source_digest"]
    assert not meta2["irs"]["fp32"]["reused"] and meta2["irs"]["fp32"]["key"] != meta1["irs"]["fp32"]["key"]
    for cells in (first, second):  # each model's own fp32 IR: exact
        assert cells[0].status == "ok", cells[0].error
        assert cells[0].kl_mean < 1e-9 and cells[0].same_top1 == 1.0 and abs(cells[0].ppl_delta) < 1e-6
    assert second[0].export_key == meta2["irs"]["fp32"]["key"]
    again, meta3 = parity.run(other, tmp_path / "work", **kw)
    assert meta3["irs"]["fp32"]["reused"] and again[0].kl_mean < 1e-9


def test_variants_are_checked_before_any_work():
    assert parity.variant("int4:asym:g32:head-f16") == {"weight_format": "int4", "sym": False, "group_size": 32,
                                                        "head_precision": "f16"}
    with pytest.raises(ValueError, match="int4:g32:fast.*unknown option 'fast'"):
        parity.variant("int4:g32:fast")
    with pytest.raises(ValueError, match="int8:g32.*group-size 32"):
        parity.variant("int8:g32")
    with pytest.raises(ValueError, match="int8:head-int4.*4-bit"):
        parity.variant("int8:head-int4")
    with pytest.raises(ValueError, match="auto: name the format"):
        parity.variant("auto")


def test_pooled_kl_and_same_top1():
    """KL and same-top-1 pool every position of every pair (not a mean of per-prompt means)."""
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(1, n, 16, generator=g) for n in (3, 97)]
    oth = [r.clone() for r in ref]
    oth[0][0, :, :] = -ref[0][0]  # the short prompt: every position flipped
    s = compare_logits(ref, oth)
    assert s.positions == 100 and s.same_top1 == pytest.approx(0.97)
    per_position = [compare_logits(ref[0][0, i], oth[0][0, i]).kl_mean for i in range(3)]
    assert s.kl_mean == pytest.approx(sum(per_position) / 100)
    assert s.kl_p99 > 0 and s.kl_max == pytest.approx(max(per_position))
