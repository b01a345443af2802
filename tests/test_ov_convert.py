"""The OpenVINO IR (deepseek_v4_ov.convert.pieces) against the PyTorch port, in FP32.

Tolerance: |logit difference| <= 1e-4 on logits of magnitude ~5 (both toys). Both sides compute in FP32 and
differ only in summation order (matmuls, softmax over at most ~330 keys, 4-6 layers); measured differences
stay below 1e-5. The failures this must catch are far larger: one indexer pick taken differently moves
logits by ~0.04 (seen on an exact tie before tie-breaking was made identical), a stale state row by ~2.
The CPU plugin runs in bf16 by default here, so every compile sets INFERENCE_PRECISION_HINT=f32.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

from conftest import prompt
from deepseek_v4_ov.convert.pieces import Piece, convert_model, units_of
from deepseek_v4_ov.convert.stateful import GUARD_NAME, INPUT_PREFIX, OUTPUT_PREFIX
from deepseek_v4_ov.export.folder import IR_XML, openvino_config, write_folder
from deepseek_v4_ov.checkpoint.layout import BUNDLED_FILES
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG

TOL = 1e-4
PREFILL_LENGTHS = [*range(1, 141), *range(290, 311)]  # every residue of 4 and of 128, across 128 and 256


def _convert(toy, name: str):
    folder, model = toy(name)
    model = model.float().eval()
    ov_model = convert_model(model)
    compiled = ov.Core().compile_model(ov_model, "CPU", F32_CONFIG)
    return folder, model, ov_model, compiled


@pytest.fixture(scope="module")
def full_ir(toy):
    return _convert(toy, "full")


@pytest.fixture(scope="module")
def seed_ir(toy):
    return _convert(toy, "seed")


def run_chunks(request: ov.InferRequest, ids: torch.Tensor, chunks: list[int]) -> np.ndarray:
    """Reset the state, feed `ids` in consecutive chunks of the given sizes; return all logits `[B, S, V]`."""
    request.reset_state()
    batch, done, logits = ids.shape[0], 0, []
    for size in chunks:
        part = ids[:, done : done + size].numpy()
        done += size
        out = request.infer({
            "input_ids": part,
            "attention_mask": np.ones((batch, done), np.int64),
            "position_ids": np.arange(done - size, done)[None].repeat(batch, 0),
            "beam_idx": np.arange(batch, dtype=np.int32),
        })
        logits.append(out["logits"].copy())
    assert done == ids.shape[1]
    return np.concatenate(logits, 1)


def test_interface(full_ir):
    _, model, ov_model, _ = full_ir
    assert [p.get_any_name() for p in ov_model.inputs] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
    assert [p.get_any_name() for p in ov_model.outputs] == ["logits", GUARD_NAME]
    empty = Piece(model.config, units_of(model.config)).empty_state(1)
    variables = {op.get_variable_id() for op in ov_model.get_ops() if op.get_type_name() == "ReadValue"}
    assert variables == {f"{INPUT_PREFIX}{n}{OUTPUT_PREFIX}{n}" for n in empty}
    assert not any(n.startswith("mtp") for n in empty)


@torch.no_grad()
def test_prefill_every_length(full_ir):
    """One compiled model, state reset per run: batch 1 and 2, every length in PREFILL_LENGTHS. The
    reference is one PyTorch forward over 310 tokens (causal, so its first S rows are the S-token answer)."""
    _, model, _, compiled = full_ir
    ids = prompt(310, batch=2)
    ref = model(ids).logits.numpy()
    request = compiled.create_infer_request()
    worst = {}
    for batch in (1, 2):
        for length in PREFILL_LENGTHS:
            got = run_chunks(request, ids[:batch, :length], [length])
            worst[(batch, length)] = float(np.abs(got - ref[:batch, :length]).max())
    bad = {k: v for k, v in worst.items() if v > TOL}
    assert not bad, f"IR prefill differs from PyTorch beyond {TOL}: {bad}"


@pytest.mark.parametrize("batch", [1, 2])
def test_chunked_prefill_and_decode(full_ir, batch):
    """Any chunking through the stateful IR equals one prefill (and PyTorch)."""
    _, model, _, compiled = full_ir
    ids = prompt(300, batch=batch, seed=2)
    request = compiled.create_infer_request()
    one = run_chunks(request, ids, [300])
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    assert np.abs(one - ref).max() <= TOL
    for chunks in ([37, 263], [127, 1, 1, 3, 128, 40], [290] + [1] * 10, [1] * 20 + [280]):
        got = run_chunks(request, ids, chunks)
        assert np.abs(got - one).max() <= TOL, chunks


def test_second_infer_request(seed_ir):
    """Regression for the CPU plugin's fused state initialisers (see convert/stateful.make_stateful): after one
    request prefilled and decoded, a fresh request must start from an empty state. Also checks that no
    MemoryInput of the compiled graph carries a fused initialiser."""
    _, model, _, compiled = seed_ir
    ids = prompt(320)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    first = compiled.create_infer_request()
    assert np.abs(run_chunks(first, ids, [300] + [1] * 20) - ref).max() <= TOL
    second = compiled.create_infer_request()
    assert np.abs(run_chunks(second, ids[:, :300], [300]) - ref[:, :300]).max() <= TOL

    def kind(op):
        return op.get_rt_info()["layerType"].astype(str)

    fused = [op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
             if kind(op) == "MemoryInput" and any(kind(i.get_source_output().get_node()) != "Broadcast"
                                                  for i in op.inputs())]
    assert not fused


def test_prefill_only(full_ir):
    _, model, _, _ = full_ir
    ov_model = convert_model(model, prefill_only=True)
    assert [p.get_any_name() for p in ov_model.inputs] == ["input_ids", "attention_mask"]
    assert [p.get_any_name() for p in ov_model.outputs] == ["logits"] and not ov_model.get_sinks()
    request = ov.Core().compile_model(ov_model, "CPU", F32_CONFIG).create_infer_request()
    ids = prompt(300, batch=2)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    for batch, length in ((1, 1), (2, 5), (1, 129), (2, 300)):
        got = request.infer({"input_ids": ids[:batch, :length].numpy(),
                             "attention_mask": np.ones((batch, length), np.int64)})["logits"]
        assert np.abs(got - ref[:batch, :length]).max() <= TOL, (batch, length)


# ------------------------------------------------------------------------------------------------------
# optimum-intel
# ------------------------------------------------------------------------------------------------------
GENERATE = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("name", ["seed", "full"])
def test_optimum_intel_generate(request, tmp_path, name):
    """OVModelForCausalLM loads the saved folder as is (trust_remote_code, no registration, no export) and
    its greedy and 2-beam generations from a 300-token prompt equal the PyTorch port's."""
    from optimum.intel import OVModelForCausalLM

    folder, model, ov_model, _ = request.getfixturevalue(f"{name}_ir")
    out = tmp_path / "ir"
    ov.save_model(ov_model, out / IR_XML, compress_to_fp16=False)  # the IR as traced, saved with the one writer
    write_folder(out, folder, model.config, openvino_config("fp32", False, {}, 1, folder, "fp32"), tokenizer=False)
    assert {p.name for p in out.iterdir()} >= {"openvino_model.xml", "openvino_model.bin", "config.json",
                                               "generation_config.json", *BUNDLED_FILES}
    ov_lm = OVModelForCausalLM.from_pretrained(out, trust_remote_code=True, ov_config=F32_CONFIG)
    assert ov_lm.stateful and ov_lm.use_cache
    ids = prompt(300)
    for beams in (1, 2):
        expected = model.generate(ids, num_beams=beams, **GENERATE)[0, 300:]
        got = ov_lm.generate(ids, num_beams=beams, **GENERATE)[0, 300:]
        assert got.tolist() == expected.tolist(), f"num_beams={beams}"
