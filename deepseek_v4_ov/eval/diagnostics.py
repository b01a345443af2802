"""How close a forward pass came to flipping one of V4's discrete choices.

V4 picks indexer top-k entries and router top-k experts. Two correct implementations that round
differently agree only while every such choice has a margin larger than their rounding noise; when a
choice is a near-tie, a flip moves later logits by O(1). `decision_margins` measures, for one input, the
smallest gap between the k-th and (k+1)-th candidate of every choice, so tests and the parity report can
say whether a mismatch may be a flipped tie.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4Model, Gate, Indexer


@dataclass
class Margins:
    """Smallest top-k gaps seen (inf when a kind of choice never had more candidates than k)."""

    indexer: float = float("inf")
    router: float = float("inf")
    indexer_choices: int = 0
    router_choices: int = 0

    def closest(self) -> float:
        return min(self.indexer, self.router)


def topk_gap(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the gap between the k-th and (k+1)-th largest finite score (+inf if fewer than k+1)."""
    finite = torch.isfinite(scores)
    ranked = scores.masked_fill(~finite, float("-inf")).sort(-1, descending=True).values
    if ranked.shape[-1] <= k:
        return torch.full(ranked.shape[:-1], float("inf"))
    gap = ranked[..., k - 1] - ranked[..., k]
    return gap.masked_fill(finite.sum(-1) <= k, float("inf"))


@contextmanager
def recording(model: DeepseekV4Model, margins: Margins) -> Iterator[None]:
    """Record indexer and learned-router gaps of every forward call inside the block."""
    originals: list[tuple[Indexer, object]] = []
    hooks = []

    def wrap(indexer: Indexer):
        score_fn = indexer.scores

        def scores(*args, **kwargs):
            s = score_fn(*args, **kwargs)
            gaps = topk_gap(s.detach().float(), indexer.topk)
            real = gaps[torch.isfinite(gaps)]
            margins.indexer_choices += real.numel()
            if real.numel():
                margins.indexer = min(margins.indexer, real.min().item())
            return s

        return scores

    def on_gate(gate: Gate, inputs, _output) -> None:
        if gate.hashed:
            return
        x = inputs[0].detach().float()
        logits = x @ gate.weight.float().T
        scores = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid()}.get(
            gate.scoring, torch.nn.functional.softplus(logits).sqrt()
        )
        gaps = topk_gap(scores + gate.bias.float(), gate.topk)
        margins.router_choices += gaps.numel()
        margins.router = min(margins.router, gaps.min().item())

    for module in model.modules():
        if isinstance(module, Indexer):
            originals.append((module, module.scores))
            module.scores = wrap(module)
        elif isinstance(module, Gate):
            hooks.append(module.register_forward_hook(on_gate))
    try:
        yield
    finally:
        for module, fn in originals:
            module.scores = fn
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def decision_margins(model: DeepseekV4Model, input_ids: torch.Tensor) -> Margins:
    """Margins of one full prefill of `input_ids`."""
    margins = Margins()
    with recording(model, margins):
        model(input_ids)
    return margins
