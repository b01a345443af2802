"""Prefill in the runtime (`runtime/ov_lm.py`): logits only where needed, chunked prompts.

The `full` toy (window 16, ratios [0, 0, 4, 128, 4, 128, 0], one MTP block) exported with its MTP drafter, FP32
IR, f32 hint. A 300-token prompt crosses the window many times, two ratio-128 boundaries and every
residue of 4.

Tolerance: 1e-4 absolute on logits of magnitude ~5 and on every state. A chunked prompt runs the same
operations as one call, on fewer rows at a time, so the kernels sum in a different order (measured 1.8e-6
on `seed`'s last logits with chunks of 48); what this must catch is far larger: an indexer pick taken
differently moves logits by ~0.04, a stale state row by ~2 (tests/test_ov_convert.py measured both).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from conftest import greedy, prompt
from deepseek_v4_ov.convert.stateful import TAPS
from deepseek_v4_ov.export.folder import IR_XML
from deepseek_v4_ov.export.pipeline import export
from deepseek_v4_ov.runtime.generate import Generator
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, LOGITS_TO_KEEP, OVCausalLM, head_matmul
from deepseek_v4_ov.runtime.speculative import MTPDrafter, speculative_greedy

TOL = 1e-4
PROMPT, NEW = 300, 12
CHUNKS = [7, 64, 100, 128]  # odd, the window's multiple, neither, the HCA ratio


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    folder, model = toy("full")
    out = tmp_path_factory.mktemp("prefill") / "full-mtp"
    export(folder, out, log=lambda line: None, drafter="mtp", convert_tokenizer=False, whole=True)
    return model, out


@pytest.fixture(scope="module")
def lm(exported):
    return OVCausalLM(exported[1], config=F32_CONFIG)


def states(lm: OVCausalLM) -> dict[str, np.ndarray]:
    return {s.name: np.array(s.state.data, copy=True) for s in lm.request.query_state()}


def test_the_file_keeps_every_position_and_genai_slices_it(exported):
    """The exported IR returns logits for every position (optimum-intel's forward, perplexity); its first
    output is `logits` straight from the head's MatMul of rank-3 input, the pattern GenAI's
    `find_llm_matmul` looks for before slicing that input to the last position (the same node
    `keep_last_logits` slices)."""
    model = ov.Core().read_model(exported[1] / IR_XML)
    assert LOGITS_TO_KEEP not in {p.get_any_name() for p in model.inputs}
    assert model.output(0).get_any_name() == "logits"
    assert model.output(0).get_partial_shape()[1].is_dynamic
    matmul = head_matmul(model)
    assert model.output(0).get_node().input_value(0).get_node() is matmul
    assert matmul.get_input_partial_shape(0).rank.get_length() == 3


def test_prompt_call_runs_the_head_on_the_last_position(lm):
    """`prefill` returns the last position's logits and the head's output has one row; a plain call (what
    perplexity, parity and verification use) still returns every position, equal to the same rows."""
    ids = prompt(PROMPT, seed=5)
    lm.reset()
    every = lm(ids.numpy())
    assert every.shape == (1, PROMPT, lm.output("logits").shape[-1])
    for chunk in (0, 64):
        lm.reset()
        last, _ = lm.prefill(ids.numpy(), chunk)
        assert last.shape == (1, 1, every.shape[-1])
        assert lm.request.get_tensor("logits").shape == (1, 1, every.shape[-1])  # the head's own output
        assert np.abs(last[0, 0] - every[0, -1]).max() <= TOL
    lm.reset()
    assert np.array_equal(lm(ids.numpy(), keep=3), every[:, -3:])
    with pytest.raises(ValueError, match=r"keep 301: must be in \[1, 300\]"):
        lm(ids.numpy(), keep=PROMPT + 1)
    with pytest.raises(ValueError, match="--prefill-chunk -1: must be >= 0"):
        lm.prefill(ids.numpy(), -1)


def test_chunked_prompt_equals_one_call(lm):
    """Logits, every state and the drafter taps after a prompt fed in chunks equal one call's, and decoding
    continues the same from there."""
    ids = prompt(PROMPT, seed=6).numpy()
    nxt = ids[:, :1]
    lm.reset()
    one, taps = lm.prefill(ids, 0, collect=(TAPS,))
    ref_states, ref_next = states(lm), lm(nxt)
    assert taps[TAPS].shape[:2] == (1, PROMPT)
    for chunk in CHUNKS:
        lm.reset()
        got, got_taps = lm.prefill(ids, chunk, collect=(TAPS,))
        assert np.abs(got - one).max() <= TOL, chunk
        assert np.abs(got_taps[TAPS] - taps[TAPS]).max() <= TOL, chunk
        now = states(lm)
        assert now.keys() == ref_states.keys()
        worst = {name: float(np.abs(now[name] - ref).max(initial=0)) for name, ref in ref_states.items()
                 if now[name].shape != ref.shape or np.abs(now[name] - ref).max(initial=0) > TOL}
        assert not worst, (chunk, worst)
        assert np.abs(lm(nxt) - ref_next).max() <= TOL, chunk


def test_generate_tokens_do_not_depend_on_the_chunk(exported):
    """Greedy tokens through `Generator` equal the PyTorch port's for every chunk size, plain and speculative."""
    model, out = exported
    ids = prompt(PROMPT, seed=7)
    expected = greedy(model, ids, NEW)[0].tolist()
    for chunk in (0, 7):
        gen = Generator(out, prefill_chunk=chunk)
        assert gen.generate(ids[0].tolist(), NEW, stop_at_eos=False).tokens == expected, chunk
    target = OVCausalLM(out, config=F32_CONFIG)
    drafter = MTPDrafter(out / "openvino_drafter_model.xml", ov.Core(), config=F32_CONFIG)
    for chunk in (0, 128):
        assert speculative_greedy(target, drafter, ids.numpy(), NEW, prefill_chunk=chunk)[0] == expected, chunk
    with pytest.raises(ValueError, match="--prefill-chunk -5"):
        Generator(out, prefill_chunk=-5)


def test_optimum_intel_generates_the_same_with_either_head(exported):
    """optimum-intel's own `from_pretrained` + `generate`: the file as is returns every position (its forward
    is what perplexity through optimum-intel reads); `load_ov_causal_lm(last_logits=True)` runs the head on the
    last position only. Both give the port's greedy tokens."""
    import torch

    from deepseek_v4_ov.runtime.ov_load import load_ov_causal_lm

    model, out = exported
    ids = prompt(PROMPT, seed=8)
    expected = greedy(model, ids, NEW)[0].tolist()
    for last, rows in ((False, PROMPT), (True, 1)):
        ov_lm = load_ov_causal_lm(out, last_logits=last, ov_config=F32_CONFIG)
        assert ov_lm.stateful
        got = ov_lm.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, PROMPT:].tolist()
        assert got == expected, last
        with torch.no_grad():
            assert ov_lm(ids).logits.shape[1] == rows
