"""Comparing two models' outputs: logits distances, top-k agreement, KL, greedy agreement.

Used by the parity harness and the tests. Inputs are FP32 arrays/tensors of logits `[..., vocab]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LogitStats:
    """How far `other` logits are from `reference` logits over all positions."""

    max_abs: float
    mean_abs: float
    top1_agreement: float
    top5_overlap: float
    kl_mean: float
    kl_max: float
    positions: int


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> LogitStats:
    """Distances between two logit tensors of the same shape `[..., vocab]`.

    top5_overlap is |top5(ref) ∩ top5(other)| / 5 averaged over positions; KL is KL(ref || other) of the
    softmax distributions, in nats.
    """
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    ref = reference.reshape(-1, reference.shape[-1]).double()
    oth = other.reshape(-1, other.shape[-1]).double()
    diff = (ref - oth).abs()
    top_ref, top_oth = ref.topk(5, -1).indices, oth.topk(5, -1).indices
    overlap = (top_ref.unsqueeze(-1) == top_oth.unsqueeze(-2)).any(-1).double().mean(-1)
    log_p, log_q = ref.log_softmax(-1), oth.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return LogitStats(
        max_abs=diff.max().item(),
        mean_abs=diff.mean().item(),
        top1_agreement=(top_ref[:, 0] == top_oth[:, 0]).double().mean().item(),
        top5_overlap=overlap.mean().item(),
        kl_mean=kl.mean().item(),
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
