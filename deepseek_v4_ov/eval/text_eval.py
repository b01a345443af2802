"""Held-out text figures for the parity suite and the demo: perplexity, decision margins, MTP accuracy.

Perplexity of a model on a prompt is exp(mean NLL of token t+1 under the logits at t) over every prompt
position, pooled over prompts (total NLL / total predicted tokens). It is computed from the same prompt
logits the parity suite already compares, for PyTorch and for each IR alike.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def nll_sum(logits: np.ndarray | torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """(sum of -log p(ids[t+1] | logits[t]), count) for one row: logits `[1, S, V]`, ids `[1, S]`."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)[0, :-1]
    target = ids[0, 1:].long()
    return float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")), int(target.numel())


def perplexity(logits: list, prompts: list[torch.Tensor]) -> float:
    parts = [nll_sum(lg, ids) for lg, ids in zip(logits, prompts)]
    return math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))


def margin(logits_row: torch.Tensor | np.ndarray) -> float:
    """Top-1 minus top-2 logit of one position `[V]`: how far the greedy decision is from a tie."""
    top = torch.as_tensor(np.asarray(logits_row)).double().topk(2).values
    return float(top[0] - top[1])


def first_disagreement(reference: list[int], other: list[int]) -> int | None:
    """Index of the first differing token, or None when the runs agree on every token."""
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            return i
    return None


@torch.no_grad()
def mtp_accuracy(model, prompts: list[torch.Tensor]) -> dict | None:
    """The MTP block's top-1 accuracy on token t+2 (from the streams at t and token t+1) beside the main
    model's top-1 accuracy on token t+1, over every prompt position where both targets exist; PyTorch, FP32.
    None when the model has no MTP block."""
    if not len(getattr(model, "mtp", ())):
        return None
    hits_mtp = hits_main = total = 0
    for ids in prompts:
        out = model(ids)
        mtp = model.mtp_logits(out.streams[:, :-1], ids[:, 1:], out.past_key_values)  # position t -> token t+2
        target2 = ids[0, 2:]
        hits_mtp += int((mtp[0, :-1].argmax(-1) == target2).sum())
        hits_main += int((out.logits[0, :-2].argmax(-1) == ids[0, 1:-1]).sum())
        total += int(target2.numel())
    return {"mtp_top1_t+2": hits_mtp / total, "main_top1_t+1": hits_main / total, "positions": total}


def heldout_prompts(model_dir: Path, count: int, length: int) -> list[torch.Tensor]:
    """`count` windows of `length` tokens of the shipped held-out Python source (`deepseek_v4_ov/toys/data/heldout.txt`),
    encoded with `model_dir`'s own tokenizer."""
    from deepseek_v4_ov.toys.trained import heldout_windows

    from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer

    return heldout_windows(load_hf_tokenizer(Path(model_dir)), count, length)
