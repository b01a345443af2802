"""NPU-style static-shape decoding: one token per call, fixed-size masked caches, no shape depends on position.

The port's cache (`DeepseekV4Cache`) grows along axis 1; NPU compilers want every shape fixed. This module
runs the same model (the port's modules and weights, referenced, never copied) one token at a time over
caches sized once for a capacity `max_len` (prompt + response), as V4_ARCHITECTURE.md section 4 suggests:

    position                          [1]                        int32, tokens seen (= position of the token fed)
    layers.{i}.window                 [1, W, D]                  ring buffer, slot t mod W; a slot is valid iff
                                                                 its position t - ((t - slot) mod W) is >= 0
    layers.{i}.pending_kv / _gate     [1, r, width]              open-window rows, slot t mod r (gate incl. ape)
    layers.{i}.prev_kv / _gate        [1, r, D]                  CSA: first halves of the last complete window
    layers.{i}.entries                [1, ceil(max_len / r), D]  entry w written when window w completes
    layers.{i}.index_pending_*, index_prev_*                     CSA: the indexer compressor's own state
    layers.{i}.index_keys             [1, ceil(max_len / 4), Di] CSA: indexer keys, written like entries

Writes are masked (`where(slot == index & completed, new, old)`), emission is a mask instead of a branch,
attention runs over `[window | entries]` (HCA: every entry, masked by visibility; CSA: the indexer's fixed
top-k, k = min(index_topk, ceil(max_len/4)), over the whole entry axis with -inf for entries not yet
visible, picks at or past the visible count masked), and the MoE evaluates every expert densely with a zero
routing weight for the experts not picked (the port gathers tokens per expert, a data-dependent shape).
Everything else is the port's arithmetic; zero states are the start of a sequence, as in the port.

    decoder = StaticDecoder(model, max_len)          # PyTorch reference of the static graph
    state = decoder.empty_state(); logits = decoder.step(ids[:, t : t + 1], state)
    ov_model = convert(model, max_len)               # stateful IR, input_ids [1, 1] -> logits [1, 1, V]
    runner = StaticCacheLM(ov_model, "CPU", F32_CONFIG)   # OVCausalLM interface: prompt fed token by token

For NPU: compile the IR with `ov.Core().compile_model(ir, "NPU")`; `max_len` is the only setting (a
prompt plus its response must fit; `StaticCacheLM` refuses more). Batch 1, one token per call.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import openvino as ov
import torch
import torch.nn.functional as F
from openvino.passes import MakeStateful, Manager
from torch import nn

from deepseek_v4_ov.model.configuration_deepseek_v4 import CSA
from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    NEG_INF,
    Attention,
    Block,
    Compressor,
    DeepseekV4ForCausalLM,
    Indexer,
    MoE,
    Rope,
    apply_rope,
    rms_normalize,
    stable_topk_indices,
    visible_entries,
)
from deepseek_v4_ov.convert.trace import INPUT_PREFIX, OUTPUT_PREFIX, _make_topk_stable, _name_ports
from deepseek_v4_ov.runtime.ov_lm import OVCausalLM, read_ir

POSITION = "position"
RT_INFO_KEY = ["deepseek_v4_static", "max_len"]


def state_shapes(model: DeepseekV4ForCausalLM, max_len: int) -> dict[str, tuple[int, ...]]:
    """Every state of the static decoder with its full (batch 1) shape, in IR order."""
    c = model.config
    shapes: dict[str, tuple[int, ...]] = {POSITION: (1,)}
    for i, block in enumerate(model.layers):
        attn, p = block.attn, f"layers.{i}."
        shapes[p + "window"] = (1, attn.window, attn.head_dim)
        comps = [(p, attn.compressor)] if attn.compressor is not None else []
        if attn.indexer is not None:
            comps.append((p + "index_", attn.indexer.compressor))
        for prefix, comp in comps:
            width = comp.dim * (2 if comp.overlap else 1)
            shapes[prefix + "pending_kv"] = shapes[prefix + "pending_gate"] = (1, comp.ratio, width)
            if comp.overlap:
                shapes[prefix + "prev_kv"] = shapes[prefix + "prev_gate"] = (1, comp.ratio, comp.dim)
        if attn.compressor is not None:
            shapes[p + "entries"] = (1, math.ceil(max_len / attn.ratio), attn.head_dim)
        if attn.indexer is not None:
            shapes[p + "index_keys"] = (1, math.ceil(max_len / CSA), c.index_head_dim)
    return shapes


def _write(buffer: torch.Tensor, row: torch.Tensor, index: torch.Tensor,
           when: torch.Tensor | None = None) -> torch.Tensor:
    """`buffer [1, n, D]` with row `[1, 1, D]` at slot `index` (`[1, 1]`), only where `when` (`[1, 1]`)."""
    hit = torch.arange(buffer.shape[1], device=buffer.device).view(1, -1) == index  # [1, n]
    if when is not None:
        hit = hit & when
    return torch.where(hit.unsqueeze(-1), row.to(buffer.dtype), buffer)


class StaticDecoder(nn.Module):
    """One-token step of the port's model over fixed-size caches (see the module docstring).

    `forward(input_ids [1, 1], *states)` -> `(logits [1, 1, V], *new states)`, states in `self.names`
    order; `step(input_ids, state)` does the same on a dict, in place."""

    def __init__(self, model: DeepseekV4ForCausalLM, max_len: int) -> None:
        super().__init__()
        self.model, self.max_len = model, max_len
        self.shapes = state_shapes(model, max_len)
        self.names = list(self.shapes)

    def empty_state(self) -> dict[str, torch.Tensor]:
        return {n: torch.zeros(s, dtype=torch.int32 if n == POSITION else torch.float32)
                for n, s in self.shapes.items()}

    # -- pieces -------------------------------------------------------------------------------------------
    @staticmethod
    def compress_step(comp: Compressor, x: torch.Tensor, pos: torch.Tensor, rope: Rope,
                      state: dict[str, torch.Tensor], prefix: str):
        """Store token t's rows; return (the entry of t's window `[1, 1, d]`, whether t completes it,
        the window index), the entry meaningful only when completed (`Compressor.forward`'s math)."""
        r, d = comp.ratio, comp.dim
        kv = F.linear(x.float(), comp.wkv.weight.float())
        gate = F.linear(x.float(), comp.wgate.weight.float()) + comp.ape.float()[pos % r]
        pend_kv = _write(state[prefix + "pending_kv"], kv, pos % r)
        pend_gate = _write(state[prefix + "pending_gate"], gate, pos % r)
        state[prefix + "pending_kv"], state[prefix + "pending_gate"] = pend_kv, pend_gate
        window = torch.div(pos, r, rounding_mode="floor")  # [1, 1]
        completed = (pos + 1) % r == 0
        kv, gate = pend_kv.unsqueeze(1), pend_gate.unsqueeze(1)  # [1, 1, r, width]: slots in position order
        if comp.overlap:
            prev_kv, prev_gate = state[prefix + "prev_kv"], state[prefix + "prev_gate"]
            first_gate = prev_gate.unsqueeze(1).masked_fill((window == 0)[..., None, None], NEG_INF)
            state[prefix + "prev_kv"] = torch.where(completed.unsqueeze(-1), pend_kv[..., :d], prev_kv)
            state[prefix + "prev_gate"] = torch.where(completed.unsqueeze(-1), pend_gate[..., :d], prev_gate)
            kv = torch.cat((prev_kv.unsqueeze(1), kv[..., d:]), 2)
            gate = torch.cat((first_gate, gate[..., d:]), 2)
        entry = comp.norm((gate.softmax(dim=2) * kv).sum(2))
        cos, sin = rope(window * r)
        return apply_rope(entry, cos, sin), completed, window

    def attention_step(self, attn: Attention, x: torch.Tensor, pos: torch.Tensor, rope: Rope,
                       state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        """`Attention.forward` for one token at position `pos` (`[1, 1]`) over the fixed caches."""
        batch, seq, _ = x.shape
        cos, sin = rope(pos)
        qr = attn.q_norm(attn.wq_a(x))
        q = attn.wq_b(qr).view(batch, seq, attn.n_heads, attn.head_dim)
        q = apply_rope(rms_normalize(q, attn.eps).to(x.dtype), cos.unsqueeze(2), sin.unsqueeze(2))
        kv = apply_rope(attn.kv_norm(attn.wkv(x)), cos, sin)

        # sliding window: ring of W slots, the current token's row included
        keys = _write(state[prefix + "window"], kv, pos % attn.window)
        state[prefix + "window"] = keys
        slots = torch.arange(attn.window, device=x.device).view(1, -1)
        window_mask = (pos - (pos - slots) % attn.window >= 0).unsqueeze(1)  # [1, 1, W]
        scale = attn.head_dim**-0.5
        scores = [torch.einsum("bshd,bkd->bhsk", q, keys).float().mul(scale).masked_fill(~window_mask[:, None], NEG_INF)]

        compressed = None
        if attn.compressor is not None:
            entry, completed, window = attn.compressor(x, pos, rope, state, prefix)
            entries = _write(state[prefix + "entries"], entry, window, completed)
            state[prefix + "entries"] = entries
            entries = entries.to(x.dtype)
            if attn.indexer is not None:
                picks, valid = attn.indexer(x, qr, pos, rope, state, prefix)
                padded = torch.cat((entries, entries.new_zeros(batch, 1, attn.head_dim)), 1)
                picks = torch.where(valid, picks, entries.shape[1])  # invalid picks read the zero row
                compressed = torch.gather(
                    padded.unsqueeze(1).expand(batch, seq, -1, -1), 2,
                    picks.unsqueeze(-1).expand(-1, -1, -1, attn.head_dim),
                )  # [1, 1, k, D]
                c_scores = torch.einsum("bshd,bskd->bhsk", q, compressed)
                c_mask = valid
            else:
                compressed = entries
                c_scores = torch.einsum("bshd,bnd->bhsn", q, entries)
                c_mask = visible_entries(pos, entries.shape[1], attn.ratio)
            scores.append(c_scores.float().mul(scale).masked_fill(~c_mask[:, None], NEG_INF))

        sink = attn.attn_sink.float().view(1, -1, 1, 1).expand(batch, -1, seq, 1)
        probs = torch.cat((*scores, sink), -1).softmax(-1).to(x.dtype)
        n_win = keys.shape[1]
        out = torch.einsum("bhsk,bkd->bshd", probs[..., :n_win], keys)
        if compressed is not None:
            c_probs = probs[..., n_win:-1]
            if attn.indexer is not None:
                out = out + torch.einsum("bhsk,bskd->bshd", c_probs, compressed)
            else:
                out = out + torch.einsum("bhsn,bnd->bshd", c_probs, compressed)
        out = apply_rope(out, cos.unsqueeze(2), sin.unsqueeze(2), inverse=True)
        out = out.reshape(batch, seq, attn.groups, -1)
        wo_a = attn.wo_a.weight.view(attn.groups, -1, out.shape[-1])
        out = torch.einsum("bsgi,goi->bsgo", out, wo_a).flatten(2)
        return attn.wo_b(out)

    def indexer_step(self, indexer: Indexer, x, qr, pos, rope, state, prefix):
        """`Indexer.forward` over the fixed key axis: top-k picks `[1, 1, k]` and their validity."""
        key, completed, window = indexer.compressor(x, pos, rope, state, prefix + "index_")
        keys = _write(state[prefix + "index_keys"], key, window, completed)
        state[prefix + "index_keys"] = keys
        scores = indexer.scores(x, qr, pos, rope, keys)  # -inf where not yet visible
        picks = stable_topk_indices(scores, min(indexer.topk, self.shapes[prefix + "index_keys"][1]))
        valid = picks < torch.div(pos + 1, CSA, rounding_mode="floor").unsqueeze(-1)
        return picks, valid

    @staticmethod
    def moe_step(moe: MoE, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """`MoE.forward` with every expert evaluated; an expert not picked gets routing weight 0 (exactly
        no contribution), so no shape depends on the routing."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        picks, weights = moe.gate(x, input_ids.reshape(-1))
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(moe.experts):
            weight = (weights * (picks == e)).sum(-1, keepdim=True)
            out = out + expert(x, weight).float()
        out = out + moe.shared_experts(x).float()
        return out.to(x.dtype).view(shape)

    def block_step(self, block: Block, streams, pos, input_ids, rope, state, prefix) -> torch.Tensor:
        x, post, comb = block.hc_pre(streams, "attn")
        attn_out = block.attn(block.attn_norm(x), pos, rope, state, prefix)
        streams = block.hc_post(attn_out, streams, post, comb)
        x, post, comb = block.hc_pre(streams, "ffn")
        return block.hc_post(block.ffn(block.ffn_norm(x), input_ids), streams, post, comb)

    def model_step(self, input_ids: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.model
        pos = state[POSITION].long().view(1, 1)
        h = m.embed(input_ids)
        streams = h.unsqueeze(2).expand(-1, -1, m.config.hc_mult, -1).contiguous()
        for i, block in enumerate(m.layers):
            streams = self.block_step(block, streams, pos, input_ids, m.rope_for(block.ratio), state, f"layers.{i}.")
        state[POSITION] = (pos + 1).view(1).to(torch.int32)
        return m.head(m.head_hidden(streams, m, m.norm)).float()

    @contextmanager
    def _as_port_forwards(self):
        """Install the step functions as the `forward` of the port's modules they replace (model, blocks,
        attention, compressors, indexer, MoE) for the duration, and call them through the modules: the
        traced graph then names every op after the same module as the port's IR does, which is what
        `compression` resolves official weight names from (so both IRs get the same precision policy)."""
        m = self.model
        swaps = [(m, self.model_step)]
        for block in m.layers:
            attn = block.attn
            swaps += [(block, partial(self.block_step, block)), (attn, partial(self.attention_step, attn)),
                      (block.ffn, partial(self.moe_step, block.ffn))]
            if attn.compressor is not None:
                swaps.append((attn.compressor, partial(self.compress_step, attn.compressor)))
            if attn.indexer is not None:
                swaps += [(attn.indexer, partial(self.indexer_step, attn.indexer)),
                          (attn.indexer.compressor, partial(self.compress_step, attn.indexer.compressor))]
        for module, fn in swaps:
            module.forward = fn
        try:
            yield
        finally:
            for module, _ in swaps:
                del module.forward

    # -- one token ----------------------------------------------------------------------------------------
    def step(self, input_ids: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits `[1, 1, V]` of the token `input_ids [1, 1]` at position `state["position"]`; updates `state`."""
        with self._as_port_forwards():
            return self.model(input_ids, state)

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor):
        state = dict(zip(self.names, states, strict=True))
        logits = self.step(input_ids, state)
        return (logits, *(state[n] for n in self.names))


# ------------------------------------------------------------------------------------------------------
# OpenVINO
# ------------------------------------------------------------------------------------------------------
def convert(model: DeepseekV4ForCausalLM, max_len: int, stateful: bool = True) -> ov.Model:
    """Trace the static decoder (model FP32, eval) into a fully static IR: `input_ids [1, 1]` i64 ->
    `logits [1, 1, V]` f32, every state an OpenVINO variable (`stateful`) of fixed shape starting at zero,
    or with `stateful=False` explicit `past_key_values.<name>` inputs and `present.<name>` outputs."""
    decoder = StaticDecoder(model.eval(), max_len).eval()
    state = decoder.empty_state()
    ids = torch.tensor([[2]])
    with torch.no_grad():  # trace from a state that is not all zeros
        for t in range(5):
            decoder.step(torch.tensor([[t + 2]]), state)
        example = (ids, *(state[n] for n in decoder.names))
        inputs = [(ov.PartialShape([1, 1]), ov.Type.i64)] + [
            (ov.PartialShape(list(s)), ov.Type.i32 if n == POSITION else ov.Type.f32)
            for n, s in decoder.shapes.items()
        ]
        ov_model = ov.convert_model(decoder, example_input=example, input=inputs)
    _name_ports(ov_model, ["input_ids", *(INPUT_PREFIX + n for n in decoder.names)],
                ["logits", *(OUTPUT_PREFIX + n for n in decoder.names)])
    _make_topk_stable(ov_model)
    _name_folded_weights(ov_model, model)
    if stateful:
        manager = Manager()
        manager.register_pass(MakeStateful({INPUT_PREFIX + n: OUTPUT_PREFIX + n for n in decoder.names}))
        manager.run_passes(ov_model)
        ov_model.validate_nodes_and_infer_types()
    ov_model.set_rt_info(str(max_len), RT_INFO_KEY)
    return ov_model


def _name_folded_weights(ov_model: ov.Model, model: DeepseekV4ForCausalLM) -> None:
    """With static shapes the frontend folds `wo_a.weight.view(groups, -1, in)` into a new Constant named after
    the view; give it the weight's name back, as the port's (dynamic) IR has it, so that `compression`
    resolves it to `layers.{i}.attn.wo_a.weight` like every other weight."""
    for op in ov_model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() != "Constant" or "/aten::view/" not in name or not name.startswith("__module.model.layers."):
            continue
        layer = int(name.split(".")[3].split("/")[0])
        attn = model.layers[layer].attn
        view = (attn.groups, attn.wo_a.out_features // attn.groups, attn.wo_a.in_features)
        if name.startswith(f"__module.model.layers.{layer}.attn/") and tuple(op.get_output_shape(0)) == view:
            op.set_friendly_name(f"self.model.layers.{layer}.attn.wo_a.weight")


def max_len_of(ov_model: ov.Model) -> int:
    return int(ov_model.get_rt_info(RT_INFO_KEY).astype(str))


class StaticCacheLM(OVCausalLM):
    """The static stateful IR behind `OVCausalLM`'s interface: a prompt `[1, S]` is fed one token per
    call (the logits of every position come back), decode is one call per token; `max_len` bounds
    prompt + response."""

    def __init__(self, model: ov.Model | str | Path, device: str = "CPU", config: dict | None = None,
                 core: ov.Core | None = None) -> None:
        core = core or ov.Core()
        model = read_ir(model, core)
        self.max_len = max_len_of(model)
        super().__init__(model, device, config, core)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        if batch != 1:
            raise ValueError(f"the static-shape model runs batch 1, got {batch}")
        if self.past + seq > self.max_len:
            raise ValueError(f"{self.past} + {seq} tokens exceed the static model's capacity max_len={self.max_len}")
        out, start = [], time.perf_counter()
        for t in range(seq):
            self.request.infer({"input_ids": input_ids[:, t : t + 1]})
            out.append(np.array(self.request.get_tensor("logits").data, dtype=np.float32))
        self.last_s = time.perf_counter() - start
        self.past += seq
        return np.concatenate(out, 1)
