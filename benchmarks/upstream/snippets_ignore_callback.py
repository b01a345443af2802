"""Reproducer: with SNIPPETS_MODE=IGNORE_CALLBACK the CPU plugin (2026.4.1) fails to compile a small mHC-like
graph, a Sinkhorn-normalised 4x4 matrix applied (transposed) to streams that come from an `expand`:

    python benchmarks/upstream/snippets_ignore_callback.py

Default mode compiles; IGNORE_CALLBACK (the only mode in which the plugin fuses a Sinkhorn pass, a reduce and a
divide over 16 numbers, into one snippets Subgraph at 16 threads) raises `ExplicitTransposeMatMulInputs expects
Parameter in cases when there isn't existing Transpose on input` (seen on the full V4 layer, 2026-12-03)."""

import openvino as ov
import torch


class Mix(torch.nn.Module):
    def forward(self, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        streams = h.unsqueeze(2).expand(-1, -1, 4, -1)
        comb = logits.softmax(-1) + 1e-6
        for _ in range(3):
            comb = comb / (comb.sum(-2, keepdim=True) + 1e-6)
            comb = comb / (comb.sum(-1, keepdim=True) + 1e-6)
        return torch.matmul(comb.transpose(-1, -2), streams)


model = ov.convert_model(Mix(), example_input=(torch.randn(1, 2, 64), torch.randn(1, 2, 4, 4)),
                         input=[(ov.PartialShape([-1, -1, 64]), ov.Type.f32),
                                (ov.PartialShape([-1, -1, 4, 4]), ov.Type.f32)])
for mode in ("ENABLE", "IGNORE_CALLBACK"):
    try:
        ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "SNIPPETS_MODE": mode})
        print(f"SNIPPETS_MODE={mode}: compiled")
    except RuntimeError as err:
        print(f"SNIPPETS_MODE={mode}: FAILED: {str(err).strip().splitlines()[-1][:300]}")
