"""Timing worker for transformers' native DeepSeek-V4 (run in `.venv-ref`, transformers >= 5.23).

    .venv-ref/bin/python benchmarks/hf_native_worker.py --model DIR --prompt 256 --new 32 --repeats 3 --warmup 1

Loads the official-layout checkpoint in float32 (as tests/reference/hf_v4_runner.py does), then per repeat:
a fresh DynamicCache, one forward of the prompt (time to first token), `--new` one-token forwards through
the cache (greedy). Prints one line `RESULT {json}` (per-repeat prefill seconds, per-step decode seconds,
the greedy tokens of the last repeat). The prompt is the same one `benchmarks/runtimes.py` gives every
runtime: `prompt_ids(vocab, n)`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np


def prompt_ids(vocab: int, n: int, seed: int = 1234) -> np.ndarray:
    """The benchmark prompt: `n` token ids drawn uniformly from [2, vocab) (0/1 are BOS/EOS)."""
    return np.random.RandomState(seed).randint(2, vocab, size=(1, n)).astype(np.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import DeepseekV4ForCausalLM, DynamicCache

    t0 = time.perf_counter()
    model = DeepseekV4ForCausalLM.from_pretrained(str(args.model), dtype=torch.float32, local_files_only=True)
    model.eval()
    load_s = time.perf_counter() - t0
    ids = torch.from_numpy(prompt_ids(model.config.vocab_size, args.prompt))

    prefill, decode, tokens = [], [], []
    with torch.no_grad():
        for rep in range(args.warmup + args.repeats):
            cache = DynamicCache(config=model.config)
            t = time.perf_counter()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
            p = time.perf_counter() - t
            steps, toks = [], []
            for _ in range(args.new):
                nxt = logits.argmax(-1, keepdim=True)
                toks.append(int(nxt[0, 0]))
                t = time.perf_counter()
                logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1]
                steps.append(time.perf_counter() - t)
            if rep >= args.warmup:
                prefill.append(p)
                decode.append(steps)
                tokens = toks
    print("RESULT " + json.dumps({"load_s": load_s, "prefill_s": prefill, "decode_s": decode, "tokens": tokens,
                                  "transformers": transformers.__version__, "torch": torch.__version__,
                                  "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
