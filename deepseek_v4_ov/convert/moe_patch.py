"""Export-time MoE form: routed experts as grouped matmuls over expert-sorted token slots.

Why. The port's `MoE.forward` loops over every expert (`torch.where(picks == e)` + `index_add`). Traced, that is a
dynamic-shape block per expert per layer: the IR grows linearly in the number of experts and the CPU plugin
executes every block on every call (about 65 us per expert per layer even when no token picked it), so decode
does not follow the active experts.

The form used here, for tracing only (eager PyTorch keeps the port's loop):

    slots  = picks.flatten()                      # N*k (token, expert) slots
    order  = argsort(slots)                       # slots grouped by expert
    offs   = searchsorted(slots[order], 0..E-1, right=True)    # cumulative end offset of each expert's group
    xs     = x[order // k]                        # [N*k, hidden]
    h      = silu(min(g, L)) * clamp(u, -L, L) * weight[order],  g/u = grouped_mm(xs, W1/W3^T, offs)
    y      = grouped_mm(h, W2^T, offs)            # [N*k, hidden]
    out    = zeros[N, hidden].index_add(0, order // k, y) + shared(x)

`torch._grouped_mm` is what transformers 5's `grouped_mm` experts implementation calls; OpenVINO's PyTorch
frontend translates `aten::_grouped_mm` to opset17 `GroupedMatMul` (weights as one constant `[E, out, in]` per
projection), and the CPU plugin's `ConvertGroupedMatMulToGatherMatmul` lowers that to its `GatherMatmul` node
(SearchSorted on the offsets gives each row its expert; each row is multiplied by that expert's weights only).
So the graph has a fixed number of ops per layer whatever E is, and the work is N*k rows, for prefill and
decode alike. NNCF 3.4 compresses `GroupedMatMul` weights (`OVGroupedMatMulMetatype`, per-[expert, out-channel]
scales) and the CPU plugin has `GatherMatmulCompressed` for the result.

Not used, and why: the "tiled" form optimum-intel's `ov_batched_mm` patch produces for qwen3_moe/gpt-oss
(tokens tiled E times, batched matmuls over all experts, dense routing weights scattered with
ScatterElementsUpdate, ReduceSum over experts) is fused by the CPU plugin's `ConvertTiledMoeBlockTo3GatherMatmuls`
only when Swish feeds on the gate MatMul directly and the up MatMul feeds the SwiGLU Multiply directly; V4's
SwiGLU clamps sit in between, so the block stays dense (checked here: 3 GatherMatmul without clamps, dense
FullyConnected over all E experts with them). The 2-GEMM (gpt-oss) variant that allows clamps did not fire on
2026.4.1 either for V4's form (fused gate_up, zero biases, beta-1 Swish).

Constants: the stacked weights are plain tensors captured by the trace (no `self.*` name), so
`compression.resolve` names them from their consumer (`<layers.N.ffn>/aten::_grouped_mm`) as the routed experts.

`torch._grouped_mm` on CPU needs 16-byte aligned rows: hidden and moe_intermediate_size multiples of 4 (all
presets and the release). Otherwise the patch leaves the loop in place (and says so).
"""

from __future__ import annotations

import types
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from deepseek_v4_ov.model.modeling_deepseek_v4 import MoE

_STACK = "_ov_grouped_experts"


def supported(moe: MoE) -> bool:
    w1 = moe.experts[0].w1.weight
    return hasattr(torch, "_grouped_mm") and all(d * w1.element_size() % 16 == 0 for d in w1.shape)


def stack_experts(moe: MoE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w1, w3, w2 of the routed experts stacked `[E, out, in]` (detached copies)."""
    with torch.no_grad():
        return tuple(torch.stack([getattr(e, n).weight.detach() for e in moe.experts]).contiguous()
                     for n in ("w1", "w3", "w2"))


def grouped_forward(self: MoE, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`MoE.forward` as grouped matmuls over expert-sorted slots; same result as the loop (up to FP32
    summation order of the k slots)."""
    w1, w3, w2 = getattr(self, _STACK)
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    picks, weights = self.gate(x, input_ids.reshape(-1))
    k = picks.shape[-1]
    slots = picks.reshape(-1)
    order = torch.argsort(slots, stable=True)
    experts = torch.arange(w1.shape[0], dtype=slots.dtype, device=slots.device)
    offs = torch.searchsorted(slots[order], experts, right=True).to(torch.int32)
    token = torch.div(order, k, rounding_mode="floor")
    xs = x[token]
    gate = torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs)
    up = torch._grouped_mm(xs, w3.transpose(1, 2), offs=offs)
    limit = self.shared_experts.limit
    if limit > 0:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    hidden = F.silu(gate) * up
    hidden = hidden * weights.reshape(-1)[order].unsqueeze(-1).to(hidden.dtype)
    y = torch._grouped_mm(hidden, w2.transpose(1, 2), offs=offs)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add(0, token, y.float())
    out = out + self.shared_experts(x).float()
    return out.to(x.dtype).view(shape)


@contextmanager
def grouped_moe(model: nn.Module, enabled: bool = True):
    """Within the block, every `MoE` of `model` runs `grouped_forward` (instance attribute; the class and
    eager use outside the block are untouched) and its `experts` list is set aside. Stacked weights are made
    once on entry, dropped on exit, when everything is put back."""
    moes = [m for m in model.modules() if isinstance(m, MoE)] if enabled else []
    patched, hidden = [], {}
    try:
        for m in moes:
            if not supported(m):
                warnings.warn("moe_patch: expert dims not 16-byte aligned for torch._grouped_mm; "
                              "keeping the per-expert loop in the trace", stacklevel=2)
                continue
            stacked = stack_experts(m)
            patched.append(m)
            setattr(m, _STACK, stacked)
            # the trace does not read the per-expert modules: set them aside (kept out of the module tree, not
            # as an attribute, which would register them again), so the tracer does not walk E*3 unused
            # parameters; the stacked copies are what it captures
            hidden[id(m)], m.experts = m.experts, nn.ModuleList()
            m.forward = types.MethodType(grouped_forward, m)
        yield patched
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
            if id(m) in hidden:
                m.experts = hidden.pop(id(m))
            if hasattr(m, _STACK):
                delattr(m, _STACK)
