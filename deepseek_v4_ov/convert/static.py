"""NPU-style static-shape decoding: one token per call, fixed-size masked caches, no shape depends on position.

The port's cache (`DeepseekV4Cache`) grows along axis 1; NPU compilers want every shape fixed. This module
runs the same model (the port's modules and weights, never copied) one token at a time over caches sized
once for a capacity `max_len` (prompt + response), as V4_ARCHITECTURE.md section 4 suggests. The modules
are driven, not re-stated: their state layout is set to `FixedState` and their routed experts to the
"dense" form (see modeling_deepseek_v4.py) for the duration of a step. This module builds the state:

    position                          [1]                        int32, tokens seen (= position of the token fed)
    layers.{i}.window                 [1, W, D]                  ring buffer, slot t mod W; a slot is valid iff
                                                                 its position t - ((t - slot) mod W) is >= 0
    layers.{i}.pending_kv / _gate     [1, r, width]              open-window rows, slot t mod r (gate incl. ape)
    layers.{i}.prev_kv / _gate        [1, r, D]                  CSA: first halves of the last complete window
    layers.{i}.entries                [1, ceil(max_len / r), D]  entry w written when window w completes
    layers.{i}.index_pending_*, index_prev_*                     CSA: the indexer compressor's own state
    layers.{i}.index_keys             [1, ceil(max_len / 4), Di] CSA: indexer keys, written like entries

Writes are masked, emission is a mask instead of a branch, attention runs over `[window | entries]` (HCA:
every entry, masked by visibility; CSA: the indexer's fixed top-k, k = min(index_topk, ceil(max_len/4)),
over the whole entry axis, picks at or past the visible count masked), and the MoE evaluates every expert
with a zero routing weight for the experts not picked (the port gathers tokens per expert, a
data-dependent shape). Zero states are the start of a sequence, as in the port.

    decoder = StaticDecoder(model, max_len)          # PyTorch reference of the static graph
    state = decoder.empty_state(); logits = decoder.step(ids[:, t : t + 1], state)
    ov_model = convert(model, max_len)               # stateful IR, input_ids [1, 1] -> logits [1, 1, V]
    runner = StaticCacheLM(ov_model, "CPU", F32_CONFIG)   # runtime/static_lm.py: OVCausalLM's interface

For NPU: compile the IR with `ov.Core().compile_model(ir, "NPU")`; `max_len` is the only setting (a
prompt plus its response must fit; `StaticCacheLM` refuses more). Batch 1, one token per call.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import openvino as ov
import torch
from openvino.passes import MakeStateful, Manager
from torch import nn

from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    MoE, DeepseekV4Cache, DeepseekV4ForCausalLM, set_experts_implementation, set_state_layout,
)
from deepseek_v4_ov.compress.policy import row_block_name
from deepseek_v4_ov.convert.stateful import INPUT_PREFIX, OUTPUT_PREFIX, make_topk_stable, name_ports

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
            shapes[p + "index_keys"] = (1, math.ceil(max_len / attn.indexer.compressor.ratio), c.index_head_dim)
    return shapes


@contextmanager
def static_forms(model: nn.Module):
    """Within the block the modules of `model` keep their state in the fixed layout and run every routed
    expert ("dense"); the growing layout and each MoE's own form come back on exit."""
    before = [(m, m.experts_implementation) for m in model.modules() if isinstance(m, MoE)]
    set_experts_implementation(model, "dense")
    set_state_layout(model, "fixed")
    try:
        yield
    finally:
        set_state_layout(model, "growing")
        for m, form in before:
            m.set_experts_implementation(form)


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

    def step(self, input_ids: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits `[1, 1, V]` of the token `input_ids [1, 1]` at position `state["position"]`; updates `state`."""
        cache = DeepseekV4Cache({n: state[n] for n in self.names if n != POSITION})
        cache.tensors["length"] = state[POSITION].long()
        with static_forms(self.model):
            logits = self.model(input_ids, past_key_values=cache).logits
        state.update(cache.tensors)
        state[POSITION] = state.pop("length").int()
        return logits

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
    name_ports(ov_model, ["input_ids", *(INPUT_PREFIX + n for n in decoder.names)],
                ["logits", *(OUTPUT_PREFIX + n for n in decoder.names)])
    make_topk_stable(ov_model)
    _name_folded_weights(ov_model, model)
    if stateful:
        manager = Manager()
        manager.register_pass(MakeStateful({INPUT_PREFIX + n: OUTPUT_PREFIX + n for n in decoder.names}))
        manager.run_passes(ov_model)
        ov_model.validate_nodes_and_infer_types()
    ov_model.set_rt_info(str(max_len), RT_INFO_KEY)
    return ov_model


def _name_folded_weights(ov_model: ov.Model, model: DeepseekV4ForCausalLM) -> None:
    """With static shapes the frontend folds `Attention.output`'s chunks of wo_a into constants named after
    the split (`...attn/prim::ListUnpack/VariadicSplit.k`); name each as the block of rows it is
    (`row_block_name`), as the port's (dynamic) IR binds them, so that `compression` resolves them to
    `layers.{i}.attn.wo_a.weight` like every other weight."""
    pattern = re.compile(r"__module\.model\.layers\.(\d+)\.attn/prim::ListUnpack/VariadicSplit\.(\d+)$")
    for op in ov_model.get_ops():
        m = pattern.match(op.get_friendly_name())
        if op.get_type_name() != "Constant" or m is None:
            continue
        layer, block = int(m.group(1)), int(m.group(2))
        wo_a = model.layers[layer].attn.wo_a
        rows = wo_a.out_features // model.layers[layer].attn.groups
        if tuple(op.get_output_shape(0)) == (rows, wo_a.in_features):
            op.set_friendly_name(row_block_name(f"self.model.layers.{layer}.attn.wo_a.weight", block * rows,
                                                (block + 1) * rows))


def max_len_of(ov_model: ov.Model) -> int:
    return int(ov_model.get_rt_info(RT_INFO_KEY).astype(str))
