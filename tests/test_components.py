"""Component checks with assertions that can fail: Sinkhorn, causality of compressed entries, hash routing,
the SwiGLU clamp, YaRN frequencies, and the MoE reading only the experts it picked."""

import copy
import math

import pytest
import torch

from conftest import prompt
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    Expert,
    Gate,
    MoE,
    rope_inv_freq,
    set_experts_implementation,
    sinkhorn,
    visible_entries,
)


def test_sinkhorn_is_doubly_stochastic():
    torch.manual_seed(0)
    logits = torch.randn(64, 4, 4)
    ones = torch.ones(64, 4)
    comb = sinkhorn(logits, iters=20, eps=1e-6)
    assert (comb > 0).all()
    # the last pass normalises columns: exact up to eps; rows converge geometrically with the passes
    assert torch.allclose(comb.sum(-2), ones, atol=1e-5)
    assert torch.allclose(comb.sum(-1), ones, atol=1e-2)
    assert torch.allclose(sinkhorn(logits, iters=200, eps=1e-6).sum(-1), ones, atol=1e-5)
    assert not torch.allclose(sinkhorn(logits, iters=1, eps=1e-6).sum(-1), ones, atol=1e-2)


def test_compressed_entry_visibility_rule():
    positions = torch.arange(12).unsqueeze(0)
    vis = visible_entries(positions, 3, 4)[0]
    # entry w covers tokens 4w..4w+3 and is visible from t = 4w+3 on (the query completing it sees it)
    for t in range(12):
        assert vis[t].tolist() == [w * 4 + 3 <= t for w in range(3)]


@pytest.mark.parametrize("pos", [127, 128, 130, 255])
def test_no_position_sees_a_future_token(toy, pos):
    """Changing token `pos` leaves every earlier logit unchanged: no compressed entry, indexer key, window
    or pending row leaks a future token. 256 tokens cover two HCA windows and many CSA windows."""
    model = toy("full")[1]
    ids = prompt(256, seed=3)
    changed = ids.clone()
    changed[0, pos] = (ids[0, pos] + 1) % 512
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :pos], b[:, :pos])
    assert not torch.equal(a[:, pos], b[:, pos])


def test_hash_layers_route_by_token_id(toy):
    model = toy("full")[1]
    ids = prompt(40, seed=4)
    seen = {}

    def record(i):
        def hook(gate, inputs, output):
            seen[i] = output[0]
        return hook

    hooks = [b.ffn.gate.register_forward_hook(record(i)) for i, b in enumerate(model.layers)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for i, block in enumerate(model.layers):
        table = getattr(block.ffn.gate, "tid2eid", None)
        if i < model.config.num_hash_layers:
            assert torch.equal(seen[i], table[ids.reshape(-1)])
        else:
            assert table is None and not block.ffn.gate.hashed
    assert model.config.num_hash_layers == 3


def test_swiglu_clamp():
    expert = Expert(4, 3, limit=10.0)
    with torch.no_grad():
        for w in (expert.w1, expert.w2, expert.w3):
            w.weight.copy_(torch.eye(*w.weight.shape))
    x = torch.tensor([[30.0, -30.0, 5.0, 0.0]])
    gate = torch.tensor([10.0, -30.0, 5.0])  # clamped from above only
    up = torch.tensor([10.0, -10.0, 5.0])  # clamped both sides
    expected = torch.cat((torch.nn.functional.silu(gate) * up, torch.zeros(1)))
    assert torch.allclose(expert(x)[0], expected)


def test_yarn_frequencies_follow_the_formula():
    """V4-Flash: rope dim 64, base 160000, factor 16, beta 32/1, original length 65536 (spec 2.3)."""
    cfg = DeepseekV4Config()
    freq = rope_inv_freq(64, cfg.compress_rope_theta, cfg.yarn_scaling).double()
    base = 1.0 / 160000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    low = math.floor(64 * math.log(65536 / (2 * math.pi * 32)) / (2 * math.log(160000)))
    high = math.ceil(64 * math.log(65536 / (2 * math.pi * 1)) / (2 * math.log(160000)))
    assert (low, high) == (15, 25)
    ramp = ((torch.arange(32) - low) / (high - low)).clamp(0, 1)
    assert torch.allclose(freq, base * (1 - ramp) + base / 16 * ramp, rtol=1e-6)
    assert torch.allclose(freq[:16], base[:16], rtol=1e-6) and torch.allclose(freq[25:], base[25:] / 16, rtol=1e-6)
    main = rope_inv_freq(64, cfg.rope_theta, None).double()
    assert torch.allclose(main, 1.0 / 10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64), rtol=1e-6)


def test_moe_reads_only_the_selected_experts(toy):
    """Poison every expert no token picked with NaN: the output stays finite and unchanged."""
    block = toy("full")[1].layers[4]
    moe: MoE = block.ffn
    torch.manual_seed(0)
    x = torch.randn(1, 3, moe.gate.weight.shape[1])
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        expected = moe(x, ids)
        picks, _ = moe.gate(x.reshape(-1, x.shape[-1]), ids.reshape(-1))
        unused = sorted(set(range(len(moe.experts))) - set(picks.unique().tolist()))
        assert unused, "the test needs some unpicked experts"
        saved = {e: [w.weight.clone() for w in (moe.experts[e].w1, moe.experts[e].w2, moe.experts[e].w3)] for e in unused}
        try:
            for e in unused:
                for w in (moe.experts[e].w1, moe.experts[e].w2, moe.experts[e].w3):
                    w.weight.fill_(float("nan"))
            got = moe(x, ids)
        finally:
            for e, ws in saved.items():
                for w, old in zip((moe.experts[e].w1, moe.experts[e].w2, moe.experts[e].w3), ws):
                    w.weight.copy_(old)
    assert torch.isfinite(got).all() and torch.equal(got, expected)


def test_router_bias_only_selects():
    cfg = DeepseekV4Config(hidden_size=8, n_routed_experts=4, num_experts_per_tok=2)
    gate = Gate(cfg, hashed=False)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(4, 8))
        gate.bias.copy_(torch.tensor([0.0, 0.0, 100.0, 100.0]))
    picks, weights = gate(torch.randn(5, 8), torch.zeros(5, dtype=torch.long))
    assert (picks.sort(-1).values == torch.tensor([2, 3])).all()  # bias decides the choice...
    assert torch.allclose(weights.sum(-1), torch.full((5,), 1.5))  # ...weights are renormalised scores x 1.5


def test_experts_forms_agree(toy):
    """Every routed-experts form gives the loop's output: "grouped" (stacked from the experts, or given as
    stacks, the per-expert modules then dropped) and "dense"; unknown names fail naming the choices."""
    block = copy.deepcopy(toy("full")[1].layers[4])
    moe: MoE = block.ffn
    torch.manual_seed(0)
    x = torch.randn(2, 5, moe.gate.weight.shape[1])
    ids = torch.randint(2, 500, (2, 5))
    with torch.no_grad():
        expected = moe(x, ids)
        for form in ("grouped", "dense"):
            set_experts_implementation(block, form)
            assert moe.experts_implementation == form
            assert torch.allclose(moe(x, ids), expected, atol=1e-6), form
        stacks = [torch.stack([getattr(e, n).weight for e in moe.experts]) for n in ("w1", "w3", "w2")]
        moe.set_stacked_experts(*stacks)
        assert len(moe.experts) == 0 and moe.experts_implementation == "grouped"
        assert torch.allclose(moe(x, ids), expected, atol=1e-6)
    with pytest.raises(ValueError, match="loop, grouped, dense"):
        set_experts_implementation(block, "tiled")
    with pytest.raises(ValueError, match="only the 'grouped' form"):
        set_experts_implementation(block, "loop")
    with pytest.raises(ValueError, match="experts_implementation"):
        DeepseekV4Config(experts_implementation="tiled")
