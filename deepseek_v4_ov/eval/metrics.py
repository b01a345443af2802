"""Comparing two models' outputs: logits distances, top-k agreement, KL, greedy agreement.

Used by the parity harness, the demo, the quality table and the tests. Inputs are FP32 arrays/tensors of
logits `[..., vocab]`. The users' figures are those of llama.cpp's `llama-perplexity --kl-divergence`,
over every (teacher-forced) position pooled: mean and 99th-percentile KL(reference || other) in nats, and
the share of positions whose top-1 token is the same (`same_top1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LogitStats:
    """How far `other` logits are from `reference` logits over all positions."""

    max_abs: float
    mean_abs: float
    same_top1: float
    top5_overlap: float
    kl_mean: float
    kl_p99: float
    kl_max: float
    positions: int


def _rows(logits) -> torch.Tensor:
    parts = logits if isinstance(logits, (list, tuple)) else [logits]
    return torch.cat([torch.as_tensor(np.asarray(p)).reshape(-1, p.shape[-1]).double() for p in parts])


def compare_logits(reference, other) -> LogitStats:
    """Distances between two logit tensors of the same shape `[..., vocab]`, or between two lists of them
    (pooled over every position of every pair).

    top5_overlap is |top5(ref) ∩ top5(other)| / 5 averaged over positions; KL is KL(ref || other) of the
    softmax distributions, in nats, per position (mean, 99th percentile, max).
    """
    listed = isinstance(reference, (list, tuple))
    if listed and len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference logit tensors vs {len(other)}")
    for r, o in zip(reference, other) if listed else [(reference, other)]:
        if r.shape != o.shape:
            raise ValueError(f"logit shapes differ: {tuple(r.shape)} vs {tuple(o.shape)}")
    ref, oth = _rows(reference), _rows(other)
    diff = (ref - oth).abs()
    top_ref, top_oth = ref.topk(5, -1).indices, oth.topk(5, -1).indices
    overlap = (top_ref.unsqueeze(-1) == top_oth.unsqueeze(-2)).any(-1).double().mean(-1)
    log_p, log_q = ref.log_softmax(-1), oth.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return LogitStats(
        max_abs=diff.max().item(),
        mean_abs=diff.mean().item(),
        same_top1=(top_ref[:, 0] == top_oth[:, 0]).double().mean().item(),
        top5_overlap=overlap.mean().item(),
        kl_mean=kl.mean().item(),
        kl_p99=kl.quantile(0.99).item(),
        kl_max=kl.max().item(),
        positions=ref.shape[0],
    )


def agreeing_prefix(reference: list[int], other: list[int]) -> int:
    """Number of leading tokens on which two greedy continuations agree."""
    n = 0
    for a, b in zip(reference, other):
        if a != b:
            break
        n += 1
    return n


def prompt_set(vocab_size: int, lengths: tuple[int, ...], seed: int = 0, first_id: int = 2) -> list[torch.Tensor]:
    """Fixed, seeded prompts `[1, n]` of the given lengths (ids from `first_id`, so bos/eos never appear)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(first_id, vocab_size, (1, n), generator=g) for n in lengths]
