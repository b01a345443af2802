"""The one export pipeline: the checkpoint is read once, a piece-wise and a one-piece export give the same
files, and an export killed at any stage leaves OUTPUT as it was."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nncf_reference
from conftest import ROOT
from deepseek_v4_ov.checkpoint import layout
from deepseek_v4_ov.compress import policy
from deepseek_v4_ov.toys.writer import write_toy
from deepseek_v4_ov.export import pipeline
from deepseek_v4_ov.toys.presets import PRESETS


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A two-layer (CSA + HCA) `seed` toy in the release layout, in several shards: small, so that the
    exports below stay cheap (tests/test_streaming.py runs the same checks on `full`)."""
    src = tmp_path_factory.mktemp("pipeline") / "seed2-fp8"
    write_toy(src, {**PRESETS["seed"], "num_hidden_layers": 2, "compress_ratios": [4, 128]}, seed=0, fmt="fp8",
              max_shard_bytes=200_000)
    assert len(list(src.glob("model-*.safetensors"))) > 2
    return src


def test_each_shard_header_is_read_once(sharded, tmp_path, monkeypatch):
    """One export (validation, every piece's weights, native codes) reads every shard header exactly once."""
    reads: dict[str, int] = {}
    real = layout.read_header

    def counting(path):
        reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(path)

    monkeypatch.setattr(layout, "read_header", counting)
    pipeline.export(sharded, tmp_path / "out", weight_format="native", convert_tokenizer=False, log=lambda line: None)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert reads == dict.fromkeys(shards, 1)


def test_piecewise_and_whole_exports_are_the_same(sharded, tmp_path):
    """The default export (a piece per layer) and the one-piece export give a byte-identical .bin and the
    same openvino_config.json keys; the XML differs only in how the pieces are joined (tests/test_streaming.py
    checks that both run the same)."""
    outs = {}
    for whole in (False, True):
        out = tmp_path / f"whole-{whole}"
        pipeline.export(sharded, out, weight_format="int4", whole=whole, convert_tokenizer=False, log=lambda line: None)
        outs[whole] = out
    a, b = ((outs[w] / "openvino_model.bin").read_bytes() for w in (False, True))
    assert len(a) == len(b) and a == b
    keys = [set(json.loads((outs[w] / "openvino_config.json").read_text())) for w in (False, True)]
    assert keys[0] == keys[1] and {"dtype", "ir", "quantization_config", "precision_policy", "source"} <= keys[0]


@pytest.mark.parametrize("fmt,sym", [("int4", None), ("int4", False), ("int8", None), ("mxfp4", None)],
                         ids=["int4_sym", "int4_asym", "int8", "mxfp4"])
def test_bin_identical_to_nncf_export(sharded, tmp_path, monkeypatch, fmt, sym):
    """The export (exact quantiser, two pieces at a time in worker processes) writes byte for byte the .bin
    of the export that compresses everything with NNCF (the routed experts in chunks through NNCF, every
    pass of the policy by `nncf.compress_weights`), one piece after another."""
    new = tmp_path / "exact"
    pipeline.export(sharded, new, weight_format=fmt, sym=sym, jobs=2, convert_tokenizer=False, log=lambda line: None)
    monkeypatch.setattr(policy.CompressionOptions, "data_free", property(lambda self: False))
    monkeypatch.setattr(policy, "compress_ops", nncf_reference.compress_ops)
    old = tmp_path / "nncf"
    pipeline.export(sharded, old, weight_format=fmt, sym=sym, jobs=1, convert_tokenizer=False, log=lambda line: None)
    a, b = ((d / "openvino_model.bin").read_bytes() for d in (new, old))
    assert len(a) == len(b) and a == b


def test_release_source_defaults_to_int4(sharded, tmp_path):
    """With no weight format (`auto`), a release-layout (FP8/FP4) source exports as int4 and records int4;
    the projection is printed after validation and in the summary, and the IR's weights (.bin) come within
    the projection plus the graph's own constants (RoPE tables, masks; ~0.2 MB at this size)."""
    lines: list[str] = []
    result = pipeline.export(sharded, tmp_path / "out", convert_tokenizer=False, log=lines.append)
    ov_config = json.loads((tmp_path / "out" / "openvino_config.json").read_text())
    assert ov_config["dtype"] == "int4" and ov_config["quantization_config"]["mode"] == "int4_sym"
    assert any(line.strip().startswith("projected int4: IR weights ~") and line.endswith(
        "(--weight-format auto is int4 for this fp8 checkpoint)") for line in lines), lines
    assert "  projected int4: IR weights ~" in lines[-1] and "runtime ~" in lines[-1]
    projected = result.projection.ir_bytes
    assert projected < result.files["openvino_model.bin"] < projected + 400_000, (projected, result.files)


KILLED_EXPORT = """
import glob, os, signal, sys
sys.path.insert(0, {root!r})
from deepseek_v4_ov.export import pipeline, folder
stage = {stage!r}
def die():
    children = [c for f in glob.glob("/proc/self/task/*/children") for c in open(f).read().split()]
    print("CHILDREN", *children, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
if stage == "write-midway":  # die inside the write stage: config.json written, the bundled files not yet
    copy = folder.shutil.copyfile
    def dying(src, dst, *a, **k):
        if str(dst).endswith(".py"):
            die()
        return copy(src, dst, *a, **k)
    folder.shutil.copyfile = dying
def log(line):
    print(line, flush=True)
    if stage != "write-midway" and line.startswith(f"[") and f"] {{stage}}:" in line:
        die()
    if stage == "pieces-in-parallel" and line.strip().startswith("piece "):  # one done, others running
        die()
pipeline.export({src!r}, {out!r}, weight_format="int8", overwrite=True, log=log, jobs={jobs})
"""


def _gone(pid: str, seconds: float = 20.0) -> bool:
    """Whether process `pid` has ended (or is a zombie) within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.2)
    return False


def test_killed_export_leaves_output_as_it_was(sharded, tmp_path):
    """SIGKILL at the start of each stage, in the middle of writing the folder, and while pieces convert
    in worker processes (--jobs 2; the workers die with the export): OUTPUT keeps its old content every
    time; the temporary folders left beside it are removed by the next export, which succeeds."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    for stage in ("validate", "convert", "stitch", "write", "write-midway", "pieces-in-parallel"):
        jobs = 2 if stage == "pieces-in-parallel" else 1
        code = KILLED_EXPORT.format(root=str(ROOT), stage=stage, src=str(sharded), out=str(out), jobs=jobs)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (stage, proc.stdout[-2000:] + proc.stderr[-2000:])
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"], stage
        children = next(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("CHILDREN"))
        if stage == "pieces-in-parallel":
            assert len(children) >= 2, proc.stdout[-2000:]  # the workers (and multiprocessing's tracker)
        assert all(_gone(pid) for pid in children), (stage, children)
    assert len(list(tmp_path.iterdir())) > 1  # the killed runs' temporary folders
    pipeline.export(sharded, out, weight_format="int8", overwrite=True, convert_tokenizer=False,
                    log=lambda line: None)
    assert (out / "openvino_model.bin").is_file() and not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
