"""Our port against transformers 5.23's native DeepseekV4ForCausalLM, live, on the same toy folder.

Tolerance 1e-4 on FP32 logits of magnitude ~5: both implementations compute the same math in FP32 with
different operation orders (einsum vs matmul, fused vs split softmax); the observed gap is ~6e-6. A
semantic slip (mask off by one, rope layout, comb transposed, wrong window) moves logits by 0.1-1.
Greedy continuations must match token for token; the closest discrete choice (indexer/router top-k gap)
is asserted to be far above FP32 noise, so a mismatch cannot be blamed on a tie.
"""

import numpy as np
import pytest
import torch

from conftest import greedy, prompt, run_reference
from deepseek_v4_ov.eval.diagnostics import decision_margins

LOGIT_TOL = 1e-4
MIN_DECISION_MARGIN = 1e-6  # ~10x the FP32 rounding of scores of magnitude ~1 after a few layers
LENGTHS = (1, 17, 300)  # 300 crosses the sliding window (64 / 16) and two ratio-128 boundaries
NEW_TOKENS = 64


@pytest.mark.parametrize("preset", ["full", "seed"])
def test_logits_and_greedy_match_transformers(preset, toy, tmp_path):
    folder, model = toy(preset)
    prompts = {n: prompt(n, seed=n) for n in LENGTHS}
    jobs = [{"name": f"p{n}", "kind": "prefill", "input_ids": ids.tolist()} for n, ids in prompts.items()]
    jobs.append({"name": "g", "kind": "greedy", "input_ids": prompts[300].tolist(), "max_new_tokens": NEW_TOKENS})
    ref = run_reference(folder, jobs, tmp_path)

    with torch.no_grad():
        for n, ids in prompts.items():
            ours = model(ids).logits.numpy()
            diff = np.abs(ours - ref[f"p{n}.logits"]).max()
            assert diff <= LOGIT_TOL, f"{preset} S={n}: max |logit diff| {diff:.3g} vs transformers 5.23"
        margins = decision_margins(model, prompts[300])
    assert margins.closest() > MIN_DECISION_MARGIN, f"a near-tie decision makes this comparison fragile: {margins}"

    ours = greedy(model, prompts[300], NEW_TOKENS)[0].tolist()
    theirs = ref["g.manual_ids"][0].tolist()
    assert ours == theirs, f"greedy diverges at token {next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)}"
