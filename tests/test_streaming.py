"""Piece-wise export (the default; deepseek_v4_ov/convert/pieces.py + stitch.py): the IR built piece by
piece is the same model as the one-piece export (`--whole`; logits within 1e-5, FP32, prefill and decode,
fp32 and native weights), and the export's peak memory does not grow with the number of layers converted."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import prompt  # noqa: E402
from deepseek_v4_ov import cli  # noqa: E402
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM  # noqa: E402
from deepseek_v4_ov.toys.writer import write_toy  # noqa: E402
from deepseek_v4_ov.toys.presets import PRESETS  # noqa: E402


@pytest.fixture(scope="module")
def full_fp8(tmp_path_factory):
    src = tmp_path_factory.mktemp("stream") / "full-fp8"
    write_toy(src, PRESETS["full"], seed=0, fmt="fp8")
    return src


def _export(src: Path, out: Path, *extra: str) -> Path:
    assert cli.main(["export", "--model", str(src), str(out), "--disable-convert-tokenizer", *extra]) == 0
    return out


def _signature(xml: Path) -> tuple:
    m = ov.Core().read_model(str(xml))
    ops = [op.get_type_name() for op in m.get_ops()]
    return ({p.get_any_name() for p in m.inputs}, [p.get_any_name() for p in m.outputs],
            sorted(v.get_info().variable_id for v in m.get_variables()),
            {t: ops.count(t) for t in ("GroupedMatMul", "MatMul", "ReadValue", "Assign", "TopK")})


@pytest.mark.parametrize("fmt", ["fp32", "native"])
def test_streaming_equals_whole_model(full_fp8, tmp_path, fmt):
    whole = _export(full_fp8, tmp_path / "whole", "--weight-format", fmt, "--whole")
    streamed = _export(full_fp8, tmp_path / "streamed", "--weight-format", fmt)
    assert _signature(whole / "openvino_model.xml") == _signature(streamed / "openvino_model.xml")
    # the .bin is canonical (convert/stitch.py): the same bytes however the model was cut into pieces
    assert (whole / "openvino_model.bin").read_bytes() == (streamed / "openvino_model.bin").read_bytes()
    keys = [json.loads((d / "openvino_config.json").read_text()).keys() for d in (whole, streamed)]
    assert keys[0] == keys[1]
    a, b = OVCausalLM(whole, "CPU", F32_CONFIG), OVCausalLM(streamed, "CPU", F32_CONFIG)
    for batch, length in ((1, 40), (2, 9)):
        ids = prompt(length, batch=batch, seed=length).numpy()
        la, ta = a.greedy(ids, 10)
        lb, tb = b.greedy(ids, 10)
        np.testing.assert_array_equal(ta, tb)
        assert float(np.abs(la - lb).max()) <= 1e-5
        # decode steps after a chunked prefill
        a.reset(), b.reset()
        steps = [(a(c), b(c)) for c in (ids[:, :5], ids[:, 5:], ta[:, :1], ta[:, 1:2])]
        assert max(float(np.abs(x - y).max()) for x, y in steps) <= 1e-5


def _wide(layers: int) -> dict:
    """`full`-like geometry where the routed experts dominate (32 experts of 256x1024: 100 MB FP32 a layer)."""
    preset = copy.deepcopy(PRESETS["full"])
    preset.update(hidden_size=256, moe_intermediate_size=1024, n_routed_experts=32, num_hidden_layers=layers,
                  num_hash_layers=1, num_nextn_predict_layers=0,
                  compress_ratios=[0] + [(4, 128)[i % 2] for i in range(layers - 1)])
    return preset


EXPORT = """
import resource, sys
sys.path.insert(0, {root!r})
from deepseek_v4_ov.export.pipeline import export
export({src!r}, {out!r}, weight_format={fmt!r}, whole={whole}, convert_tokenizer=False, log=lambda l: None)
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak(src: Path, out: Path, fmt: str, streaming: bool) -> int:
    code = EXPORT.format(root=str(ROOT), src=str(src), out=str(out), fmt=fmt, whole=not streaming)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("PEAK")[-1])


@pytest.mark.slow
def test_peak_memory_flat_in_depth(tmp_path):
    """Peak RSS of the streaming export (each in a fresh process) at 2 and 6 layers of a wide toy: the 4
    extra layers add 400 MB of FP32 weights; the streaming peak grows by less than a quarter of that,
    while the whole-model export's grows by more than all of it."""
    peaks = {}
    for layers in (2, 6):
        src = tmp_path / f"wide{layers}"
        write_toy(src, _wide(layers), seed=0, fmt="fp8")
        peaks[("streaming", layers)] = _peak(src, tmp_path / f"s{layers}", "native", True)
        peaks[("whole", layers)] = _peak(src, tmp_path / f"w{layers}", "native", False)
    extra_fp32 = 4 * 32 * 3 * 256 * 1024 * 4  # bytes of the 4 extra layers' routed experts in FP32
    grow_stream = peaks[("streaming", 6)] - peaks[("streaming", 2)]
    grow_whole = peaks[("whole", 6)] - peaks[("whole", 2)]
    print({k: f"{v / 1e6:.0f} MB" for k, v in peaks.items()})
    assert grow_stream < 0.25 * extra_fp32, peaks
    assert grow_whole > extra_fp32, peaks
