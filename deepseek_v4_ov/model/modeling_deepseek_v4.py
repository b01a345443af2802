"""DeepSeek-V4 (Flash) in plain PyTorch, with official checkpoint parameter names.

Bundled into every exported folder next to `configuration_deepseek_v4.py` (loaded with
`trust_remote_code=True`), so it imports only torch, transformers and its sibling config.

Architecture (see V4_ARCHITECTURE.md): low-rank queries, one shared K=V head with attention sinks, partial
interleaved RoPE (YaRN on compressed layers), a sliding window on every layer plus, per layer kind
(`config.layer_types`), either nothing (sliding_attention), compressed sparse attention over 4-token
overlapping windows chosen by the lightning indexer (compressed_sparse_attention), or heavily compressed
attention over 128-token windows (heavily_compressed_attention); grouped low-rank output;
manifold-constrained hyper-connections (mHC, Sinkhorn-normalised) around every block; an MoE on every layer
(sqrtsoftplus scores, bias-corrected top-k or hash routing by token id, a shared expert, SwiGLU clamp); and
a drafter under `mtp.*`: the base release's multi-token-prediction (MTP) block, or the `-DSpark`/`-0731`
releases' DSpark block drafter (stages fed by tapped target layers, a Markov bigram head, a confidence head).

Decode state is a flat, ordered dict of tensors (`DeepseekV4Cache`), so that a traced graph can carry every
piece of it as an OpenVINO state. Lengths that decide tensor shapes are read from shapes (the open-window
rows of a compressor are exactly `L mod r` rows), never from Python counters; the absolute position is a
tensor (`length`). One forward serves prefill, chunked prefill and one-token decode.

Each piece of math is written once; what varies is chosen: the routed experts' form (`experts_implementation`
in the config, or `set_experts_implementation`: a per-expert loop in eager mode, grouped matmuls for
tracing, every expert densely for static shapes) and the state layout (`set_state_layout`: growing tensors,
the default and the stateful IR's, or fixed capacity with masks, the static-shape model's).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_deepseek_v4 import (
    COMPRESS_RATIOS, CSA, DSPARK, EXPERTS_IMPLEMENTATIONS, MTP, SLIDING, DeepseekV4Config,
)

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------------
# Small pieces
# ------------------------------------------------------------------------------------------------------
def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Unweighted RMSNorm in FP32 over the last axis."""
    x = x.float()
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Weighted RMSNorm computed in FP32, output in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (rms_normalize(x, self.eps) * self.weight.float()).to(x.dtype)


def linear(in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=False)


def rope_inv_freq(rope_dim: int, theta: float, yarn: dict | None) -> torch.Tensor:
    """Inverse frequencies of the `rope_dim/2` channel pairs, with YaRN's ramp blend when `yarn` is given.

    YaRN (compressed layers only): pairs below the `beta_fast` correction index keep the base frequency,
    pairs above the `beta_slow` index are divided by `factor`, a linear ramp in between. No mscale is applied
    to cos/sin (the attention scale stays head_dim^-0.5), as in both reference implementations.
    """
    base = 1.0 / theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)
    if not yarn:
        return base.float()
    factor = float(yarn["factor"])
    original = float(yarn["original_max_position_embeddings"])

    def correction_index(rotations: float) -> float:
        return rope_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_index(float(yarn.get("beta_fast", 32)))), 0)
    high = min(math.ceil(correction_index(float(yarn.get("beta_slow", 1)))), rope_dim - 1)
    if high == low:
        high += 0.001  # avoid a zero-width ramp (same guard as the reference implementations)
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return (base * (1 - ramp) + base / factor * ramp).float()


class Rope(nn.Module):
    """RoPE of one layer kind: main (sliding layers) or compress (CSA/HCA layers, YaRN). Called with
    positions, it gives the `Rotation` of rows at those positions."""

    def __init__(self, rope_dim: int, theta: float, yarn: dict | None) -> None:
        super().__init__()
        self.spec = (rope_dim, theta, yarn)
        self.register_buffer("inv_freq", rope_inv_freq(rope_dim, theta, yarn), persistent=False)
        self.by_width: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        """Recompute the frequencies (after the buffer was moved or filled in place)."""
        with torch.no_grad():
            self.inv_freq.copy_(rope_inv_freq(*self.spec))
        self.by_width.clear()

    def channels(self, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For rows `width` wide whose trailing `rope_dim` channels rotate as adjacent pairs: each channel's
        frequency (0 on the channels before them), the sign of its sine term (-1, +1 per pair; 0 before)
        and the index of its pair partner (itself before them). Made once per width from `inv_freq`, so
        that a trace holds them as constants."""
        key = (width, self.inv_freq.device)
        if key not in self.by_width:
            rope_dim = 2 * self.inv_freq.shape[0]
            if width < rope_dim:
                raise ValueError(f"RoPE over {rope_dim} channels of rows {width} wide")
            rest, device = width - rope_dim, self.inv_freq.device
            freq = torch.cat((torch.zeros(rest, device=device), self.inv_freq.float().repeat_interleave(2)))
            sign = torch.tensor([0.0] * rest + [-1.0, 1.0] * (rope_dim // 2), device=device)
            partner = torch.tensor([*range(rest), *(rest + (c ^ 1) for c in range(rope_dim))], device=device)
            self.by_width[key] = (freq, sign, partner)
        return self.by_width[key]

    def forward(self, positions: torch.Tensor) -> Rotation:
        return Rotation(positions, self)


class Rotation:
    """The rotation of rows at `positions [...]`: rows `[..., width]` (any axes between the positions' and
    the channels, e.g. heads) have their trailing `rope_dim` channels rotated as adjacent (interleaved)
    pairs by angle position x frequency. Per row width one cos and one signed-sin table `[..., width]` is
    made (cos = 1, sin = 0 on the channels that do not rotate), so a rotation is x * cos + partner(x) * sin:
    one gather and a fused multiply-add where the traced graph would otherwise slice, stack and concatenate."""

    def __init__(self, positions: torch.Tensor, rope: Rope) -> None:
        self.angles = positions.float().unsqueeze(-1)
        self.rope = rope
        self.tables: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def table(self, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if width not in self.tables:
            freq, sign, partner = self.rope.channels(width)
            angles = self.angles * freq
            self.tables[width] = (angles.cos(), angles.sin() * sign, partner)
        return self.tables[width]

    def __call__(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """x rotated (by the negative angle with `inverse`), computed in FP32, in x's dtype."""
        cos, sin, partner = self.table(x.shape[-1])
        while cos.dim() < x.dim():
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        rows = x.float()
        swapped = rows.index_select(-1, partner) * sin
        return (rows * cos - swapped if inverse else rows * cos + swapped).to(x.dtype)


# ------------------------------------------------------------------------------------------------------
# State layouts
# ------------------------------------------------------------------------------------------------------
def write_rows(buffer: torch.Tensor, rows: torch.Tensor, index: torch.Tensor,
               when: torch.Tensor | None = None) -> torch.Tensor:
    """`buffer [B, n, D]` with `rows [B, 1, D]` at slot `index [B, 1]`, only where `when [B, 1]` (a mask,
    no data-dependent shape)."""
    hit = torch.arange(buffer.shape[1], device=buffer.device).view(1, -1) == index
    if when is not None:
        hit = hit & when
    return torch.where(hit.unsqueeze(-1), rows.to(buffer.dtype), buffer)


class GrowingState:
    """Decode state as growing tensors (`DeepseekV4Cache`, the stateful IR), any number of tokens per call:
    the window keeps the last W-1 rows, compressed entries are appended, the open window's rows are exactly
    the `L mod r` pending rows.

    A state layout is the part of attention, compressor and indexer that stores and reads the state; the
    math around it is the modules' own. `set_state_layout` picks it."""

    @staticmethod
    def window(state: dict[str, torch.Tensor], name: str, kv: torch.Tensor, positions: torch.Tensor,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new K=V rows to the sliding window; return the keys `[B, K, D]` and their visibility
        `[B, S, K]` (the last `size` positions up to each query's own)."""
        past = state[name]
        keys = torch.cat((past, kv), 1)
        key_pos = positions[:, :1] - past.shape[1] + torch.arange(keys.shape[1], device=kv.device)
        delta = positions.unsqueeze(-1) - key_pos.unsqueeze(1)  # [B, S, K]
        state[name] = keys[:, -(size - 1) :] if size > 1 else keys[:, :0]
        return keys, (delta >= 0) & (delta < size)

    @staticmethod
    def open_windows(state: dict[str, torch.Tensor], prefix: str, kv: torch.Tensor, gate: torch.Tensor,
                     positions: torch.Tensor, ratio: int):
        """Add a compressor's new rows to its pending ones; return the windows they complete as
        `kv, gate [B, n, ratio, width]`, their indices `[B, n]` and completion (None: all complete)."""
        pending_kv, pending_gate = state[prefix + "pending_kv"], state[prefix + "pending_gate"]
        kv, gate = torch.cat((pending_kv, kv), 1), torch.cat((pending_gate, gate), 1)
        n_windows = kv.shape[1] // ratio
        used = n_windows * ratio
        state[prefix + "pending_kv"], state[prefix + "pending_gate"] = kv[:, used:], gate[:, used:]
        batch, width = kv.shape[0], kv.shape[2]
        kv = kv[:, :used].reshape(batch, n_windows, ratio, width)
        gate = gate[:, :used].reshape(batch, n_windows, ratio, width)
        # absolute index of every window completed here: the first row of `kv` sits at a window start
        windows = (positions[:, :1] - pending_kv.shape[1]) // ratio + torch.arange(n_windows, device=kv.device)
        return kv, gate, windows, None

    @staticmethod
    def previous_halves(state: dict[str, torch.Tensor], name: str, halves: torch.Tensor,
                        completed: torch.Tensor | None) -> torch.Tensor:
        """CSA overlap: for each window in `halves [B, n, r, d]` (its first halves), those of the window
        before it; the last window's become the state."""
        rows = torch.cat((state[name].unsqueeze(1), halves), 1)
        state[name] = rows[:, -1]
        return rows[:, :-1]

    @staticmethod
    def append(state: dict[str, torch.Tensor], name: str, rows: torch.Tensor, windows: torch.Tensor,
               completed: torch.Tensor | None) -> torch.Tensor:
        """Store new compressed entries (entry w of window w); return all entries so far."""
        rows = torch.cat((state[name], rows.to(state[name].dtype)), 1)
        state[name] = rows
        return rows

    @staticmethod
    def topk(scores: torch.Tensor, k: int) -> torch.Tensor:
        """Indexer picks: a fixed k over the entry axis padded with k -inf columns (picks past the visible
        count are invalid), so the graph never depends on how many entries exist."""
        return stable_topk_indices(F.pad(scores, (0, k), value=NEG_INF), k)


class FixedState:
    """Decode state of fixed capacity with masks (the static-shape, NPU-style model), one token per call:
    the window is a ring of W slots (slot t mod W), a compressor's open window r slots (slot t mod r), entry
    w is written at row w of a buffer sized for the capacity when window w completes. Every write is a
    masked select, so no shape depends on the position; zero state is the start of a sequence. Same
    methods as `GrowingState`."""

    @staticmethod
    def window(state, name, kv, positions, size):
        if not torch.jit.is_tracing() and kv.shape[1] != 1:
            raise ValueError(f"the fixed state layout takes one token per call, got {kv.shape[1]}")
        keys = write_rows(state[name], kv, positions % size)
        state[name] = keys
        slots = torch.arange(size, device=kv.device).view(1, -1)
        # slot s holds position t - ((t - s) mod W): valid once that is >= 0
        return keys, (positions - (positions - slots) % size >= 0).unsqueeze(1)

    @staticmethod
    def open_windows(state, prefix, kv, gate, positions, ratio):
        pending_kv = write_rows(state[prefix + "pending_kv"], kv, positions % ratio)
        pending_gate = write_rows(state[prefix + "pending_gate"], gate, positions % ratio)
        state[prefix + "pending_kv"], state[prefix + "pending_gate"] = pending_kv, pending_gate
        # the token's window, pooled from its slots in position order (meaningful once completed)
        windows, completed = torch.div(positions, ratio, rounding_mode="floor"), (positions + 1) % ratio == 0
        return pending_kv.unsqueeze(1), pending_gate.unsqueeze(1), windows, completed

    @staticmethod
    def previous_halves(state, name, halves, completed):
        previous = state[name]
        state[name] = torch.where(completed.unsqueeze(-1), halves[:, -1], previous)
        return previous.unsqueeze(1)

    @staticmethod
    def append(state, name, rows, windows, completed):
        rows = write_rows(state[name], rows, windows, completed)
        state[name] = rows
        return rows

    @staticmethod
    def topk(scores, k):
        return stable_topk_indices(scores, min(k, scores.shape[-1]))


STATE_LAYOUTS = {"growing": GrowingState(), "fixed": FixedState()}


# ------------------------------------------------------------------------------------------------------
# Compressor and lightning indexer
# ------------------------------------------------------------------------------------------------------
class Compressor(nn.Module):
    """Gated pooling of every `ratio` consecutive tokens into one `dim`-wide entry.

    Each token contributes projected rows c = wkv·x and gates z = wgate·x + ape[t mod ratio]; an entry is a
    per-channel softmax(z)-weighted sum of c over its window, RMS-normalised and RoPE'd at the position of
    the window's first token. With `overlap` (CSA, ratio 4) rows are 2*dim wide: entry w pools the first
    halves of window w-1 and the second halves of window w (8 slots per channel).

    State (all FP32, growing layout; see `FixedState` for the other): `pending_kv/pending_gate
    [B, L mod ratio, width]` rows of the open window, and for overlap `prev_kv/prev_gate [B, ratio, dim]`,
    the first halves of the last complete window (zeros at start; window 0 masks them out by position, so
    zero-initialised state is valid).
    """

    def __init__(self, config: DeepseekV4Config, ratio: int, dim: int, overlap: bool) -> None:
        super().__init__()
        self.ratio, self.dim, self.overlap = ratio, dim, overlap
        width = dim * (2 if self.overlap else 1)
        self.wkv = linear(config.hidden_size, width)
        self.wgate = linear(config.hidden_size, width)
        self.ape = nn.Parameter(torch.zeros(ratio, width))
        self.norm = RMSNorm(dim, config.rms_norm_eps)
        self.state_layout = STATE_LAYOUTS["growing"]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: Rope, state: dict[str, torch.Tensor],
                prefix: str, store: str) -> torch.Tensor:
        """Add x's rows; pool the windows they complete into entries, store them in `state[store]` and
        return all entries so far `[B, N, dim]`."""
        r, d, layout = self.ratio, self.dim, self.state_layout
        kv = F.linear(x.float(), self.wkv.weight.float())
        gate = F.linear(x.float(), self.wgate.weight.float()) + self.ape.float()[positions % r]
        kv, gate, windows, completed = layout.open_windows(state, prefix, kv, gate, positions, r)
        if self.overlap:
            prev_kv = layout.previous_halves(state, prefix + "prev_kv", kv[..., :d], completed)
            prev_gate = layout.previous_halves(state, prefix + "prev_gate", gate[..., :d], completed)
            first_halves_gate = prev_gate.masked_fill((windows == 0)[..., None, None], NEG_INF)
            kv = torch.cat((prev_kv, kv[..., d:]), 2)
            gate = torch.cat((first_halves_gate, gate[..., d:]), 2)
        entries = (gate.softmax(dim=2) * kv).sum(2)
        entries = self.norm(entries)
        return layout.append(state, store, rope(windows * r)(entries), windows, completed)

    def empty_state(self, prefix: str, batch: int, device: torch.device | None) -> dict[str, torch.Tensor]:
        width = self.dim * (2 if self.overlap else 1)
        state = {
            prefix + "pending_kv": torch.zeros(batch, 0, width, device=device),
            prefix + "pending_gate": torch.zeros(batch, 0, width, device=device),
        }
        if self.overlap:
            state[prefix + "prev_kv"] = torch.zeros(batch, self.ratio, self.dim, device=device)
            state[prefix + "prev_gate"] = torch.zeros(batch, self.ratio, self.dim, device=device)
        return state


def visible_entries(positions: torch.Tensor, count: int, ratio: int) -> torch.Tensor:
    """`[B, S, count]` bool: entry w is visible to the query at t iff its window ended at or before t."""
    entry = torch.arange(count, device=positions.device)
    return entry < torch.div(positions + 1, ratio, rounding_mode="floor").unsqueeze(-1)


def stable_topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values on the last axis; equal values are taken lowest index first.

    Index scores tie exactly (ReLU zeros, -inf), and `torch.topk` leaves the order of ties unspecified,
    so eager PyTorch uses a stable descending sort. Under tracing this stays `topk`, which the OpenVINO
    exporter marks stable (TopK-11 `stable=True`: the same rule), so the graph pays for a top-k, not a sort.
    """
    if torch.jit.is_tracing():
        return x.topk(k, dim=-1).indices
    return x.sort(dim=-1, descending=True, stable=True).indices[..., :k]


class Indexer(nn.Module):
    """Lightning indexer of CSA layers: picks the top-`index_topk` compressed entries for each query.

    score(t, s) = sum_h w_h(t) * ReLU(q_h(t) . K_s) / sqrt(index_head_dim), with w = weights_proj(x) /
    sqrt(index_n_heads) and K the indexer's own compressed keys. The top-k runs over a fixed k (see the
    state layout's `topk`), and picks at or beyond the query's visible count are invalid.
    """

    def __init__(self, config: DeepseekV4Config) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk = config.index_n_heads, config.index_head_dim, config.index_topk
        self.wq_b = linear(config.q_lora_rank, self.n_heads * self.head_dim)
        self.weights_proj = linear(config.hidden_size, self.n_heads)
        self.compressor = Compressor(config, COMPRESS_RATIOS[CSA], self.head_dim, overlap=True)
        self.state_layout = STATE_LAYOUTS["growing"]

    def scores(
        self, x: torch.Tensor, qr: torch.Tensor, positions: torch.Tensor, rope: Rope, keys: torch.Tensor
    ) -> torch.Tensor:
        """Index scores `[B, S, T]` (FP32), -inf where the entry is not yet visible."""
        batch, seq = x.shape[:2]
        q = rope(positions)(self.wq_b(qr).view(batch, seq, self.n_heads, self.head_dim)).float()
        weights = self.weights_proj(x).float() * self.n_heads**-0.5
        dots = shared_scores(q, keys.float()).relu() * self.head_dim**-0.5  # [B, S, H, T]
        scores = torch.matmul(weights.unsqueeze(-2), dots).squeeze(-2)
        return scores.masked_fill(~visible_entries(positions, keys.shape[1], self.compressor.ratio), NEG_INF)

    def forward(
        self,
        x: torch.Tensor,
        qr: torch.Tensor,
        positions: torch.Tensor,
        rope: Rope,
        state: dict[str, torch.Tensor],
        prefix: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return picked entry indices `[B, S, k]` and their validity."""
        keys = self.compressor(x, positions, rope, state, prefix + "index_", prefix + "index_keys")
        picks = self.state_layout.topk(self.scores(x, qr, positions, rope, keys), self.topk)
        valid = picks < torch.div(positions + 1, self.compressor.ratio, rounding_mode="floor").unsqueeze(-1)
        return picks, valid


# ------------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------------
def shared_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Queries `[B, S, H, D]` against K=V rows shared by every head `[B, K, D]`: `[B, S, H, K]`, one matmul
    whose batch axes broadcast (traced, an einsum would be decomposed with run-time Broadcasts of the rows to
    every head and query, and a dozen shape nodes)."""
    return torch.matmul(q, keys.unsqueeze(1).transpose(-1, -2))


def shared_mix(probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Weights `[B, S, H, K]` over rows shared by every head `[B, K, D]`: `[B, S, H, D]` (as `shared_scores`)."""
    return torch.matmul(probs, rows.unsqueeze(1))


class Attention(nn.Module):
    """V4 attention: sliding window for every layer, plus compressed entries on CSA/HCA layers.

    State (growing layout; see `FixedState` for the other): `window [B, min(L, W-1), D]` (RoPE'd K=V rows
    of the last W-1 tokens), and on compressed layers `entries [B, L//r, D]` plus the compressor's (and on
    CSA the indexer's) state.
    """

    def __init__(self, config: DeepseekV4Config, layer_type: str) -> None:
        super().__init__()
        self.ratio = COMPRESS_RATIOS[layer_type]
        self.n_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.window, self.groups = config.sliding_window, config.o_groups
        self.eps = config.rms_norm_eps
        hd = config.hidden_size
        self.wq_a = linear(hd, config.q_lora_rank)
        self.q_norm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.wq_b = linear(config.q_lora_rank, self.n_heads * self.head_dim)
        self.wkv = linear(hd, self.head_dim)
        self.kv_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.wo_a = linear(self.n_heads * self.head_dim // self.groups, self.groups * config.o_lora_rank)
        self.wo_b = linear(self.groups * config.o_lora_rank, hd)
        self.attn_sink = nn.Parameter(torch.zeros(self.n_heads))
        self.compressor = Compressor(config, self.ratio, self.head_dim, layer_type == CSA) if self.ratio else None
        self.indexer = Indexer(config) if layer_type == CSA else None
        self.state_layout = STATE_LAYOUTS["growing"]

    def kv_rows(self, x: torch.Tensor, rot: Rotation) -> torch.Tensor:
        """The shared K=V rows of `x` `[B, S, head_dim]`, RoPE'd."""
        return rot(self.kv_norm(self.wkv(x)))

    def queries(self, x: torch.Tensor, rot: Rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-rank query latent `qr` and the RMS-normalised, RoPE'd queries `[B, S, heads, head_dim]`."""
        batch, seq, _ = x.shape
        qr = self.q_norm(self.wq_a(x))
        q = self.wq_b(qr).view(batch, seq, self.n_heads, self.head_dim)
        return qr, rot(rms_normalize(q, self.eps).to(x.dtype))

    def with_sink(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """Softmax over the concatenated key scores `[B, S, H, *]` and the head's sink, which takes part in
        the denominator only (its column is returned last and never read)."""
        batch, seq = scores[0].shape[:2]
        sink = self.attn_sink.float().view(1, 1, -1, 1).expand(batch, seq, -1, 1)
        return torch.cat((*scores, sink), -1).softmax(-1)

    def output(self, out: torch.Tensor, rot: Rotation) -> torch.Tensor:
        """Inverse RoPE on the heads' outputs `[B, S, heads, head_dim]`, then the grouped low-rank output:
        group g (heads g*H/G ...) goes through its own block of rows of wo_a, as a linear of its own (traced,
        one weight matrix per group, which the exporter compresses and the CPU plugin runs as a compressed
        FullyConnected; a batched matmul over a [G, O, I] weight would be neither)."""
        batch, seq = out.shape[:2]
        out = rot(out, inverse=True).reshape(batch, seq, self.groups, -1)
        blocks = self.wo_a.weight.chunk(self.groups, 0)
        out = torch.cat([F.linear(o, w) for o, w in zip(out.unbind(2), blocks, strict=True)], -1)
        return self.wo_b(out)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: Rope,
        state: dict[str, torch.Tensor],
        prefix: str,
    ) -> torch.Tensor:
        batch = x.shape[0]
        rot = rope(positions)
        qr, q = self.queries(x, rot)
        kv = self.kv_rows(x, rot)

        # sliding window: W keys per query, the query's own token included
        keys, window_mask = self.state_layout.window(state, prefix + "window", kv, positions, self.window)
        scale = self.head_dim**-0.5
        scores = [shared_scores(q, keys).float().mul(scale).masked_fill(~window_mask[:, :, None], NEG_INF)]

        compressed = None
        if self.compressor is not None:
            entries = self.compressor(x, positions, rope, state, prefix, prefix + "entries").to(x.dtype)
            if self.indexer is not None:
                picks, valid = self.indexer(x, qr, positions, rope, state, prefix)
                n = entries.shape[1]
                padded = F.pad(entries, (0, 0, 0, 1))  # [B, N + 1, D]: invalid picks read the zero row
                rows = torch.where(valid, picks, n) + (n + 1) * torch.arange(batch, device=x.device).view(-1, 1, 1)
                compressed = padded.flatten(0, 1)[rows]  # [B, S, k, D]: one gather of the picked rows
                c_scores = torch.matmul(q, compressed.transpose(-1, -2))  # each query its own k rows
                c_mask = valid
            else:
                compressed = entries  # [B, N, D]: HCA attends to every visible entry
                c_scores = shared_scores(q, entries)
                c_mask = visible_entries(positions, entries.shape[1], self.ratio)
            scores.append(c_scores.float().mul(scale).masked_fill(~c_mask[:, :, None], NEG_INF))

        probs = self.with_sink(scores).to(x.dtype)
        n_win = keys.shape[1]
        out = shared_mix(probs[..., :n_win], keys)
        if compressed is not None:
            c_probs = probs[..., n_win:-1]
            out = out + (torch.matmul(c_probs, compressed) if self.indexer is not None
                         else shared_mix(c_probs, compressed))
        return self.output(out, rot)

    def empty_state(self, prefix: str, batch: int, device: torch.device | None) -> dict[str, torch.Tensor]:
        state = {prefix + "window": torch.zeros(batch, 0, self.head_dim, device=device)}
        if self.compressor is not None:
            state.update(self.compressor.empty_state(prefix, batch, device))
            state[prefix + "entries"] = torch.zeros(batch, 0, self.head_dim, device=device)
        if self.indexer is not None:
            state.update(self.indexer.compressor.empty_state(prefix + "index_", batch, device))
            state[prefix + "index_keys"] = torch.zeros(batch, 0, self.indexer.head_dim, device=device)
        return state


class DSparkAttention(Attention):
    """Attention of a DSpark stage (no compressor, no indexer, no window of its own): the draft block's rows
    attend, non-causally, to the stage's context ring and to every row of the block; the sink takes part in
    the denominator only.

    The context ring holds `kv_norm(wkv(main_x))`, RoPE'd at its position, for the last W committed target
    positions (`main_x`: the target's tapped hidden states projected by stage 0, see `DSparkStage`); it is
    written by `absorb` before the block is drafted. State: `context [B, min(L, W), head_dim]`.
    """

    def __init__(self, config: DeepseekV4Config) -> None:
        super().__init__(config, SLIDING)

    def absorb(self, main_x: torch.Tensor, positions: torch.Tensor, rope: Rope, state: dict[str, torch.Tensor],
               prefix: str) -> None:
        """Add the K=V rows of newly committed positions `[B, n]` to the ring, keeping the last W."""
        rows = torch.cat((state[prefix + "context"], self.kv_rows(main_x, rope(positions))), 1)
        state[prefix + "context"] = rows[:, -self.window :]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: Rope, state: dict[str, torch.Tensor],
                prefix: str) -> torch.Tensor:
        rot = rope(positions)
        _, q = self.queries(x, rot)
        keys = torch.cat((state[prefix + "context"], self.kv_rows(x, rot)), 1)  # ring, then the block
        scores = shared_scores(q, keys).float().mul(self.head_dim**-0.5)
        probs = self.with_sink([scores]).to(x.dtype)
        return self.output(shared_mix(probs[..., :-1], keys), rot)

    def empty_state(self, prefix: str, batch: int, device: torch.device | None) -> dict[str, torch.Tensor]:
        return {prefix + "context": torch.zeros(batch, 0, self.head_dim, device=device)}


# ------------------------------------------------------------------------------------------------------
# MoE
# ------------------------------------------------------------------------------------------------------
def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """SwiGLU with V4's clamp: gate clamped from above, up from both sides, at `limit` (0: no clamp)."""
    if limit > 0:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return F.silu(gate) * up


def grouped_mm_supported(weight: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes this expert matrix: rows and columns 16-byte aligned (on CPU)."""
    return hasattr(torch, "_grouped_mm") and all(d * weight.element_size() % 16 == 0 for d in weight.shape[-2:])


def check_experts_implementation(name: str) -> None:
    if name not in EXPERTS_IMPLEMENTATIONS:
        raise ValueError(f"experts_implementation {name!r}: choose one of {', '.join(EXPERTS_IMPLEMENTATIONS)}")


class Expert(nn.Module):
    """SwiGLU expert with V4's clamp at `swiglu_limit`."""

    def __init__(self, hidden: int, inter: int, limit: float) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = linear(hidden, inter), linear(inter, hidden), linear(hidden, inter)
        self.limit = limit

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        hidden = swiglu(self.w1(x), self.w3(x), self.limit)
        if weight is not None:  # routing weight applied before w2, as the official code does
            hidden = hidden * weight.to(hidden.dtype)
        return self.w2(hidden)


class Gate(nn.Module):
    """Router. Learned layers pick top-k of score + bias (bias used for selection only); hash layers
    take the experts from the fixed `tid2eid[token_id]` table. Weights are the picked scores, renormalised
    (sigmoid and sqrtsoftplus; softmax is not, as in the official code), times `routed_scaling_factor`."""

    def __init__(self, config: DeepseekV4Config, hashed: bool) -> None:
        super().__init__()
        self.topk, self.scoring = config.num_experts_per_tok, config.scoring_func
        self.scale = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size))
        self.hashed = hashed
        if hashed:
            self.register_buffer("tid2eid", torch.zeros(config.vocab_size, self.topk, dtype=torch.long))
        else:
            self.bias = nn.Parameter(torch.zeros(config.n_routed_experts))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[N, hidden]`, input_ids `[N]` -> expert indices `[N, k]`, weights `[N, k]` (FP32)."""
        logits = F.linear(x.float(), self.weight.float())
        if self.scoring == "softmax":
            scores = logits.softmax(-1)
        elif self.scoring == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = F.softplus(logits).sqrt()
        if self.hashed:
            picks = self.tid2eid[input_ids]
        else:
            picks = (scores + self.bias.float()).topk(self.topk, dim=-1).indices
        weights = scores.gather(-1, picks)
        if self.scoring != "softmax":
            weights = weights / weights.sum(-1, keepdim=True)
        return picks, weights * self.scale


class MoE(nn.Module):
    """Routed experts plus one shared expert.

    The routed experts run in one of three forms (`experts_implementation`, from the config or
    `set_experts_implementation`), with the same math and the same result up to FP32 summation order:
    - "loop" (eager default): tokens gathered per expert, so an expert nobody picked does no work and reads
      no weights;
    - "grouped" (tracing): grouped matmuls over expert-sorted (token, expert) slots, see `grouped_experts`;
    - "dense" (static shapes): every expert on every token, an unpicked expert with routing weight 0.
    """

    def __init__(self, config: DeepseekV4Config, hashed: bool) -> None:
        super().__init__()
        hd, inter, self.limit = config.hidden_size, config.moe_intermediate_size, config.swiglu_limit
        self.gate = Gate(config, hashed)
        self.experts = nn.ModuleList(Expert(hd, inter, self.limit) for _ in range(config.n_routed_experts))
        self.shared_experts = Expert(hd, inter, self.limit)
        # (w1, w3, w2) `[E, out, in]` for the grouped form: plain tensors, not parameters (no state-dict
        # entries; a trace captures them as constants), either given or a copy of `experts`
        self.stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.stacked_given = False
        self.experts_implementation = self.usable_form(config.experts_implementation)

    def usable_form(self, name: str) -> str:
        """`name`, validated; "loop" instead of "grouped" (with a warning) where grouped_mm cannot run."""
        check_experts_implementation(name)
        if name == "grouped" and not grouped_mm_supported(self.stacked[0] if self.stacked_given
                                                          else self.experts[0].w1.weight):
            warnings.warn("DeepSeek-V4 MoE: expert dims not 16-byte aligned for torch._grouped_mm; "
                          "the routed experts keep the per-expert loop", stacklevel=3)
            return "loop"
        if name != "grouped" and self.stacked_given:
            raise ValueError(f"experts_implementation {name!r}: this MoE holds only stacked expert weights "
                             "(set_stacked_experts), which only the 'grouped' form runs")
        return name

    def set_experts_implementation(self, name: str) -> None:
        """Switch the routed experts' form (see the class docstring). A stacked copy of `experts` is made
        afresh here for "grouped" (so that a trace that follows captures it as constants, current with the
        weights) and dropped for the other forms."""
        self.experts_implementation = self.usable_form(name)
        if not self.stacked_given:
            self.stacked = None
            if self.experts_implementation == "grouped":
                self.stacked_weights()

    def set_stacked_experts(self, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> None:
        """Hold the routed experts as stacked weights (w1, w3 `[E, inter, hidden]`, w2 `[E, hidden, inter]`,
        kept as given, not copied) and run them grouped; the per-expert modules are dropped. Where grouped_mm
        cannot take them, per-expert modules are filled from them instead and the loop runs (with a warning)."""
        n_experts, inter, hidden = w1.shape
        if w3.shape != w1.shape or w2.shape != (n_experts, hidden, inter) or n_experts != self.gate.weight.shape[0]:
            raise ValueError(f"set_stacked_experts: shapes w1 {tuple(w1.shape)}, w3 {tuple(w3.shape)}, "
                             f"w2 {tuple(w2.shape)} do not fit {self.gate.weight.shape[0]} experts")
        self.stacked, self.stacked_given = (w1, w3, w2), True
        if self.usable_form("grouped") == "grouped":
            self.experts, self.experts_implementation = nn.ModuleList(), "grouped"
            return
        self.stacked, self.stacked_given = None, False
        self.experts = nn.ModuleList(Expert(hidden, inter, self.limit) for _ in range(n_experts))
        with torch.no_grad():
            for e, expert in enumerate(self.experts):
                for w, stack in zip((expert.w1, expert.w3, expert.w2), (w1, w3, w2)):
                    w.weight.copy_(stack[e])
        self.experts_implementation = "loop"

    def stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w1, w3, w2) `[E, out, in]`: as given to `set_stacked_experts`, else stacked from `experts` once
        (kept until the form is set again)."""
        if self.stacked is None:
            with torch.no_grad():
                self.stacked = tuple(torch.stack([getattr(e, n).weight.detach() for e in self.experts])
                                     for n in ("w1", "w3", "w2"))
        return self.stacked

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        picks, weights = self.gate(x, input_ids.reshape(-1))
        if self.experts_implementation == "grouped":
            out = self.grouped_experts(x, picks, weights)
        elif self.experts_implementation == "dense":
            out = self.dense_experts(x, picks, weights)
        else:
            out = self.loop_experts(x, picks, weights)
        out = out + self.shared_experts(x).float()
        return out.to(x.dtype).view(shape)

    def loop_experts(self, x: torch.Tensor, picks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Routed output `[N, hidden]` (FP32): each expert on the tokens that picked it."""
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(picks == e)
            out = out.index_add(0, token, expert(x[token], weights[token, slot].unsqueeze(-1)).float())
        return out

    def dense_experts(self, x: torch.Tensor, picks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Routed output with every expert on every token; an unpicked expert gets routing weight 0 (exactly
        no contribution), so no shape depends on the routing."""
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(self.experts):
            out = out + expert(x, (weights * (picks == e)).sum(-1, keepdim=True)).float()
        return out

    def grouped_experts(self, x: torch.Tensor, picks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Routed output as grouped matmuls over the N*k (token, expert) slots sorted by expert.

        Why: traced, the loop is a dynamic-shape block per expert per layer, which OpenVINO's CPU plugin runs
        on every call whether picked or not. `torch._grouped_mm` (transformers' `grouped_mm` experts form)
        becomes opset17 `GroupedMatMul` over one `[E, out, in]` constant per projection, which the CPU plugin
        lowers to `GatherMatmul`: a fixed op count per layer whatever E, and N*k rows of work. The stacked
        constants have no `self.*` name; the precision policy names them from their consumer
        (`<layers.N.ffn>/aten::_grouped_mm`). The "tiled" form of optimum-intel's `ov_batched_mm` patch is not
        used: the CPU plugin fuses it only when Swish feeds on the gate MatMul directly, and V4's clamps sit
        in between (it stays dense over all E experts).
        """
        w1, w3, w2 = self.stacked_weights()
        k = picks.shape[-1]
        slots = picks.reshape(-1)
        order = torch.argsort(slots, stable=True)
        experts = torch.arange(w1.shape[0], dtype=slots.dtype, device=slots.device)
        offs = torch.searchsorted(slots[order], experts, right=True).to(torch.int32)  # end of each expert's group
        token = torch.div(order, k, rounding_mode="floor")
        xs = x[token]
        hidden = swiglu(torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs),
                        torch._grouped_mm(xs, w3.transpose(1, 2), offs=offs), self.limit)
        hidden = hidden * weights.reshape(-1)[order].unsqueeze(-1).to(hidden.dtype)
        y = torch._grouped_mm(hidden, w2.transpose(1, 2), offs=offs)
        # back to (token, slot) order and summed over the k slots: a gather and a sum, where a scatter-add
        # into zeros would be a run-time Broadcast of [N, hidden] zeros and of its [N*k, hidden] index
        return y.float()[torch.argsort(order)].view(-1, k, y.shape[-1]).sum(1)


def set_experts_implementation(module: nn.Module, name: str) -> None:
    """Run every `MoE` under `module` in the form `name` ("loop", "grouped" or "dense"; see `MoE`).
    "grouped" falls back to "loop", with a warning, where torch._grouped_mm cannot take the expert dims."""
    check_experts_implementation(name)
    for moe in module.modules():
        if isinstance(moe, MoE):
            moe.set_experts_implementation(name)


def set_state_layout(module: nn.Module, name: str) -> None:
    """Store and read the decode state of every attention, compressor and indexer under `module` in the
    layout `name`: "growing" (`GrowingState`, the default) or "fixed" (`FixedState`)."""
    if name not in STATE_LAYOUTS:
        raise ValueError(f"state layout {name!r}: choose one of {', '.join(STATE_LAYOUTS)}")
    for m in module.modules():
        if isinstance(m, (Attention, Compressor, Indexer)):
            m.state_layout = STATE_LAYOUTS[name]


# ------------------------------------------------------------------------------------------------------
# Hyper-connections and blocks
# ------------------------------------------------------------------------------------------------------
def sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Softmax over the last axis, then alternate column/row normalisation (`iters` column passes,
    `iters-1` row passes, column first), each with `eps` in the denominator."""
    comb = logits.softmax(-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return comb


def hc_mix(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """Mixing logits of the flattened streams `[B, S, n*hidden]` (unweighted RMS, FP32) against `fn`."""
    flat = streams.flatten(2).float()
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    return F.linear(flat, fn) * rsqrt


def hc_collapse(streams: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the n streams `[B, S, n, hidden]` with weights `[B, S, n]`, in FP32."""
    return (pre.unsqueeze(-1) * streams.float()).sum(2).to(streams.dtype)


class Block(nn.Module):
    """One decoder layer: mHC-wrapped attention, then mHC-wrapped MoE."""

    def __init__(self, config: DeepseekV4Config, layer_type: str, hashed: bool) -> None:
        super().__init__()
        n, hd = config.hc_mult, config.hidden_size
        self.n, self.layer_type = n, layer_type
        self.eps, self.hc_eps, self.iters = config.rms_norm_eps, config.hc_eps, config.hc_sinkhorn_iters
        self.attn = Attention(config, layer_type)
        self.ffn = MoE(config, hashed)
        self.attn_norm = RMSNorm(hd, config.rms_norm_eps)
        self.ffn_norm = RMSNorm(hd, config.rms_norm_eps)
        mix = (2 + n) * n
        for site in ("attn", "ffn"):
            setattr(self, f"hc_{site}_fn", nn.Parameter(torch.zeros(mix, n * hd)))
            setattr(self, f"hc_{site}_base", nn.Parameter(torch.zeros(mix)))
            setattr(self, f"hc_{site}_scale", nn.Parameter(torch.ones(3)))

    def hc_pre(self, streams: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Collapse the streams into the block input; return it with the post weights and the comb matrix."""
        n = self.n
        fn, base, scale = (getattr(self, f"hc_{site}_{k}").float() for k in ("fn", "base", "scale"))
        mix = hc_mix(streams, fn, self.eps)
        pre = torch.sigmoid(mix[..., :n] * scale[0] + base[:n]) + self.hc_eps
        post = 2 * torch.sigmoid(mix[..., n : 2 * n] * scale[1] + base[n : 2 * n])
        comb_logits = (mix[..., 2 * n :] * scale[2] + base[2 * n :]).unflatten(-1, (n, n))
        comb = sinkhorn(comb_logits, self.iters, self.hc_eps)
        return hc_collapse(streams, pre), post, comb

    @staticmethod
    def hc_post(out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        """X'_k = post_k * out + sum_j comb[j, k] * X_j (comb applied transposed), in FP32."""
        mixed = torch.matmul(comb.transpose(-1, -2), streams.float())
        return (post.unsqueeze(-1) * out.float().unsqueeze(2) + mixed).to(streams.dtype)

    def forward(
        self,
        streams: torch.Tensor,
        positions: torch.Tensor,
        input_ids: torch.Tensor,
        rope: Rope,
        state: dict[str, torch.Tensor],
        prefix: str,
    ) -> torch.Tensor:
        x, post, comb = self.hc_pre(streams, "attn")
        streams = self.hc_post(self.attn(self.attn_norm(x), positions, rope, state, prefix), streams, post, comb)
        x, post, comb = self.hc_pre(streams, "ffn")
        return self.hc_post(self.ffn(self.ffn_norm(x), input_ids), streams, post, comb)


class HcHead(nn.Module):
    """Final stream collapse: `pre`-weighted sum of the streams (no post/comb)."""

    @staticmethod
    def add_parameters(owner: nn.Module, n: int, hidden: int) -> None:
        """`owner.hc_head_{fn,base,scale}`: the model's own, and each MTP block's / last DSpark stage's."""
        owner.hc_head_fn = nn.Parameter(torch.zeros(n, n * hidden))
        owner.hc_head_base = nn.Parameter(torch.zeros(n))
        owner.hc_head_scale = nn.Parameter(torch.ones(1))

    @staticmethod
    def collapse(streams, fn, base, scale, norm_eps: float, hc_eps: float) -> torch.Tensor:
        mix = hc_mix(streams, fn.float(), norm_eps)
        pre = torch.sigmoid(mix * scale.float() + base.float()) + hc_eps
        return hc_collapse(streams, pre)


class MTPBlock(Block):
    """Multi-token prediction block `mtp.J`: combines the main model's final streams at position t with
    the embedding of token t+1, runs one sliding-window block, and predicts token t+2 through its own
    hc_head and norm and the shared `head`."""

    def __init__(self, config: DeepseekV4Config, layer_type: str) -> None:
        super().__init__(config, layer_type, hashed=False)
        hd, n = config.hidden_size, config.hc_mult
        self.e_proj, self.h_proj = linear(hd, hd), linear(hd, hd)
        self.enorm = RMSNorm(hd, config.rms_norm_eps)
        self.hnorm = RMSNorm(hd, config.rms_norm_eps)
        self.norm = RMSNorm(hd, config.rms_norm_eps)
        HcHead.add_parameters(self, n, hd)

    def combine(self, embedded: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
        """The block's input streams: the embedding of token t+1 `[B, S, hidden]` (enorm, e_proj) added to
        each of the main model's final streams at t `[B, S, hc_mult, hidden]` (hnorm, h_proj)."""
        return self.e_proj(self.enorm(embedded)).unsqueeze(2) + self.h_proj(self.hnorm(streams))


class MarkovHead(nn.Module):
    """DSpark's bigram correction: draft k's logits get `markov_w2(markov_w1[x_{k-1}])`, where x_{k-1} is
    the token before it (the bonus token for k = 1, else the previous draft)."""

    def __init__(self, vocab_size: int, rank: int) -> None:
        super().__init__()
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = linear(rank, vocab_size)


class ConfidenceHead(nn.Module):
    """DSpark's acceptance estimate of draft k: `sigmoid(proj([h_k; markov_w1[x_{k-1}]]))`, h_k the last
    stage's collapsed streams before `norm`. It bounds how many drafts are verified, never which."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = linear(width, 1)


class DSparkStage(Block):
    """One stage `mtp.J` of the DSpark block drafter (`-DSpark`/`-0731` releases): a sliding-window block
    whose attention is `DSparkAttention`, routed by score (no hashing). Stage 0 also holds `main_proj`
    (tapped target hidden states `[.., n_targets*hidden]` -> hidden) and `main_norm`; the last stage holds
    `norm`, its own `hc_head_*`, the `markov_head` and the `confidence_head` (one stage can be both)."""

    def __init__(self, config: DeepseekV4Config, layer_type: str, first: bool, last: bool) -> None:
        super().__init__(config, layer_type, hashed=False)
        hd, n, rank = config.hidden_size, config.hc_mult, config.dspark_markov_rank
        self.attn = DSparkAttention(config)
        if first:
            self.main_proj = linear(len(config.dspark_target_layer_ids) * hd, hd)
            self.main_norm = RMSNorm(hd, config.rms_norm_eps)
        if last:
            self.norm = RMSNorm(hd, config.rms_norm_eps)
            HcHead.add_parameters(self, n, hd)
            self.markov_head = MarkovHead(config.vocab_size, rank)
            self.confidence_head = ConfidenceHead(hd + rank)


def dspark_absorb(stages: nn.ModuleList, rope: Rope, taps: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
    """The target's taps `[B, n, n_targets*hidden]` of n newly committed positions: `main_x =
    main_norm(main_proj(.))` (stage 0) enters every stage's context ring at positions `mtp_length ...`, which
    then advances by n. The drafter's state only ever holds committed positions: it never rolls back."""
    positions = state["mtp_length"].unsqueeze(1) + torch.arange(taps.shape[1], device=taps.device)
    main_x = stages[0].main_norm(stages[0].main_proj(taps))
    for j, stage in enumerate(stages):
        stage.attn.absorb(main_x, positions, rope, state, f"mtp.{j}.")
    state["mtp_length"] = state["mtp_length"] + taps.shape[1]


def dspark_block(stages: nn.ModuleList, embed: nn.Embedding, head: nn.Linear, rope: Rope, config: DeepseekV4Config,
                 bonus_ids: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The block `[bonus, noise x (K-1)]` at positions p+1..p+K (p = the last absorbed position) through the
    stages (`rope`: plain, no YaRN): the last stage's collapsed streams before `norm`, `h` `[B, K, hidden]`,
    and the base logits `U = head(norm(h))` `[B, K, vocab]` (FP32)."""
    c, last, k = config, stages[-1], config.dspark_block_size
    positions = state["mtp_length"].unsqueeze(1) + torch.arange(k, device=bonus_ids.device)
    ids = torch.cat((bonus_ids, bonus_ids.new_full((bonus_ids.shape[0], k - 1), c.dspark_noise_token_id)), 1)
    x = embed(ids).unsqueeze(2).expand(-1, -1, c.hc_mult, -1).contiguous()
    for j, stage in enumerate(stages):
        x = stage(x, positions, ids, rope, state, f"mtp.{j}.")
    h = HcHead.collapse(x, last.hc_head_fn, last.hc_head_base, last.hc_head_scale, c.rms_norm_eps, c.hc_eps)
    return h, head(last.norm(h)).float()


def dspark_heads(last: DSparkStage, h: torch.Tensor, base: torch.Tensor, previous: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with the Markov bias, `U_k + markov_w2(markov_w1[previous_k])`, and the confidences
    `sigmoid(proj([h_k; markov_w1[previous_k]]))`, for given previous tokens `[B, K]` (drafting feeds them
    one at a time; training feeds the true ones)."""
    e = last.markov_head.markov_w1(previous)
    logits = base + last.markov_head.markov_w2(e).float()
    confidence = torch.sigmoid(last.confidence_head.proj(torch.cat((h.float(), e.float()), -1)).float())
    return logits, confidence.squeeze(-1)


def dspark_greedy(last: DSparkStage, h: torch.Tensor, base: torch.Tensor, bonus_ids: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left to right, x_k = argmax of draft k's logits with the Markov bias of x_{k-1} (x_0 = the bonus):
    tokens `[B, K]`, their logits `[B, K, vocab]`, confidences `[B, K]`."""
    previous, logits, tokens, confidence = bonus_ids, [], [], []
    for i in range(h.shape[1]):
        step_logits, step_confidence = dspark_heads(last, h[:, i : i + 1], base[:, i : i + 1], previous)
        previous = step_logits.argmax(-1)
        logits.append(step_logits)
        tokens.append(previous)
        confidence.append(step_confidence)
    return torch.cat(tokens, 1), torch.cat(logits, 1), torch.cat(confidence, 1)


# ------------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------------
class DeepseekV4Cache:
    """Every piece of decode state as a named tensor, batch first.

    Names: `length` (tokens seen per row, int64 `[B]`), `mtp_length`, and per layer `layers.{i}.window`,
    `...entries`, `...pending_kv`, `...pending_gate`, `...prev_kv`, `...prev_gate`, `...index_keys`,
    `...index_pending_kv`, ... (and `mtp.{j}.*`: an MTP block's window state, or a DSpark stage's
    `context` ring; `mtp_length` counts the positions the drafter has absorbed). Growing axes (axis 1) start empty; the window stops
    growing at W-1 rows, entries grow as L/4 and L/128, pending rows stay below the ratio.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.tensors["length"][0])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the new state is row beam_idx[i] of the old one."""
        self.tensors = {k: v.index_select(0, beam_idx.to(v.device)) for k, v in self.tensors.items()}

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.tensors = {k: v.repeat_interleave(repeats, dim=0) for k, v in self.tensors.items()}

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.tensors = {k: v[indices] for k, v in self.tensors.items()}

    @property
    def is_compileable(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.tensors)


# ------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------
@dataclass
class DeepseekV4Output(ModelOutput):
    """`logits` (CausalLM only), the final `hidden_states` (after hc_head and norm), the final mHC
    `streams` `[B, S, hc_mult, hidden]` (input of the MTP block), with a DSpark drafter `dspark_hidden`
    `[B, S, n_targets*hidden]` (the streams after each `dspark_target_layer_ids` layer, averaged over the
    hc_mult streams and concatenated: the DSpark drafter's input), and the updated cache."""

    logits: torch.FloatTensor | None = None
    past_key_values: DeepseekV4Cache | None = None
    hidden_states: torch.FloatTensor | None = None
    streams: torch.FloatTensor | None = None
    dspark_hidden: torch.FloatTensor | None = None


@dataclass
class DSparkDraft(ModelOutput):
    """One drafted block: greedy `tokens` `[B, K]` (x_1..x_K after the bonus token), their `logits`
    `[B, K, vocab]` (Markov bias included) and `confidence` `[B, K]`."""

    tokens: torch.LongTensor | None = None
    logits: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None


class DeepseekV4PreTrainedModel(PreTrainedModel):
    config_class = DeepseekV4Config
    config: DeepseekV4Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block", "MTPBlock", "DSparkStage"]
    _supports_cache_class = False
    _is_stateful = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, made strict: a checkpoint tensor that is missing or has the wrong shape is
        an error naming it (transformers would only warn and leave a random tensor in its place)."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # so that the report reaches us, to raise with the names
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = [k for k in info.get("missing_keys", ()) if not k.startswith("head.") or cls is not DeepseekV4Model]
        mismatched = [k if isinstance(k, str) else " ".join(map(str, k)) for k in info.get("mismatched_keys", ())]
        if missing or mismatched:
            raise ValueError(
                f"{cls.__name__}.from_pretrained({args[0] if args else ''}): checkpoint does not fit the config: "
                + "; ".join(f"missing tensor {k}" for k in missing)
                + ("; " if missing and mismatched else "")
                + "; ".join(f"wrong shape: {k}" for k in mismatched)
            )
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random, non-degenerate initialisation of every parameter (fan-in scaled linears, norms near 1,
        random sinks, position biases, gate biases, mHC parameters and hash tables).

        Tensors that transformers marks as loaded (`_is_hf_initialized`) are left alone, so this only
        fills what a checkpoint did not provide; RoPE tables (non-persistent) are always recomputed.
        """

        def fill(tensor: torch.Tensor, how) -> None:
            if not getattr(tensor, "_is_hf_initialized", False):
                how(tensor)

        if isinstance(module, nn.Linear):
            fill(module.weight, lambda w: w.normal_(0.0, module.in_features**-0.5))
        elif isinstance(module, nn.Embedding):
            fill(module.weight, lambda w: w.normal_(0.0, 1.0))
        elif isinstance(module, RMSNorm):
            fill(module.weight, lambda w: w.normal_(1.0, 0.1))
        elif isinstance(module, Rope):
            module.reset()
        elif isinstance(module, Compressor):
            fill(module.ape, lambda w: w.normal_(0.0, 0.5))
        elif isinstance(module, Attention):
            fill(module.attn_sink, lambda w: w.normal_(0.0, 1.0))
        elif isinstance(module, Gate):
            fill(module.weight, lambda w: w.normal_(0.0, w.shape[1] ** -0.5))
            if module.hashed:
                n_experts = module.weight.shape[0]
                fill(module.tid2eid, lambda t: t.copy_(torch.rand(t.shape[0], n_experts).argsort(-1)[:, : t.shape[1]]))
            else:
                fill(module.bias, lambda w: w.normal_(0.0, 0.1))
        if isinstance(module, (Block, DeepseekV4Model)):
            for name, param in module.named_parameters(recurse=False):
                if name.endswith("_fn"):
                    fill(param, lambda w: w.normal_(0.0, w.shape[1] ** -0.5))
                elif name.endswith("_base"):
                    fill(param, lambda w: w.normal_(0.0, 0.5))
                elif name.endswith("_scale"):
                    fill(param, lambda w: w.uniform_(0.5, 1.5))


class DeepseekV4Model(DeepseekV4PreTrainedModel):
    """The V4 trunk with official parameter names at the top level (`embed`, `layers.N.*`, `norm`,
    `hc_head_*`, `mtp.J.*`), returning the final hidden states and streams."""

    def __init__(self, config: DeepseekV4Config) -> None:
        super().__init__(config)
        hd, n = config.hidden_size, config.hc_mult
        self.embed = nn.Embedding(config.vocab_size, hd)
        self.layers = nn.ModuleList(
            Block(config, kind, hashed=i < config.num_hash_layers) for i, kind in enumerate(config.layer_types)
        )
        self.norm = RMSNorm(hd, config.rms_norm_eps)
        HcHead.add_parameters(self, n, hd)
        kinds = config.mtp_layer_types
        if config.drafter == DSPARK:
            self.mtp = nn.ModuleList(DSparkStage(config, k, j == 0, j == len(kinds) - 1) for j, k in enumerate(kinds))
        else:
            self.mtp = nn.ModuleList(MTPBlock(config, kind) for kind in kinds)
        rope_dim = config.qk_rope_head_dim
        self.rope_main = Rope(rope_dim, config.rope_theta, None)
        self.rope_compress = Rope(rope_dim, config.compress_rope_theta, config.yarn_scaling)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def rope_for(self, layer_type: str) -> Rope:
        return self.rope_main if layer_type == SLIDING else self.rope_compress

    def empty_cache(self, batch_size: int, device: torch.device | None = None) -> DeepseekV4Cache:
        """A fresh cache: every state at the start of a sequence."""
        tensors = {
            "length": torch.zeros(batch_size, dtype=torch.long, device=device),
            "mtp_length": torch.zeros(batch_size, dtype=torch.long, device=device),
        }
        for prefix, block in self.named_blocks():
            tensors.update(block.attn.empty_state(prefix, batch_size, device))
        return DeepseekV4Cache(tensors)

    def named_blocks(self) -> list[tuple[str, Block]]:
        return [(f"layers.{i}.", b) for i, b in enumerate(self.layers)] + [
            (f"mtp.{j}.", b) for j, b in enumerate(self.mtp)
        ]

    def positions_for(
        self,
        input_ids: torch.Tensor,
        cache: DeepseekV4Cache,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        length_key: str = "length",
    ) -> torch.Tensor:
        """Absolute positions of the new tokens `[B, S]`, from the cache's length.

        Padding is refused rather than silently mishandled: the compressors would pool pad tokens into
        entries, so a left-padded row cannot equal the same row alone. Explicit `position_ids` must agree
        with the cache.
        """
        seq = input_ids.shape[1]
        positions = cache.tensors[length_key].unsqueeze(1) + torch.arange(seq, device=input_ids.device)
        if not torch.jit.is_tracing():
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError(
                    "DeepSeek-V4: padded batches are not supported (compressors would pool pad tokens into "
                    "entries, so a padded row cannot match the same row alone); run rows of equal length "
                    "without padding, or one row at a time."
                )
            if position_ids is not None and not torch.equal(position_ids.to(positions), positions):
                raise ValueError(
                    "DeepSeek-V4: `position_ids` disagree with the cache length "
                    f"({cache.tensors[length_key][0].item()} tokens seen); positions are derived from the cache."
                )
        return positions

    def trunk(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: DeepseekV4Cache,
        layer_streams: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Embedding and all decoder layers: return the final streams `[B, S, hc_mult, hidden]`.

        `layer_streams`, if given, receives the streams after every layer (for drift diagnostics)."""
        h = self.embed(input_ids)
        streams = h.unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1).contiguous()
        for i, block in enumerate(self.layers):
            rope = self.rope_for(block.layer_type)
            streams = block(streams, positions, input_ids, rope, cache.tensors, f"layers.{i}.")
            if layer_streams is not None:
                layer_streams.append(streams)
        return streams

    def head_hidden(self, streams: torch.Tensor, owner: nn.Module, norm: RMSNorm) -> torch.Tensor:
        """hc_head collapse with `owner`'s hc_head_* parameters, then `norm`."""
        c = self.config
        y = HcHead.collapse(streams, owner.hc_head_fn, owner.hc_head_base, owner.hc_head_scale,
                            c.rms_norm_eps, c.hc_eps)
        return norm(y)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DeepseekV4Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> DeepseekV4Output:
        cache = past_key_values if past_key_values is not None else self.empty_cache(input_ids.shape[0], input_ids.device)
        positions = self.positions_for(input_ids, cache, attention_mask, position_ids)
        layer_streams = [] if self.config.drafter == DSPARK else None
        streams = self.trunk(input_ids, positions, cache, layer_streams)
        cache.tensors["length"] = cache.tensors["length"] + input_ids.shape[1]
        hidden = self.head_hidden(streams, self, self.norm)
        taps = None
        if layer_streams is not None:
            taps = torch.cat([layer_streams[i].float().mean(2) for i in self.config.dspark_target_layer_ids], -1)
        return DeepseekV4Output(past_key_values=cache, hidden_states=hidden, streams=streams, dspark_hidden=taps)


class DeepseekV4ForCausalLM(DeepseekV4Model, GenerationMixin):
    """DeepseekV4Model plus the output `head`; official names throughout (no `model.` prefix)."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: DeepseekV4Config) -> None:
        super().__init__(config)
        self.head = linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not create a DynamicCache: the model builds its own state

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: DeepseekV4Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> DeepseekV4Output:
        out = super().forward(input_ids, attention_mask, position_ids, past_key_values)
        hidden = out.hidden_states[:, -logits_to_keep:] if logits_to_keep else out.hidden_states
        out.logits = self.head(hidden).float()
        if use_cache is False:
            out.past_key_values = None
        return out

    def mtp_logits(
        self, streams: torch.Tensor, next_input_ids: torch.LongTensor, cache: DeepseekV4Cache, depth: int = 0
    ) -> torch.Tensor:
        """Logits of the MTP block `mtp.{depth}`: for each position t, the main model's final streams at t
        (`streams`, from `forward(...).streams`) with `next_input_ids[:, t]` = token t+1 predict token t+2.

        `cache` carries the MTP block's own window state (`mtp.J.*`, position counter `mtp_length`); feed
        consecutive chunks as for the main model. Returns FP32 logits `[B, S, vocab]`.
        """
        if self.config.drafter != MTP:
            raise ValueError(f"mtp_logits: this model's drafter is {self.config.drafter!r}, not the MTP block")
        block = self.mtp[depth]
        positions = self.positions_for(next_input_ids, cache, None, None, "mtp_length")
        x = block.combine(self.embed(next_input_ids), streams)
        x = block(x, positions, next_input_ids, self.rope_for(block.layer_type), cache.tensors, f"mtp.{depth}.")
        cache.tensors["mtp_length"] = cache.tensors["mtp_length"] + next_input_ids.shape[1]
        return self.head(self.head_hidden(x, block, block.norm)).float()

    def dspark_absorb(self, dspark_hidden: torch.Tensor, cache: DeepseekV4Cache) -> None:
        """Feed the DSpark drafter the target's taps `[B, n, n_targets*hidden]` (`forward(...).dspark_hidden`)
        of the n positions committed since the last call (`dspark_absorb` below)."""
        dspark_absorb(self.mtp, self.rope_for(SLIDING), dspark_hidden, cache.tensors)

    def dspark_block(self, bonus_ids: torch.LongTensor, cache: DeepseekV4Cache) -> tuple[torch.Tensor, torch.Tensor]:
        """The draft block through the stages: `h` and base logits (`dspark_block` below)."""
        return dspark_block(self.mtp, self.embed, self.head, self.rope_for(SLIDING), self.config, bonus_ids,
                            cache.tensors)

    def dspark_heads(self, h: torch.Tensor, base: torch.Tensor, previous: torch.LongTensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits with the Markov bias and confidences for given previous tokens (`dspark_heads` below)."""
        return dspark_heads(self.mtp[-1], h, base, previous)

    def dspark_draft(self, dspark_hidden: torch.Tensor, bonus_ids: torch.LongTensor,
                     cache: DeepseekV4Cache) -> DSparkDraft:
        """Absorb the newly committed positions' taps (`dspark_absorb`), then draft one block greedily:
        `dspark_block`, then left to right x_k = argmax of draft k's logits with the Markov bias of x_{k-1}
        (x_0 = `bonus_ids` `[B, 1]`, the target's token after the last committed position)."""
        if self.config.drafter != DSPARK:
            raise ValueError(f"dspark_draft: this model's drafter is {self.config.drafter!r}, not DSpark")
        self.dspark_absorb(dspark_hidden, cache)
        h, base = self.dspark_block(bonus_ids, cache)
        return DSparkDraft(*dspark_greedy(self.mtp[-1], h, base, bonus_ids))

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: DeepseekV4Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> dict:
        """Feed only the tokens the cache has not seen."""
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.get_seq_length() :]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": kwargs.get("use_cache", True),
        }


__all__ = [
    "DSparkDraft",
    "DeepseekV4PreTrainedModel",
    "DeepseekV4Model",
    "DeepseekV4ForCausalLM",
    "DeepseekV4Cache",
    "set_experts_implementation",
    "set_state_layout",
]
