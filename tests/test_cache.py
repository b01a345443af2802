"""The tensor cache: prefill + one-token decode, chunked prefill, batch rows, state sizes, resets.

Tolerance 1e-4 (FP32): incremental and full computation add the same terms in different groupings
(window concatenation, pooled windows split across calls); observed gaps are ~5e-6 on logits ~5.
The `full` preset has window 16, so prompts of 300+ cross the window, 75 CSA windows and two HCA
(ratio 128) boundaries, and the indexer (top-8) really selects.
"""

import pytest
import torch

from conftest import greedy, prompt

TOL = 1e-4


@pytest.fixture(scope="module")
def full(toy):
    return toy("full")[1]


@pytest.fixture(scope="module")
def reference_logits(full):
    ids = prompt(310)
    with torch.no_grad():
        return ids, full(ids).logits


@pytest.mark.parametrize("prefill", [1, 5, 130])
def test_decode_matches_full_recompute(full, reference_logits, prefill):
    ids, expected = reference_logits
    with torch.no_grad():
        out = full(ids[:, :prefill])
        cache, steps = out.past_key_values, [out.logits]
        for t in range(prefill, ids.shape[1]):
            steps.append(full(ids[:, t : t + 1], past_key_values=cache).logits)
    got = torch.cat(steps, 1)
    per_pos = (got - expected).abs().amax(-1)[0]
    assert per_pos.max() <= TOL, f"first bad position {int((per_pos > TOL).nonzero()[0])}, max {per_pos.max():.3g}"


@pytest.mark.parametrize("splits", [(37, 273), (3, 124, 1, 182), (128, 128, 54), (255, 1, 1, 53)])
def test_chunked_prefill_matches_one_prefill(full, reference_logits, splits):
    ids, expected = reference_logits
    assert sum(splits) == ids.shape[1]
    with torch.no_grad():
        cache, parts, start = None, [], 0
        for n in splits:
            out = full(ids[:, start : start + n], past_key_values=cache)
            cache, start = out.past_key_values, start + n
            parts.append(out.logits)
    assert (torch.cat(parts, 1) - expected).abs().max() <= TOL


def test_state_grows_as_the_architecture_intends(full):
    cfg = full.config
    with torch.no_grad():
        cache = full(prompt(301)).past_key_values
    shapes = {k: tuple(v.shape) for k, v in cache.tensors.items()}
    assert cache.tensors["length"].tolist() == [301]
    for i, ratio in enumerate(cfg.layer_ratios):
        p = f"layers.{i}."
        assert shapes[p + "window"] == (1, cfg.sliding_window - 1, cfg.head_dim)
        if ratio:
            assert shapes[p + "entries"] == (1, 301 // ratio, cfg.head_dim)
            assert shapes[p + "pending_kv"][1] == 301 % ratio
        if ratio == 4:
            assert shapes[p + "index_keys"] == (1, 301 // 4, cfg.index_head_dim)
            assert shapes[p + "prev_kv"] == (1, 4, cfg.head_dim)
    assert all(v.dtype in (torch.float32, torch.int64) for v in cache.tensors.values())


def test_batch_rows_equal_single_rows(full):
    ids = prompt(300, batch=2, seed=7)
    assert not torch.equal(ids[0], ids[1])
    with torch.no_grad():
        both = full(ids).logits
        for row in range(2):
            # 1e-5: the same row computed in a batch of 2 or alone differs only by GEMM blocking
            assert (both[row] - full(ids[row : row + 1]).logits[0]).abs().max() <= 1e-5


def test_padded_batch_is_refused(full):
    ids = prompt(20, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="padded batches are not supported"):
        full(ids, attention_mask=mask)


def test_every_sequence_starts_from_fresh_state(full):
    """The official code keeps CSA overlap state across sequences (a new prompt < 4 tokens reuses the
    previous one's last window); here state lives only in the cache a sequence creates."""
    short = prompt(3, seed=11)
    alone = greedy(full, short, 8)
    greedy(full, prompt(50, seed=12), 4)  # an unrelated sequence first
    assert torch.equal(greedy(full, short, 8), alone)


def test_generate_greedy_and_beam_search_use_the_cache_correctly(full):
    ids = prompt(40, seed=5)
    full.generation_config.eos_token_id = None
    out = full.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(out[:, 40:], greedy(full, ids, 24))
    # beam search reorders the cache rows (reorder_cache); without a cache every step recomputes
    beams = full.generate(ids, max_new_tokens=12, num_beams=2, do_sample=False)
    recomputed = full.generate(ids, max_new_tokens=12, num_beams=2, do_sample=False, use_cache=False)
    assert beams.shape == (1, 52) and torch.equal(beams, recomputed)
