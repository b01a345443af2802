"""Trace the port piece by piece: each piece is a run of units (`embed`, `layers.i`, `head`) built with only
its own weights, traced, and made stateful on its own; `convert/stitch.py` joins the pieces' IR files.

    embed      input_ids, attention_mask, position_ids, beam_idx; state `length`
               -> streams [B, S, hc, hidden], positions [B, S], state_init_guard
    layers.i   input_ids, beam_idx, streams, positions, state_init_guard; states `layers.i.*`
               -> streams, state_init_guard (this piece's guard added)
    head       streams -> logits (and, for a target with an MTP drafter, `drafter_taps`: the final streams)
    mtp.j      input_ids (token t+1), drafter_taps (the target's final streams at t), beam_idx; states
               `mtp_length`, `mtp.j.*` -> logits (the MTP block's prediction of token t+2), state_init_guard:
               the drafter, a model of its own (`drafter_plan`), with its own copies of `embed` and `head`
    mtp.0..J   (a DSpark drafter: all stages in one piece) input_ids (the bonus token [B, 1]), drafter_taps
               (the target's taps of newly committed positions), beam_idx; states `mtp_length`,
               `mtp.j.context` -> draft_ids [B, K], logits [B, K, vocab], confidence [B, K], state_init_guard

For a target with a DSpark drafter, every piece holding a `dspark_target_layer_ids` layer also outputs
`drafter_taps`: the taps so far (streams after each target layer, averaged over the hc streams,
concatenated), read as an input by the next piece holding a target layer (a link, like `streams`); the last
one is the model's `drafter_taps` output.

A piece of several units runs them in that order inside one trace (the whole model is the one piece of
all units), so every plan gives the same graph: the same modules under the same official names
(`self.model.<official name>`), the same states and ports (`convert/stateful.py`).

No weight is read while tracing: the piece is built with stand-ins that cost no memory (zero-stride views;
the routed experts, in the grouped form over stacked `[E, out, in]` tensors, and the router traced with a
few experts, since that graph does not depend on E), and every weight enters the trace as an input, so the
IR has one Parameter per weight, with its real shape. `compress/weights.py` then binds each Parameter to
its constant, straight from the checkpoint, one tensor (or one chunk of experts) at a time.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from torch import nn

from deepseek_v4_ov.convert.stateful import (
    INPUT_PREFIX, OUTPUT_PREFIX, TAPS, bind_initial_states, chain_guard, make_stateful, make_topk_stable,
    name_ports,
)
from deepseek_v4_ov.model.configuration_deepseek_v4 import DSPARK, SLIDING, DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    Block, DSparkStage, HcHead, MTPBlock, RMSNorm, Rope, dspark_absorb, dspark_block, dspark_greedy, linear,
)

EMBED, HEAD = "embed", "head"
LENGTHS = ("length", "mtp_length")  # position counters: int32 states
TRACE_TOKENS, TRACE_BATCH, TRACE_NEW = 133, 2, 5  # trace from a cache holding 133 tokens, 5 new, batch 2
TRACE_VOCAB = 4096  # rows of the embed/head stand-ins (example ids stay below; shapes follow the bound weights)
LINKS = ("streams", "positions")  # piece outputs that later pieces read as inputs of the same name


def _slot(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the parameter or buffer `name` (dotted, relative to `root`) and its attribute."""
    owner, _, leaf = name.rpartition(".")
    return root.get_submodule(owner), leaf


def units_of(config: DeepseekV4Config) -> list[str]:
    return [EMBED, *(f"layers.{i}" for i in range(config.num_hidden_layers)), HEAD]


def plan(config: DeepseekV4Config, whole: bool = False) -> list[list[str]]:
    """The pieces of an export: one per unit (bounded memory: one layer's weights at a time), or one piece
    of every unit (`whole`)."""
    units = units_of(config)
    return [units] if whole else [[u] for u in units]


def drafter_plan(config: DeepseekV4Config) -> list[list[str]]:
    """The pieces of the drafter, with embed and head of its own: the MTP block `mtp.0` (depth 1), or every
    DSpark stage in one piece (a block runs through all of them in one call)."""
    if config.drafter is None:
        raise ValueError("the model has no drafter (no MTP block, no DSpark stages)")
    if config.drafter == DSPARK:
        return [[f"mtp.{j}" for j in range(config.drafter_blocks)]]
    return [["mtp.0"]]


def drafter_outputs(config: DeepseekV4Config) -> list[str]:
    """The drafter IR's outputs before its states: an MTP block's logits, or a DSpark block's drafts."""
    return ["draft_ids", "logits", "confidence"] if config.drafter == DSPARK else ["logits"]


class Piece(nn.Module):
    """Units of the port traced together. `model` holds their modules under the official names."""

    def __init__(self, config: DeepseekV4Config, units: list[str], taps: bool = False) -> None:
        super().__init__()
        hd, n = config.hidden_size, config.hc_mult
        # not `self.config`: OpenVINO's frontend would read its storage-only quantization_config
        self.model_config, self.units = config, units
        self.layer_ids = [int(u.split(".")[1]) for u in units if u.startswith("layers.")]
        self.mtp_ids = [int(u.split(".")[1]) for u in units if u.startswith("mtp.")]
        self.dspark = config.drafter == DSPARK
        if self.mtp_ids and units != (drafter_plan(config)[0] if self.dspark else [f"mtp.{self.mtp_ids[0]}"]):
            raise ValueError(f"a drafter is a piece of its own ({drafter_plan(config)[0]}), not {units}")
        # the target's outputs for its drafter: the final streams (MTP), or the DSpark taps of its layers
        self.taps = taps and HEAD in units and not self.dspark
        tap_ids = config.dspark_target_layer_ids if taps and self.dspark else []
        self.tap_layers = [i for i in self.layer_ids if i in tap_ids]
        self.taps_in = [i for i in tap_ids if self.tap_layers and i < self.tap_layers[0]]  # taps read as input
        self.model = nn.Module()
        if EMBED in units or self.mtp_ids:
            self.model.embed = nn.Embedding(config.vocab_size, hd)
        if self.layer_ids:
            self.model.layers = nn.ModuleDict(
                {str(i): Block(config, config.layer_types[i], hashed=i < config.num_hash_layers)
                 for i in self.layer_ids})
        if self.mtp_ids:
            last = config.drafter_blocks - 1
            self.model.mtp = nn.ModuleDict(
                {str(j): DSparkStage(config, config.mtp_layer_types[j], j == 0, j == last) if self.dspark
                 else MTPBlock(config, config.mtp_layer_types[j]) for j in self.mtp_ids})
            self.model.head = linear(hd, config.vocab_size)
        if HEAD in units:
            self.model.norm = RMSNorm(hd, config.rms_norm_eps)
            self.model.head = linear(hd, config.vocab_size)
            self.model.hc_head_fn = nn.Parameter(torch.zeros(n, n * hd))
            self.model.hc_head_base = nn.Parameter(torch.zeros(n))
            self.model.hc_head_scale = nn.Parameter(torch.ones(1))

    def empty_state(self, batch: int) -> dict[str, torch.Tensor]:
        """The piece's states at the start of a sequence (`length` int32: the CPU plugin holds no i64 state)."""
        state = {"length": torch.zeros(batch, dtype=torch.int32)} if EMBED in self.units else (
            {"mtp_length": torch.zeros(batch, dtype=torch.int32)} if self.mtp_ids else {})
        for prefix, block in self.blocks():
            state.update(block.attn.empty_state(prefix + ".", batch, None))
        return state

    def blocks(self) -> list[tuple[str, Block]]:
        """The piece's blocks by official prefix (`layers.3`, `mtp.0`)."""
        return [(f"layers.{i}", self.model.layers[str(i)]) for i in self.layer_ids] + [
            (f"mtp.{j}", self.model.mtp[str(j)]) for j in self.mtp_ids]

    def input_names(self, states: list[str]) -> list[str]:
        first = ["input_ids", "attention_mask", "position_ids"] if EMBED in self.units else (
            ["input_ids", TAPS] if self.mtp_ids else
            ["input_ids", "streams", "positions"] if self.layer_ids else ["streams"])
        return first + ([TAPS] if self.taps_in else []) + [INPUT_PREFIX + s for s in states]

    def output_names(self, states: list[str]) -> list[str]:
        if self.mtp_ids:
            first = drafter_outputs(self.model_config)
        else:
            first = ["logits"] if HEAD in self.units else (["streams", "positions"] if EMBED in self.units
                                                           else ["streams"])
            first += [TAPS] if self.taps or self.tap_layers else []
        return first + [OUTPUT_PREFIX + s for s in states]

    def take_weights_as_inputs(self, names: list[str]) -> None:
        """From now on the weights `names` (official names, and the stacked experts `expert_param`) are
        trailing forward inputs, so that a trace holds no weight: each becomes an IR Parameter, bound to
        its constant afterwards. The modules' parameters and buffers of those names become plain
        attributes, set from the inputs on every call (a trace sees them as graph inputs)."""
        self._weights = {}
        for name in names:
            module, leaf = _slot(self.model, name)
            value = module._parameters.pop(leaf, None)
            if value is None and leaf in module._buffers:
                value = module._buffers.pop(leaf)
            if value is not None:
                object.__setattr__(module, leaf, value)
            self._weights[name] = (module, leaf)

    def _set_weights(self, values: tuple[torch.Tensor, ...]) -> None:
        weights = dict(zip(self._weights, values, strict=True))
        for prefix, block in self.blocks():
            block.ffn.stacked = tuple(weights.pop(expert_param(prefix, k)) for k in ("w1", "w3", "w2"))
        for name, value in weights.items():
            module, leaf = self._weights[name]
            object.__setattr__(module, leaf, value)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._weights:
            self._set_weights(args[len(args) - len(self._weights):])
            args = args[: len(args) - len(self._weights)]
        names = [n.removeprefix(INPUT_PREFIX) for n in self.input_names(self._states)]
        x = dict(zip(names, args, strict=True))
        state = {n: x[n] for n in self._states}
        m, c = self.model, self.model_config
        if self.mtp_ids and self.dspark:  # DeepseekV4ForCausalLM.dspark_draft, on the drafter's own states
            stages, rope, bonus = [m.mtp[str(j)] for j in self.mtp_ids], self._ropes[SLIDING], x["input_ids"]
            dspark_absorb(stages, rope, x[TAPS], state)
            h, base = dspark_block(stages, m.embed, m.head, rope, c, bonus, state)
            return (*dspark_greedy(stages[-1], h, base, bonus), *(state[n] for n in self._states))
        if self.mtp_ids:  # DeepseekV4ForCausalLM.mtp_logits, on the drafter's own states
            (prefix, block), ids = self.blocks()[0], x["input_ids"]
            positions = _advance(state, "mtp_length", ids)
            h = block.combine(m.embed(ids), x[TAPS])
            h = block(h, positions, ids, self._ropes[block.layer_type], state, prefix + ".")
            return (self._logits(h, block, block.norm), *(state[n] for n in self._states))
        if EMBED in self.units:
            ids = x["input_ids"]
            positions = _advance(state, "length", ids)
            streams = m.embed(ids).unsqueeze(2).expand(-1, -1, c.hc_mult, -1).contiguous()
        else:
            streams, positions = x["streams"], x.get("positions")
        taps = x[TAPS] if self.taps_in else None
        for i, (prefix, block) in zip(self.layer_ids, self.blocks()):
            streams = block(streams, positions, x["input_ids"], self._ropes[block.layer_type], state, prefix + ".")
            if i in self.tap_layers:  # DeepseekV4Model.forward's dspark_hidden, one layer at a time
                tap = streams.float().mean(2)
                taps = tap if taps is None else torch.cat((taps, tap), -1)
        if HEAD in self.units:
            first = (self._logits(streams, m, m.norm),)
        else:
            first = (streams, positions) if EMBED in self.units else (streams,)
        first += (streams,) if self.taps else (taps,) if self.tap_layers else ()
        return (*first, *(state[n] for n in self._states))

    def _logits(self, streams: torch.Tensor, owner: nn.Module, norm: RMSNorm) -> torch.Tensor:
        """`owner`'s hc_head collapse, `norm`, the shared head: FP32 logits."""
        c = self.model_config
        y = HcHead.collapse(streams, owner.hc_head_fn, owner.hc_head_base, owner.hc_head_scale, c.rms_norm_eps,
                            c.hc_eps)
        return self.model.head(norm(y)).float()

    def prepare(self) -> None:
        """Ropes (one per layer kind, shared by the piece's layers) and the state order, after loading."""
        c = self.model_config
        self._ropes = {t: Rope(c.qk_rope_head_dim, c.rope_theta, None) if t == SLIDING
                       else Rope(c.qk_rope_head_dim, c.compress_rope_theta, c.yarn_scaling)
                       for t in {b.layer_type for _, b in self.blocks()}}
        self._states = list(self.empty_state(1))
        self._weights: dict[str, tuple[nn.Module, str]] = {}


def _advance(state: dict[str, torch.Tensor], key: str, ids: torch.Tensor) -> torch.Tensor:
    """Positions `[B, S]` of the new tokens `ids` from the int32 counter `state[key]`, which moves past them."""
    length = state[key].long()
    positions = length.unsqueeze(1) + torch.arange(ids.shape[1], device=ids.device)
    state[key] = (length + ids.shape[1]).int()
    return positions


def expert_param(block: str, proj: str) -> str:
    """Name of a block's (`layers.3`, `mtp.0`) stacked routed-expert input ([E, out, in]) in a traced piece."""
    return f"{block}.ffn.experts.{proj}"


def _trace_experts(config: DeepseekV4Config) -> int:
    """Routed experts of the traced stand-ins: few (the grouped form's graph does not depend on E), at least
    top-k; torch._grouped_mm needs real tensors for them."""
    return min(config.n_routed_experts, max(8, config.num_experts_per_tok))


def placeholder_piece(config: DeepseekV4Config, units: list[str], taps: bool = False
                      ) -> tuple[Piece, dict[str, torch.Tensor], dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """The piece with stand-in weights that cost no memory (zero-stride views; the stacked experts and the
    router cut to `_trace_experts`, embed and head to TRACE_VOCAB rows), the stand-ins by name, and every
    weight's real (shape, dtype)."""
    with torch.device("meta"):
        piece = Piece(config, units, taps)
    e, hd, inter, small = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size, \
        _trace_experts(config)
    stand_in, real = {}, {}
    for name, t in [*piece.model.named_parameters(), *piece.model.named_buffers()]:
        if ".experts." in name:
            continue
        shape = tuple(t.shape)
        real[name] = (shape, t.dtype)
        if name.endswith(("ffn.gate.weight", "ffn.gate.bias")):
            shape = (small, *shape[1:])
        if name in ("head.weight", "embed.weight") or ".markov_head." in name:  # a matmul/lookup would copy
            rows = TRACE_VOCAB  # a zero-stride stand-in of the whole vocabulary
            if name == "embed.weight" and piece.dspark and piece.mtp_ids:  # the block embeds the noise token
                rows = max(rows, config.dspark_noise_token_id + 1)
            shape = (min(shape[0], rows), *shape[1:])
        stand_in[name] = (torch.randint(0, small, shape) if name.endswith("tid2eid")
                          else torch.zeros((), dtype=t.dtype).expand(shape))
    for name, value in stand_in.items():  # assigned directly: the cut router and head differ in shape
        module, leaf = _slot(piece.model, name)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value
    for prefix, block in piece.blocks():
        shapes = {"w1": (inter, hd), "w3": (inter, hd), "w2": (hd, inter)}
        for k, shape in shapes.items():
            real[expert_param(prefix, k)] = ((e, *shape), torch.float32)
            stand_in[expert_param(prefix, k)] = torch.zeros(small, *shape)
        moe = block.ffn
        moe.set_stacked_experts(*(stand_in[expert_param(prefix, k)] for k in shapes))
        if moe.experts_implementation != "grouped":
            raise ValueError(f"{prefix}: routed experts of {hd}x{inter} cannot be traced in the grouped form "
                             "(torch._grouped_mm needs rows of a multiple of 16 bytes: hidden_size and "
                             "moe_intermediate_size multiples of 4)")
    piece.prepare()
    return piece.eval(), stand_in, real


def _example(piece: Piece, config: DeepseekV4Config) -> tuple[torch.Tensor, ...]:
    """Example inputs: TRACE_NEW new tokens after a cache that holds TRACE_TOKENS (so that every traced
    tensor is non-empty), batch TRACE_BATCH."""
    g = torch.Generator().manual_seed(1)
    hc, hd = config.hc_mult, config.hidden_size
    with torch.no_grad():
        warm_ids = torch.randint(2, min(config.vocab_size, TRACE_VOCAB), (1, TRACE_TOKENS), generator=g)
        if EMBED in piece.units:
            warm = (warm_ids, torch.ones_like(warm_ids), torch.arange(TRACE_TOKENS)[None])
        elif piece.mtp_ids and piece.dspark:
            warm = (warm_ids[:, -1:], _taps(1, TRACE_TOKENS, len(config.dspark_target_layer_ids), hd, g))
        else:
            warm_streams = torch.randn(1, TRACE_TOKENS, hc, hd, generator=g)
            warm = (warm_ids, warm_streams) if piece.mtp_ids else (
                (warm_ids, warm_streams, torch.arange(TRACE_TOKENS)[None]) if piece.layer_ids else (warm_streams,))
        warm += (_taps(1, TRACE_TOKENS, len(piece.taps_in), hd, g),) if piece.taps_in else ()
        empty = piece.empty_state(1)
        out = piece(*warm, *empty.values())
        state = dict(zip(empty, out[len(out) - len(empty):]))
    batch = {k: v.expand(TRACE_BATCH, *v.shape[1:]).contiguous() for k, v in state.items()}
    ids = torch.randint(2, min(config.vocab_size, TRACE_VOCAB), (TRACE_BATCH, TRACE_NEW), generator=g)
    pos = torch.arange(TRACE_TOKENS, TRACE_TOKENS + TRACE_NEW).expand(TRACE_BATCH, -1)
    streams = torch.randn(TRACE_BATCH, TRACE_NEW, hc, hd, generator=g)
    if EMBED in piece.units:
        first = (ids, torch.ones(TRACE_BATCH, TRACE_TOKENS + TRACE_NEW, dtype=torch.long), pos)
    elif piece.mtp_ids and piece.dspark:
        first = (ids[:, :1], _taps(TRACE_BATCH, TRACE_NEW, len(config.dspark_target_layer_ids), hd, g))
    else:
        first = (ids, streams) if piece.mtp_ids else (ids, streams, pos) if piece.layer_ids else (streams,)
    first += (_taps(TRACE_BATCH, TRACE_NEW, len(piece.taps_in), hd, g),) if piece.taps_in else ()
    return (*first, *batch.values())


def _taps(batch: int, seq: int, layers: int, hidden: int, g: torch.Generator) -> torch.Tensor:
    """Example DSpark taps of `layers` target layers."""
    return torch.randn(batch, seq, layers * hidden, generator=g)


def _input_specs(piece: Piece, config: DeepseekV4Config) -> list[tuple[ov.PartialShape, ov.Type]]:
    seq = (ov.PartialShape([-1, -1]), ov.Type.i64)
    streams = (ov.PartialShape([-1, -1, config.hc_mult, config.hidden_size]), ov.Type.f32)
    def taps(layers: int) -> tuple[ov.PartialShape, ov.Type]:
        return ov.PartialShape([-1, -1, layers * config.hidden_size]), ov.Type.f32

    if piece.mtp_ids and piece.dspark:
        first = [seq, taps(len(config.dspark_target_layer_ids))]
    else:
        first = [seq, seq, seq] if EMBED in piece.units else (
            [seq, streams] if piece.mtp_ids else [seq, streams, seq] if piece.layer_ids else [streams])
    first += [taps(len(piece.taps_in))] if piece.taps_in else []
    specs = []
    for name, empty in piece.empty_state(1).items():
        # dynamic: batch, and the row axis of growing states (size 0 when empty); fixed: everything else
        grows = empty.dim() > 1 and empty.shape[1] == 0
        dims = [-1 if i == 0 or (i == 1 and grows) else d for i, d in enumerate(empty.shape)]
        specs.append((ov.PartialShape(dims), ov.Type.i32 if name in LENGTHS else ov.Type.f32))
    return first + specs


def _own_tensor(ov_model: ov.Model, index: int) -> None:
    """Output `index` through a Convert of its own: in the head piece the final streams are the `streams`
    input itself, and an output must not share the input's tensor (and so its name). The Convert (f32 to
    f32) is the same in every cut of the model and costs nothing once compiled."""
    result = ov_model.outputs[index].get_node()
    value = result.input_value(0)
    result.input(0).replace_source_output(ops.convert(value, value.get_element_type()).output(0))
    ov_model.validate_nodes_and_infer_types()


def _resolve_reshapes(ov_model: ov.Model) -> None:
    """Write each Reshape target's -1 as the number it stands for where the input's static dims give it
    (`[0, 0, -1]` of `[?, ?, 4, 128]` -> `[0, 0, 512]`). The frontend writes either form, depending on
    what shape inference knew where it traced, so without this a piece and the whole model differ in a few
    shape constants; with it, any cut of the model has the same constants."""
    for op in ov_model.get_ops():
        if op.get_type_name() != "Reshape" or not op.get_attributes().get("special_zero"):
            continue
        target = op.input_value(1).get_node()
        if target.get_type_name() != "Constant":
            continue
        value = target.get_data()
        shape = op.input_value(0).get_partial_shape()
        if value.ndim != 1 or list(value).count(-1) != 1 or shape.rank.is_dynamic:
            continue
        dims = list(shape)
        zeros = {i for i, v in enumerate(value) if v == 0}
        if any(d.is_dynamic and i not in zeros for i, d in enumerate(dims)) or any(i >= len(dims) for i in zeros):
            continue
        total = int(np.prod([d.get_length() for i, d in enumerate(dims) if i not in zeros]))
        known = int(np.prod([v for i, v in enumerate(value) if i not in zeros and v != -1]))
        if known and total % known == 0:
            resolved = value.copy()
            resolved[list(value).index(-1)] = total // known
            op.input(1).replace_source_output(ops.constant(resolved).output(0))


def convert_piece(config: DeepseekV4Config, units: list[str], first_stateful: bool, prefill_only: bool = False,
                  taps: bool = False) -> ov.Model:
    """Trace one piece with stand-in weights: its weights are IR Parameters named by official name (and
    `expert_param` for the stacked routed experts), to be bound to constants by `compress/weights.py`.
    Stateful (its guard chained after the previous piece's unless it is the first with states), or with
    its states bound to their initial values (`prefill_only`). `taps`: the piece with the head also outputs
    the final streams as `drafter_taps` (what a drafter reads)."""
    piece, stand_in, real = placeholder_piece(config, units, taps)
    weights = list(stand_in)
    states = {k: tuple(v.shape[1:]) for k, v in piece.empty_state(1).items()}
    inputs, outputs = piece.input_names(list(states)), piece.output_names(list(states))
    specs = _input_specs(piece, config) + [
        (ov.PartialShape(list(real[n][0])), ov.Type.i64 if real[n][1] == torch.int64 else ov.Type.f32)
        for n in weights]
    with torch.no_grad():
        example = (*_example(piece, config), *stand_in.values())
        piece.take_weights_as_inputs(weights)
        ov_model = ov.convert_model(piece, example_input=example, input=specs)
    del piece, stand_in, example
    if TAPS in outputs:
        _own_tensor(ov_model, outputs.index(TAPS))
    name_ports(ov_model, inputs + weights, outputs)
    make_topk_stable(ov_model)
    _resolve_reshapes(ov_model)
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
    from deepseek_v4_ov.compress.weights import ModelWeights, bind_weights

    config = model.config
    ov_model = convert_piece(config, units_of(config), first_stateful=True, prefill_only=prefill_only)
    bind_weights(ov_model, ModelWeights(model))
    return ov_model
