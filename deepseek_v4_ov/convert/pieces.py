"""Trace the port piece by piece: each piece is a run of units (`embed`, `layers.i`, `head`) built with only
its own weights, traced, and made stateful on its own; `convert/stitch.py` joins the pieces' IR files.

    embed      input_ids, attention_mask, position_ids, beam_idx; state `length`
               -> streams [B, S, hc, hidden], positions [B, S], state_init_guard
    layers.i   input_ids, beam_idx, streams, positions, state_init_guard; states `layers.i.*`
               -> streams, state_init_guard (this piece's guard added)
    head       streams -> logits

A piece of several units runs them in that order inside one trace (the whole model is the one piece of
all units), so every plan gives the same graph: the same modules under the same official names
(`self.model.<official name>` constants), the same states and ports (`convert/stateful.py`). The routed
experts are traced in the grouped form (`set_experts_implementation`), their stacked `[E, out, in]`
weights filled straight from the weight source, never as per-expert modules.

Weights come from `tensors(prefixes)`, an iterator of (official name, tensor): a validated checkpoint's
`iter_tensors`, or an in-memory model's state dict (`model_tensors`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import openvino as ov
import torch
from torch import nn

from deepseek_v4_ov.convert.stateful import (
    INPUT_PREFIX, OUTPUT_PREFIX, bind_initial_states, chain_guard, make_stateful, make_topk_stable, name_ports,
)
from deepseek_v4_ov.model.configuration_deepseek_v4 import SLIDING, DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import Block, HcHead, RMSNorm, Rope, linear

EMBED, HEAD = "embed", "head"
TRACE_TOKENS, TRACE_BATCH, TRACE_NEW = 133, 2, 5  # trace from a cache holding 133 tokens, 5 new, batch 2
LINKS = ("streams", "positions")  # piece outputs that later pieces read as inputs of the same name
Tensors = Callable[[tuple[str, ...]], Iterable[tuple[str, torch.Tensor]]]
_EXPERT_RE = re.compile(r"layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight")


def units_of(config: DeepseekV4Config) -> list[str]:
    return [EMBED, *(f"layers.{i}" for i in range(config.num_hidden_layers)), HEAD]


def plan(config: DeepseekV4Config, whole: bool = False) -> list[list[str]]:
    """The pieces of an export: one per unit (bounded memory: one layer's weights at a time), or one piece
    of every unit (`whole`)."""
    units = units_of(config)
    return [units] if whole else [[u] for u in units]


def model_tensors(model: nn.Module) -> Tensors:
    """The weight source of an in-memory port model (its state dict by official name)."""
    state = model.state_dict()

    def tensors(prefixes: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        return ((k, v) for k, v in state.items() if k.startswith(prefixes) and not k.startswith("mtp."))

    return tensors


def _prefixes(units: list[str]) -> tuple[str, ...]:
    out = []
    for u in units:
        out += {EMBED: ["embed."], HEAD: ["head.", "norm.", "hc_head_"]}.get(u, [u + "."])
    return tuple(out)


class Piece(nn.Module):
    """Units of the port traced together. `model` holds their modules under the official names."""

    def __init__(self, config: DeepseekV4Config, units: list[str]) -> None:
        super().__init__()
        hd, n = config.hidden_size, config.hc_mult
        # not `self.config`: OpenVINO's frontend would read its storage-only quantization_config
        self.model_config, self.units = config, units
        self.layer_ids = [int(u.split(".")[1]) for u in units if u.startswith("layers.")]
        self.model = nn.Module()
        if EMBED in units:
            self.model.embed = nn.Embedding(config.vocab_size, hd)
        if self.layer_ids:
            self.model.layers = nn.ModuleDict(
                {str(i): Block(config, config.layer_ratios[i], hashed=i < config.num_hash_layers)
                 for i in self.layer_ids})
        if HEAD in units:
            self.model.norm = RMSNorm(hd, config.rms_norm_eps)
            self.model.head = linear(hd, config.vocab_size)
            self.model.hc_head_fn = nn.Parameter(torch.zeros(n, n * hd))
            self.model.hc_head_base = nn.Parameter(torch.zeros(n))
            self.model.hc_head_scale = nn.Parameter(torch.ones(1))

    def empty_state(self, batch: int) -> dict[str, torch.Tensor]:
        """The piece's states at the start of a sequence (`length` int32: the CPU plugin holds no i64 state)."""
        state = {"length": torch.zeros(batch, dtype=torch.int32)} if EMBED in self.units else {}
        for i in self.layer_ids:
            state.update(self.model.layers[str(i)].attn.empty_state(f"layers.{i}.", batch, None))
        return state

    def input_names(self, states: list[str]) -> list[str]:
        first = ["input_ids", "attention_mask", "position_ids"] if EMBED in self.units else (
            ["input_ids", "streams", "positions"] if self.layer_ids else ["streams"])
        return first + [INPUT_PREFIX + s for s in states]

    def output_names(self, states: list[str]) -> list[str]:
        first = ["logits"] if HEAD in self.units else (["streams", "positions"] if EMBED in self.units else ["streams"])
        return first + [OUTPUT_PREFIX + s for s in states]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = [n.removeprefix(INPUT_PREFIX) for n in self.input_names(self._states)]
        x = dict(zip(names, args, strict=True))
        state = {n: x[n] for n in self._states}
        m, c = self.model, self.model_config
        if EMBED in self.units:
            ids, length = x["input_ids"], state["length"].long()
            positions = length.unsqueeze(1) + torch.arange(ids.shape[1], device=ids.device)
            streams = m.embed(ids).unsqueeze(2).expand(-1, -1, c.hc_mult, -1).contiguous()
            state["length"] = (length + ids.shape[1]).int()
        else:
            streams, positions = x["streams"], x.get("positions")
        for i in self.layer_ids:
            block = m.layers[str(i)]
            streams = block(streams, positions, x["input_ids"], self._ropes[block.ratio], state, f"layers.{i}.")
        if HEAD in self.units:
            y = HcHead.collapse(streams, m.hc_head_fn, m.hc_head_base, m.hc_head_scale, c.rms_norm_eps, c.hc_eps)
            first = (m.head(m.norm(y)).float(),)
        else:
            first = (streams, positions) if EMBED in self.units else (streams,)
        return (*first, *(state[n] for n in self._states))

    def prepare(self) -> None:
        """Ropes (one per layer kind, shared by the piece's layers) and the state order, after loading."""
        c = self.model_config
        self._ropes = {r: Rope(c.qk_rope_head_dim, c.rope_theta, None) if r == SLIDING
                       else Rope(c.qk_rope_head_dim, c.compress_rope_theta, c.yarn_scaling)
                       for r in {c.layer_ratios[i] for i in self.layer_ids}}
        self._states = list(self.empty_state(1))


def load_piece(config: DeepseekV4Config, units: list[str], tensors: Tensors) -> Piece:
    """The piece with its weights from `tensors`, FP32; routed experts go straight into [E, out, in] stacks,
    run in the grouped form (`MoE.set_stacked_experts`, which falls back to per-expert modules where
    torch._grouped_mm cannot take the widths)."""
    with torch.device("meta"):
        piece = Piece(config, units)
    e, hd, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
    stacks = {i: (torch.empty(e, inter, hd), torch.empty(e, inter, hd), torch.empty(e, hd, inter))
              for i in piece.layer_ids}
    state = {}
    for name, t in tensors(_prefixes(units)):
        m = _EXPERT_RE.fullmatch(name)
        if m:
            stacks[int(m.group(1))][("w1", "w3", "w2").index(m.group(3))][int(m.group(2))].copy_(t)
            continue
        state[name] = t.to(torch.float32) if t.is_floating_point() else t
    for i, (w1, w3, w2) in stacks.items():
        piece.model.layers[str(i)].ffn.set_stacked_experts(w1, w3, w2)
    del stacks
    missing, unexpected = piece.model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"weights of {units[0]}..{units[-1]} do not match the port: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    piece.prepare()
    return piece.eval()


def _example(piece: Piece, config: DeepseekV4Config) -> tuple[torch.Tensor, ...]:
    """Example inputs: TRACE_NEW new tokens after a cache that holds TRACE_TOKENS (so that every traced
    tensor is non-empty), batch TRACE_BATCH."""
    g = torch.Generator().manual_seed(1)
    hc, hd = config.hc_mult, config.hidden_size
    with torch.no_grad():
        warm_ids = torch.randint(2, config.vocab_size, (1, TRACE_TOKENS), generator=g)
        warm = (warm_ids, torch.ones_like(warm_ids), torch.arange(TRACE_TOKENS)[None]) if EMBED in piece.units else (
            (warm_ids, torch.randn(1, TRACE_TOKENS, hc, hd, generator=g), torch.arange(TRACE_TOKENS)[None])
            if piece.layer_ids else (torch.randn(1, TRACE_TOKENS, hc, hd, generator=g),))
        empty = piece.empty_state(1)
        out = piece(*warm, *empty.values())
        state = dict(zip(empty, out[len(out) - len(empty):]))
    batch = {k: v.expand(TRACE_BATCH, *v.shape[1:]).contiguous() for k, v in state.items()}
    ids = torch.randint(2, config.vocab_size, (TRACE_BATCH, TRACE_NEW), generator=g)
    pos = torch.arange(TRACE_TOKENS, TRACE_TOKENS + TRACE_NEW).expand(TRACE_BATCH, -1)
    streams = torch.randn(TRACE_BATCH, TRACE_NEW, hc, hd, generator=g)
    if EMBED in piece.units:
        first = (ids, torch.ones(TRACE_BATCH, TRACE_TOKENS + TRACE_NEW, dtype=torch.long), pos)
    else:
        first = (ids, streams, pos) if piece.layer_ids else (streams,)
    return (*first, *batch.values())


def _input_specs(piece: Piece, config: DeepseekV4Config) -> list[tuple[ov.PartialShape, ov.Type]]:
    seq = (ov.PartialShape([-1, -1]), ov.Type.i64)
    streams = (ov.PartialShape([-1, -1, config.hc_mult, config.hidden_size]), ov.Type.f32)
    first = [seq, seq, seq] if EMBED in piece.units else ([seq, streams, seq] if piece.layer_ids else [streams])
    specs = []
    for name, empty in piece.empty_state(1).items():
        # dynamic: batch, and the row axis of growing states (size 0 when empty); fixed: everything else
        grows = empty.dim() > 1 and empty.shape[1] == 0
        dims = [-1 if i == 0 or (i == 1 and grows) else d for i, d in enumerate(empty.shape)]
        specs.append((ov.PartialShape(dims), ov.Type.i32 if name == "length" else ov.Type.f32))
    return first + specs


def convert_piece(config: DeepseekV4Config, units: list[str], tensors: Tensors, first_stateful: bool,
                  prefill_only: bool = False) -> ov.Model:
    """Build, load and trace one piece; stateful (its guard chained after the previous piece's unless it
    is the first with states), or with its states bound to their initial values (`prefill_only`)."""
    piece = load_piece(config, units, tensors)
    states = {k: tuple(v.shape[1:]) for k, v in piece.empty_state(1).items()}
    inputs, outputs = piece.input_names(list(states)), piece.output_names(list(states))
    with torch.no_grad():
        ov_model = ov.convert_model(piece, example_input=_example(piece, config), input=_input_specs(piece, config))
    del piece
    name_ports(ov_model, inputs, outputs)
    make_topk_stable(ov_model)
    if prefill_only:
        if "position_ids" in inputs:  # positions come from the length state, zero here
            ov_model.remove_parameter(ov_model.input("position_ids").get_node())
        if states:
            bind_initial_states(ov_model, states)
    elif states:
        make_stateful(ov_model, states)
        if not first_stateful:
            chain_guard(ov_model)
    return ov_model


def convert_model(model: nn.Module, prefill_only: bool = False) -> ov.Model:
    """An in-memory port model (`DeepseekV4ForCausalLM`, FP32) traced as the one piece of every unit: the
    graph `export` builds for the same weights, stateful (or prefill-only), uncompressed."""
    config = model.config
    return convert_piece(config, units_of(config), model_tensors(model), first_stateful=True,
                         prefill_only=prefill_only)
