"""The DSpark block drafter of the `-DSpark`/`-0731` releases, in the port (`DSparkStage`, `dspark_draft`).

Checked against a reference written here from the spec (V4_ARCHITECTURE.md section 9) with explicit
per-query loops over the raw weights: the context ring (last W committed positions, RoPE'd at their own
positions), the non-causal block attention (every block row sees every other), the sink in the denominator
only, plain RoPE theta without YaRN, positions p+1..p+K of the block, the Markov bias order (x_0 = bonus)
and the confidence formula on the pre-`norm` collapse. Each property also gets a test that fails if it is
changed (a causal mask, the wrong positions, YaRN, a sink in the numerator, the Markov bias of the wrong
token)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import prompt
from deepseek_v4_ov.model.configuration_deepseek_v4 import SLIDING, DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    DeepseekV4ForCausalLM, HcHead, rms_normalize, rope_inv_freq,
)
from deepseek_v4_ov.toys.presets import PRESETS

TOL = 2e-5  # FP32 throughout; the reference sums in another order (loops vs einsum), logits are O(10)
K = 5


def dspark_config(stages: int = 3, **extra) -> DeepseekV4Config:
    base = dict(PRESETS["full"])  # 6 layers [0, 0, 4, 128, 4, 128], window 16, vocab 512
    base.update(compress_ratios=base["compress_ratios"][:6] + [0] * stages, dspark_block_size=K,
                dspark_noise_token_id=511, dspark_target_layer_ids=[3, 4, 5], dspark_markov_rank=16, **extra)
    return DeepseekV4Config(**base)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return DeepseekV4ForCausalLM(dspark_config()).eval()


def taps_and_bonus(model, length: int, seed: int = 5):
    ids = prompt(length, seed=seed)
    with torch.no_grad():
        out = model(ids)
    return out.dspark_hidden, out.logits[:, -1:].argmax(-1)


# ------------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------------
def rope_at(x: torch.Tensor, position: int, inv_freq: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The spec's rotation, pair by pair: channel pair (2i, 2i+1) of the trailing 2*len(inv_freq) channels
    turned by position * inv_freq[i] (negative with `inverse`)."""
    out, rest = x.float().clone(), x.shape[-1] - 2 * inv_freq.shape[0]
    for i, f in enumerate(inv_freq.tolist()):
        angle = torch.tensor(-position * f if inverse else position * f)
        a, b = x[..., rest + 2 * i].float(), x[..., rest + 2 * i + 1].float()
        out[..., rest + 2 * i] = a * angle.cos() - b * angle.sin()
        out[..., rest + 2 * i + 1] = a * angle.sin() + b * angle.cos()
    return out.to(x.dtype)


def reference_attention(attn, block_x, ring_src, ring_positions, block_positions, inv_freq, causal=False,
                        sink_in_numerator=False):
    """One stage's attention by loops: queries of the block rows, keys = ring rows then block rows."""
    d, heads = attn.head_dim, attn.n_heads
    keys = [rope_at(attn.kv_norm(attn.wkv(ring_src[i])), p, inv_freq) for i, p in enumerate(ring_positions)]
    keys += [rope_at(attn.kv_norm(attn.wkv(block_x[i])), p, inv_freq) for i, p in enumerate(block_positions)]
    n_ring, outs = len(ring_positions), []
    for i, p in enumerate(block_positions):
        q = attn.wq_b(attn.q_norm(attn.wq_a(block_x[i]))).view(heads, d)
        q = rope_at(rms_normalize(q, attn.eps), p, inv_freq)
        visible = keys if not causal else keys[: n_ring + i + 1]
        o = torch.zeros(heads, d)
        for h in range(heads):
            s = torch.stack([q[h] @ k for k in visible]) / math.sqrt(d)
            w = torch.exp(s - s.max())
            denom = w.sum() + torch.exp(attn.attn_sink[h] - s.max())
            if sink_in_numerator:
                denom = w.sum()
            o[h] = sum(wi / denom * k for wi, k in zip(w, visible))
        o = rope_at(o, p, inv_freq, inverse=True)
        groups = o.reshape(attn.groups, -1)
        wo_a = attn.wo_a.weight.view(attn.groups, -1, groups.shape[-1])
        outs.append(attn.wo_b(torch.einsum("gi,goi->go", groups, wo_a).flatten()))
    return torch.stack(outs)


def reference_draft(model, taps, bonus, **variant):
    """The whole draft of one row (batch 1), taps of every committed position given at once."""
    c, stages = model.config, model.mtp
    n = taps.shape[1]
    inv_freq = rope_inv_freq(c.qk_rope_head_dim, c.rope_theta, None)
    main_x = stages[0].main_norm(stages[0].main_proj(taps[0]))
    ring = list(range(max(0, n - c.sliding_window), n))  # the last W committed positions
    block_positions = [n + i for i in range(K)]  # p + 1 ... p + K with p = n - 1
    ids = torch.tensor([[bonus] + [c.dspark_noise_token_id] * (K - 1)])
    x = model.embed(ids).unsqueeze(2).expand(-1, -1, c.hc_mult, -1)
    for stage in stages:
        y, post, comb = stage.hc_pre(x, "attn")
        a = reference_attention(stage.attn, stage.attn_norm(y)[0], main_x[ring], ring, block_positions, inv_freq,
                                **variant).unsqueeze(0)
        x = stage.hc_post(a, x, post, comb)
        y, post, comb = stage.hc_pre(x, "ffn")
        x = stage.hc_post(stage.ffn(stage.ffn_norm(y), ids), x, post, comb)
    last = stages[-1]
    h = HcHead.collapse(x, last.hc_head_fn, last.hc_head_base, last.hc_head_scale, c.rms_norm_eps, c.hc_eps)[0]
    base = model.head(last.norm(h))
    previous, tokens, logits, confidence = int(bonus), [], [], []
    for k in range(K):
        e = last.markov_head.markov_w1.weight[previous]
        lk = base[k] + last.markov_head.markov_w2.weight @ e
        confidence.append(torch.sigmoid(last.confidence_head.proj.weight[0] @ torch.cat((h[k], e))))
        previous = int(lk.argmax())
        tokens.append(previous)
        logits.append(lk)
    return torch.tensor(tokens), torch.stack(logits), torch.stack(confidence)


# ------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [9, 40])  # ring not yet full (9 < W = 16) and full (40 > W)
def test_draft_matches_reference(model, length):
    taps, bonus = taps_and_bonus(model, length)
    with torch.no_grad():
        draft = model.dspark_draft(taps, bonus, model.empty_cache(1))
        tokens, logits, confidence = reference_draft(model, taps, int(bonus))
    assert (draft.logits[0] - logits).abs().max() <= TOL
    assert (draft.confidence[0] - confidence).abs().max() <= 1e-6  # sigmoid outputs in (0, 1)
    assert torch.equal(draft.tokens[0], tokens)


@pytest.mark.parametrize("variant", [{"causal": True}, {"sink_in_numerator": True}])
def test_reference_variants_differ(model, variant):
    """The reference is sensitive to the properties it checks: a causal block, or a sink that adds to the
    numerator, give other logits than the port."""
    taps, bonus = taps_and_bonus(model, 30)
    with torch.no_grad():
        draft = model.dspark_draft(taps, bonus, model.empty_cache(1))
        _, logits, _ = reference_draft(model, taps, int(bonus), **variant)
    assert (draft.logits[0] - logits).abs().max() > 1e-3


def test_block_is_non_causal(model):
    """Row 0's output depends on the later block rows: changing the noise token changes draft 1."""
    taps, bonus = taps_and_bonus(model, 30)
    other = DeepseekV4ForCausalLM(dspark_config()).eval()
    other.load_state_dict(model.state_dict())
    other.config.dspark_noise_token_id = 7
    with torch.no_grad():
        a = model.dspark_draft(taps, bonus, model.empty_cache(1)).logits[0, 0]
        b = other.dspark_draft(taps, bonus, other.empty_cache(1)).logits[0, 0]
    assert (a - b).abs().max() > 1e-4


def test_plain_rope_without_yarn(model):
    """The stages use the sliding layers' RoPE (rope_theta, no YaRN), not the compressed layers' one."""
    c = model.config
    assert torch.equal(model.rope_for(SLIDING).inv_freq, rope_inv_freq(c.qk_rope_head_dim, c.rope_theta, None))
    assert not torch.equal(model.rope_for(SLIDING).inv_freq, model.rope_for(4).inv_freq)


def test_chunked_absorb_equals_one_call_and_ring_keeps_last_window(model):
    """Absorbing the committed positions in several calls (prompt, then 1-3 at a time, as speculative
    decoding commits them) leaves the same ring and draft as one call; the ring holds the last W rows."""
    taps, bonus = taps_and_bonus(model, 45)
    with torch.no_grad():
        one = model.empty_cache(1)
        full = model.dspark_draft(taps, bonus, one)
        parts = model.empty_cache(1)
        cuts = [0, 20, 21, 24, 26, 45]
        for a, b in zip(cuts[:-1], cuts[1:]):
            model.dspark_absorb(taps[:, a:b], parts)
        h, base = model.dspark_block(bonus, parts)
    for j in range(len(model.mtp)):
        ring = one.tensors[f"mtp.{j}.context"]
        assert ring.shape[1] == model.config.sliding_window
        assert (ring - parts.tensors[f"mtp.{j}.context"]).abs().max() <= 1e-6
    assert one.tensors["mtp_length"].tolist() == parts.tensors["mtp_length"].tolist() == [45]
    assert (base - full.logits).abs().max() > 0  # the Markov bias is really added
    logits, _ = model.dspark_heads(h, base, torch.cat((bonus, full.tokens[:, :-1]), 1))
    assert (logits - full.logits).abs().max() <= TOL


def test_markov_bias_of_the_previous_token(model):
    """Draft k gets the bias of x_{k-1}: x_0 = bonus, then the drafts themselves. Feeding the heads the
    tokens shifted by one position (the bias of x_k) gives other logits."""
    taps, bonus = taps_and_bonus(model, 30)
    with torch.no_grad():
        cache = model.empty_cache(1)
        draft = model.dspark_draft(taps, bonus, cache)
        cache = model.empty_cache(1)
        model.dspark_absorb(taps, cache)
        h, base = model.dspark_block(bonus, cache)
        right, conf = model.dspark_heads(h, base, torch.cat((bonus, draft.tokens[:, :-1]), 1))
        wrong, _ = model.dspark_heads(h, base, draft.tokens)
    assert (right - draft.logits).abs().max() <= TOL and (conf - draft.confidence).abs().max() <= 1e-6
    assert (wrong - draft.logits).abs().max() > 1e-3


def test_drafter_config_and_errors():
    c = dspark_config(stages=3)
    assert (c.drafter, c.drafter_blocks, c.mtp_ratios) == ("dspark", 3, [0, 0, 0])
    assert c.without_drafter().drafter is None and c.without_drafter().compress_ratios == c.layer_ratios
    assert "dspark_block_size" not in DeepseekV4Config(**PRESETS["full"]).to_dict()
    with pytest.raises(ValueError, match="dspark_markov_rank"):
        DeepseekV4Config(**{**PRESETS["full"], "dspark_block_size": 5, "dspark_noise_token_id": 1,
                            "dspark_target_layer_ids": [5]})
    with pytest.raises(ValueError, match="dspark_target_layer_ids"):
        DeepseekV4Config(**{**PRESETS["full"], "compress_ratios": [0, 0, 4, 128, 4, 128, 0], "dspark_block_size": 5,
                            "dspark_noise_token_id": 1, "dspark_target_layer_ids": [6], "dspark_markov_rank": 4})
    with pytest.raises(ValueError, match="sliding"):
        DeepseekV4Config(**{**PRESETS["full"], "compress_ratios": [0, 0, 4, 128, 4, 128, 4],
                            "dspark_block_size": 5, "dspark_noise_token_id": 1, "dspark_target_layer_ids": [5],
                            "dspark_markov_rank": 4})
    mtp_model = DeepseekV4ForCausalLM(DeepseekV4Config(**PRESETS["full"]))
    with pytest.raises(ValueError, match="not DSpark"):
        mtp_model.dspark_draft(torch.zeros(1, 1, 192), torch.zeros(1, 1, dtype=torch.long), mtp_model.empty_cache(1))
