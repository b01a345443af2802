"""The MTP block (`mtp.0`): inputs are the main model's final streams at t and token t+1; it predicts
token t+2. Checked: causality in both inputs, chunked use with its own cache equals one call, and the
inputs really reach it (the embedding of t+1 through enorm/e_proj, the streams through hnorm/h_proj)."""

import torch

from conftest import prompt

TOL = 1e-4  # FP32, same grouping argument as test_cache


def mtp_full(model, ids):
    with torch.no_grad():
        out = model(ids[:, :-1])
        cache = model.empty_cache(ids.shape[0])
        return model.mtp_logits(out.streams, ids[:, 1:], cache), out.streams


def test_mtp_chunked_equals_full_and_is_causal(toy):
    model = toy("full")[1]
    ids = prompt(201, seed=21)
    full, streams = mtp_full(model, ids)
    assert full.shape == (1, 200, model.config.vocab_size)
    with torch.no_grad():
        cache = model.empty_cache(1)
        parts = [model.mtp_logits(streams[:, :37], ids[:, 1:38], cache)]
        for t in range(37, 200):
            parts.append(model.mtp_logits(streams[:, t : t + 1], ids[:, t + 1 : t + 2], cache))
    assert (torch.cat(parts, 1) - full).abs().max() <= TOL
    assert cache.tensors["mtp_length"].tolist() == [200]

    changed = ids.clone()
    changed[0, 101] = (ids[0, 101] + 1) % 512  # token 101 is the "next token" input of position 100
    with torch.no_grad():
        cache = model.empty_cache(1)
        other = model.mtp_logits(streams, changed[:, 1:], cache)
    assert torch.equal(other[:, :100], full[:, :100]) and not torch.equal(other[:, 100], full[:, 100])


def test_mtp_uses_both_inputs(toy):
    model = toy("full")[1]
    ids = prompt(30, seed=22)
    base, streams = mtp_full(model, ids)
    with torch.no_grad():
        shifted = model.mtp_logits(streams * 1.5 + 0.1, ids[:, 1:], model.empty_cache(1))
        other_tokens = model.mtp_logits(streams, (ids[:, 1:] + 1) % 512, model.empty_cache(1))
    assert (shifted - base).abs().max() > 1e-3
    assert (other_tokens - base).abs().max() > 1e-3
    assert len(model.mtp) == model.config.num_nextn_predict_layers == 1
