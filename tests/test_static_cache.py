"""The NPU-style static-shape model (`deepseek_v4_ov.convert.static`): one token per call over fixed-size
masked caches, against the port's full prefill and greedy decode on the `seed` toy (FP32).

Tolerance 1e-4 on logits: the same FP32 arithmetic, summed in another order (ring-buffer slots, masked
columns, dense MoE); observed <= 5e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import greedy, prompt
from deepseek_v4_ov.convert import static as static_cache
from deepseek_v4_ov.runtime.static_lm import StaticCacheLM
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG

PROMPT, NEW = 300, 32
MAX_LEN = PROMPT + NEW


@pytest.fixture(scope="module")
def seed_model(toy):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-token steps are tiny: threads only contend
    yield toy("seed")[1]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(seed_model):
    ids = prompt(PROMPT, seed=5)
    with torch.no_grad():
        return ids, seed_model(ids).logits, greedy(seed_model, ids, NEW)


@pytest.fixture(scope="module")
def ov_model(seed_model):
    return static_cache.convert(seed_model, MAX_LEN)


def test_pytorch_steps_match_full_prefill(seed_model, reference):
    ids, logits, _ = reference
    decoder = static_cache.StaticDecoder(seed_model, MAX_LEN)
    state = decoder.empty_state()
    with torch.no_grad():
        steps = torch.cat([decoder.step(ids[:, t : t + 1], state) for t in range(PROMPT)], 1)
    assert (steps - logits).abs().max() <= 1e-4
    assert int(state["position"]) == PROMPT
    assert all(state[n].shape == s for n, s in decoder.shapes.items())  # nothing grew


def test_ir_is_fully_static(ov_model, seed_model):
    assert not ov_model.is_dynamic()
    assert [p.get_partial_shape().to_shape() for p in ov_model.inputs] == [[1, 1]]
    assert list(ov_model.output("logits").get_shape()) == [1, 1, seed_model.config.vocab_size]
    shapes = static_cache.state_shapes(seed_model, MAX_LEN)
    variables = {op.get_variable_id(): op.get_output_partial_shape(0) for op in ov_model.get_ops()
                 if op.get_type_name() == "ReadValue"}
    assert len(variables) == len(shapes)
    assert all(s.is_static for s in variables.values())
    assert sorted(tuple(s.to_shape()) for s in variables.values()) == sorted(shapes.values())
    assert static_cache.max_len_of(ov_model) == MAX_LEN


def test_ir_on_cpu_matches_port_logits_and_greedy_tokens(ov_model, reference):
    ids, logits, tokens = reference
    runner = StaticCacheLM(ov_model, "CPU", dict(F32_CONFIG))
    for _ in range(2):  # the second run starts from a reset state
        ov_logits, ov_tokens = runner.greedy(ids.numpy(), NEW)
        assert np.abs(ov_logits - logits.numpy()).max() <= 1e-4
        assert ov_tokens.tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="capacity"):
        runner(np.ones((1, 1), dtype=np.int64))  # prompt + 32 new tokens already fill max_len
