"""`make demo`: the main job on the trained toy (`deepseek_v4_ov/toys/data`, the `seed` geometry trained on Python source).

1. write the trained toy in the official release layout (FP4 experts, FP8 linears, E8M0 scales) with its
   tokenizer, and load it back with the release reader; check that cached decode reproduces full recompute;
2. export it to stateful OpenVINO IR in FP32, INT8 and INT4 (the FP4 experts re-quantised to INT4), or reuse
   an export in WORKDIR whose export key (`export/identity.py`) is this one;
3. per format, teacher-forced over held-out Python source: mean and 99th-percentile KL divergence to the
   PyTorch port (FP32), same-top-1 share and perplexity (PyTorch vs IR, beside a unigram model fitted on
   that very text); through optimum-intel's `OVModelForCausalLM`, greedy agreement with PyTorch (a
   secondary figure: one flip at a near-tie ends it);
4. generate a continuation of a code prompt through OpenVINO GenAI's `LLMPipeline` (text in, text out);
and print one table.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

SEQ = 300  # crosses the 64-token window and two ratio-128 boundaries of `seed`
NEW_TOKENS = 32
PPL_WINDOWS, PPL_LENGTH = 4, 256
DEMO_WEIGHT_FORMATS = ("fp32", "int8", "int4")
CODE_PROMPT = "import os\nimport sys\n\n\ndef main():\n    args = sys.argv[1:]\n    if not args:\n        print("


def ir_megabytes(folder: Path) -> float:
    return sum((folder / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin")) / 1e6


def main(workdir: Path) -> None:
    from deepseek_v4_ov.toys.trained import heldout_ids, heldout_windows, unigram_perplexity, write_trained_toy

    from deepseek_v4_ov.checkpoint.release import load_model
    from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer
    from deepseek_v4_ov.eval.metrics import agreeing_prefix, compare_logits
    from deepseek_v4_ov.eval.text_eval import perplexity
    from deepseek_v4_ov.export.reuse import ensure_export
    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM
    from deepseek_v4_ov.runtime.ov_load import load_ov_causal_lm

    workdir = Path(workdir)
    folder = workdir / "trained"
    print(f"[1/4] writing the trained toy (release layout: FP4 experts, FP8 linears) to {folder}")
    write_trained_toy(folder, "trained", fmt="fp8", overwrite=True)
    model = load_model(folder).float().eval()
    tokenizer = load_hf_tokenizer(folder)
    ids = torch.tensor([heldout_ids(tokenizer)[1000 : 1000 + SEQ]])  # held-out Python source, never trained on
    windows = heldout_windows(tokenizer, PPL_WINDOWS, PPL_LENGTH)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, : SEQ // 2])
        cache, steps = out.past_key_values, [out.logits]
        for t in range(SEQ // 2, SEQ):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
        torch_logits = [model(w).logits.numpy() for w in windows]
    torch_ppl = perplexity(torch_logits, windows)
    cache_diff = (torch.cat(steps, 1) - full).abs().max().item()
    print(f"      cached decode vs full recompute over {SEQ} tokens: max |logit diff| {cache_diff:.2e}")
    model.generation_config.eos_token_id = None  # compare whole runs
    start = time.perf_counter()
    reference = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, SEQ:].tolist()
    torch_tps = NEW_TOKENS / (time.perf_counter() - start)
    unigram = unigram_perplexity([t for w in windows for t in w[0].tolist()])

    rows = [("PyTorch port (eager)", "-", "0", "0", "1.000", f"{torch_ppl:.3f}", "-", f"{NEW_TOKENS}/{NEW_TOKENS}",
             f"{torch_tps:.1f}")]
    for fmt in DEMO_WEIGHT_FORMATS:
        out_dir = workdir / f"trained-ov-{fmt}"
        print(f"[2/4] {fmt}: ", end="")
        ensure_export(folder, out_dir, weight_format=fmt)
        print(f"[3/4] {fmt}: KL, same top-1, perplexity on held-out source; optimum-intel OVModelForCausalLM greedy")
        ov_model = load_ov_causal_lm(out_dir, ov_config=dict(F32_CONFIG))
        ov_model.generation_config.eos_token_id = None
        ov_model.generate(ids[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        generated = ov_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, SEQ:].tolist()
        tps = NEW_TOKENS / (time.perf_counter() - start)
        runner = OVCausalLM(out_dir, "CPU", dict(F32_CONFIG))
        ir_logits = [runner.greedy(w.numpy(), 0)[0] for w in windows]
        ir_ppl, stats = perplexity(ir_logits, windows), compare_logits(torch_logits, ir_logits)
        rows.append((f"OpenVINO stateful {fmt}", f"{ir_megabytes(out_dir):.2f}", f"{stats.kl_mean:.1e}",
                     f"{stats.kl_p99:.1e}", f"{stats.same_top1:.3f}", f"{ir_ppl:.3f}",
                     f"{100 * (ir_ppl / torch_ppl - 1):+.2f}%", f"{agreeing_prefix(reference, generated)}/{NEW_TOKENS}",
                     f"{tps:.1f}"))

    print("[4/4] OpenVINO GenAI LLMPipeline, text in, text out (int4 IR)")
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(workdir / "trained-ov-int4"), "CPU", ATTENTION_BACKEND="SDPA")
    config = openvino_genai.GenerationConfig(max_new_tokens=48, apply_chat_template=False)
    text = pipe.generate(CODE_PROMPT, config)
    print("      prompt:\n" + "\n".join("      | " + line for line in CODE_PROMPT.split("\n")))
    print("      continuation (greedy, INT4):\n" + "\n".join("      > " + line for line in text.split("\n")))

    header = ("model", "IR MB", "KL mean", "KL p99", "same top-1", "held-out ppl", "vs PyTorch", "greedy prefix",
              "tokens/s")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"\nsummary: trained toy ({sum(p.numel() for p in model.parameters()):,} params, trained on the Python "
          f"standard library); KL (nats, to the PyTorch port in FP32), same top-1 and perplexity teacher-forced "
          f"over {PPL_WINDOWS}x{PPL_LENGTH} tokens of unseen stdlib files; PyTorch perplexity "
          f"{torch_ppl:.2f} vs {unigram:.1f} for a unigram model fitted on that text; greedy prompt {SEQ} held-out "
          f"tokens, {NEW_TOKENS} new; cache parity {'OK' if cache_diff < 1e-4 else 'FAILED'} ({cache_diff:.1e})")
    if cache_diff >= 1e-4:
        raise SystemExit("cache parity failed")
