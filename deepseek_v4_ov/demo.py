"""`make demo`: the main job on the built-in `seed` toy.

1. write the toy in the official release layout (with its own small tokenizer);
2. load it back as a user would (`AutoModelForCausalLM`, `trust_remote_code=True`) and check that cached
   decode reproduces full recomputation;
3. export it to stateful OpenVINO IR in FP32, INT8 and INT4;
4. load each IR through optimum-intel's `OVModelForCausalLM`, generate greedily, and compare with PyTorch;
5. generate text from a text prompt through OpenVINO GenAI's `LLMPipeline`;
and print one table.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

SEQ = 300  # crosses the 64-token window and two ratio-128 boundaries of `seed`
NEW_TOKENS = 32
FORMATS = ("fp32", "int8", "int4")


def ir_megabytes(folder: Path) -> float:
    return sum((folder / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin")) / 1e6


def main(workdir: Path) -> None:
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoModelForCausalLM

    from toy.presets import PRESETS

    from deepseek_v4_ov.export.pipeline import export
    from deepseek_v4_ov.eval.metrics import agreeing_prefix
    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG
    from deepseek_v4_ov.checkpoint.toy import write_toy

    workdir = Path(workdir)
    folder = workdir / "seed"
    print(f"[1/5] writing the seed toy to {folder}")
    write_toy(folder, PRESETS["seed"], seed=0, fmt="bf16", overwrite=True)

    print("[2/5] PyTorch: AutoModelForCausalLM.from_pretrained(trust_remote_code=True)")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early, compare whole runs
    ids = torch.randint(2, model.config.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, : SEQ // 2])
        cache, steps = out.past_key_values, [out.logits]
        for t in range(SEQ // 2, SEQ):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    cache_diff = (torch.cat(steps, 1) - full).abs().max().item()
    print(f"      cached decode vs full recompute over {SEQ} tokens: max |logit diff| {cache_diff:.2e}")
    start = time.perf_counter()
    reference = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, SEQ:].tolist()
    torch_tps = NEW_TOKENS / (time.perf_counter() - start)

    rows = [("PyTorch port (eager)", "-", f"{NEW_TOKENS}/{NEW_TOKENS}", f"{torch_tps:.1f}")]
    for i, fmt in enumerate(FORMATS):
        out_dir = workdir / f"seed-ov-{fmt}"
        print(f"[3/5] exporting {fmt} -> {out_dir}")
        export(folder, out_dir, weight_format=fmt, overwrite=True, log=lambda line: None)
        print(f"[4/5] optimum-intel OVModelForCausalLM ({fmt})")
        ov_model = OVModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True, ov_config=dict(F32_CONFIG))
        ov_model.generation_config.eos_token_id = None
        ov_model.generate(ids[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        generated = ov_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, SEQ:].tolist()
        tps = NEW_TOKENS / (time.perf_counter() - start)
        rows.append((f"OpenVINO stateful {fmt}", f"{ir_megabytes(out_dir):.2f}",
                     f"{agreeing_prefix(reference, generated)}/{NEW_TOKENS}", f"{tps:.1f}"))

    print("[5/5] OpenVINO GenAI LLMPipeline, text in, text out (int4 IR)")
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(workdir / "seed-ov-int4"), "CPU", ATTENTION_BACKEND="SDPA")
    config = openvino_genai.GenerationConfig(max_new_tokens=16, apply_chat_template=False)
    text = pipe.generate("The quick brown fox", config)
    print(f"      'The quick brown fox' -> {text!r} (random weights: the words are noise, the path is real)")

    header = ("model", "IR MB", "greedy agreement", "tokens/s")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"\nsummary: seed toy ({sum(p.numel() for p in model.parameters()):,} params), prompt {SEQ} tokens, "
          f"{NEW_TOKENS} new; cache parity {'OK' if cache_diff < 1e-4 else 'FAILED'} ({cache_diff:.1e})")
    if cache_diff >= 1e-4:
        raise SystemExit("cache parity failed")
