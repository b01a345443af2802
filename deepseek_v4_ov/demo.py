"""`make demo`: the main job on the built-in `seed` toy.

Writes the toy in the official layout, loads it back the way a user would
(`AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`), checks that prefill + cached decode
reproduces full recomputation, and generates greedily.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

SEQ = 300  # crosses the 64-token window and two ratio-128 boundaries of `seed`


def main(workdir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from toy.presets import PRESETS

    from .toy import write_toy

    folder = Path(workdir) / "seed"
    print(f"[1/3] writing the seed toy to {folder}")
    write_toy(folder, PRESETS["seed"], seed=0, fmt="bf16", overwrite=True)

    print("[2/3] loading it with AutoModelForCausalLM(trust_remote_code=True)")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(2, model.config.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :SEQ // 2])
        cache, steps = out.past_key_values, [out.logits]
        start = time.perf_counter()
        for t in range(SEQ // 2, SEQ):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
        decode_s = (time.perf_counter() - start) / (SEQ - SEQ // 2)
    diff = (torch.cat(steps, 1) - full).abs().max().item()
    print(f"      cached decode vs full recompute over {SEQ} tokens: max |logit diff| {diff:.2e}")

    print("[3/3] greedy generation (32 new tokens)")
    model.generation_config.eos_token_id = None
    generated = model.generate(ids[:, :32], max_new_tokens=32, do_sample=False)
    print(f"      {generated[0, 32:].tolist()}")
    print(f"summary: seed toy {sum(p.numel() for p in model.parameters()):,} params, "
          f"PyTorch decode {1e3 * decode_s:.1f} ms/token, cache parity {'OK' if diff < 1e-4 else 'FAILED'}")
    if diff >= 1e-4:
        raise SystemExit("cache parity failed")
