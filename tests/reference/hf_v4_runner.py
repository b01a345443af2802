"""Reference oracle: run transformers' native DeepSeek-V4 on an official-layout checkpoint.

Purpose: produce reference outputs for the DeepSeek-V4-Flash port from an independent implementation.
The checkpoint folder uses the OFFICIAL release layout (official config.json keys, official tensor names,
sharded safetensors + index); transformers (>= 5.23) loads it through its own ``deepseek_v4`` conversion
mapping. Only unquantised (fp32/bf16) checkpoints are supported; the model always computes in float32.

Run with a python that has torch, transformers, safetensors and numpy (not the port's environment):

    python hf_v4_runner.py --model DIR --requests REQ.json --out OUT.npz

REQ.json: {"jobs": [job, ...]}, each job has "name", "kind" and "input_ids" ([B][S] ints, rectangular):
  prefill  one full forward                                -> NAME.logits        [B,S,V] f32
  decode   prefill "prefill_len" tokens, then one token
           per forward through the cache                    -> NAME.logits        [B,S,V] f32
  chunked  forward consecutive chunks of sizes "chunks"
           (must sum to S) through the cache                -> NAME.logits        [B,S,V] f32
  greedy   "max_new_tokens" greedy tokens, twice: generate() -> NAME.generate_ids [B,N] i64
           and a manual prefill + 1-token cache loop         -> NAME.manual_ids   [B,N] i64,
                                                               NAME.step_logits  [B,N,V] f32 (manual loop)
                                                               NAME.agree        bool
Every job also stores NAME.input_ids. EOS never stops generation (eos_token_id is disabled).

Loading is strict: exit status 2 with a message on stderr if any non-``mtp.*`` checkpoint tensor was not
consumed, or any model parameter/buffer was missing (i.e. newly initialised) or mismatched. ``mtp.*`` tensors
are ignored by transformers by design; their count is reported on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from safetensors import safe_open
from transformers import DeepseekV4ForCausalLM, DynamicCache, GenerationConfig


class LoadError(RuntimeError):
    """The checkpoint did not map one-to-one onto the model."""


def checkpoint_inventory(model_dir: Path) -> dict[str, int]:
    """Return {official tensor name: numel} for every tensor in the folder's safetensors files."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LoadError(f"no *.safetensors files in {model_dir}")
    inventory: dict[str, int] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                inventory[key] = int(np.prod(handle.get_slice(key).get_shape(), dtype=np.int64))
    return inventory


def load_model(model_dir: Path) -> DeepseekV4ForCausalLM:
    """Load strictly in float32 and verify that every non-MTP tensor landed in the model and vice versa."""
    inventory = checkpoint_inventory(model_dir)
    try:  # transformers itself raises on shape mismatches and conversion errors
        model, info = DeepseekV4ForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except (RuntimeError, ValueError, KeyError, OSError, ImportError) as err:
        raise LoadError(f"from_pretrained failed: {type(err).__name__}: {err}") from err
    problems = [
        f"{kind}: {sorted(info[kind])}"
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(kind)
    ]
    if info.get("error_msgs"):
        problems.append(f"error_msgs: {info['error_msgs']}")
    # Independent element count: catches a tensor silently dropped without being reported as unexpected.
    mtp = {k: n for k, n in inventory.items() if k.startswith("mtp.")}
    ckpt_numel = sum(n for k, n in inventory.items() if k not in mtp)
    model_numel = sum(t.numel() for t in model.state_dict().values())
    if ckpt_numel != model_numel:
        problems.append(f"element count: checkpoint (without mtp.*) {ckpt_numel} != model state_dict {model_numel}")
    if any(t.device.type == "meta" for t in model.state_dict().values()):
        problems.append("some model tensors are still on the meta device")
    if problems:
        raise LoadError("checkpoint does not load cleanly into DeepseekV4ForCausalLM:\n  " + "\n  ".join(problems))
    print(
        f"[load] {model_dir}: {len(inventory) - len(mtp)} tensors loaded ({model_numel} elements), "
        f"{len(mtp)} mtp.* tensors ignored ({sum(mtp.values())} elements), "
        f"layer_types={model.config.layer_types}, mlp_layer_types={model.config.mlp_layer_types}"
    )
    model.eval()
    return model


def forward_chunks(model: DeepseekV4ForCausalLM, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed `ids` through one fresh cache in consecutive chunks; return the logits of every position."""
    if sum(chunks) != ids.shape[1] or min(chunks) < 1:
        raise ValueError(f"chunks {chunks} must be positive and sum to {ids.shape[1]}")
    cache = DynamicCache(config=model.config)
    outputs, start = [], 0
    for size in chunks:
        out = model(input_ids=ids[:, start : start + size], past_key_values=cache, use_cache=True)
        outputs.append(out.logits.float())
        start += size
    return torch.cat(outputs, dim=1)


def greedy(model: DeepseekV4ForCausalLM, ids: torch.Tensor, new_tokens: int) -> dict[str, np.ndarray]:
    """Greedy decoding via generate() and via a manual cache loop."""
    # generate() fills None fields of a passed GenerationConfig from model.generation_config, so EOS has to be
    # removed there too, otherwise eos_token_id (1) would stop/pad rows early.
    model.generation_config.eos_token_id = None
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=None, pad_token_id=0, use_cache=True
    )
    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    generate_ids = generated[:, ids.shape[1] :]

    cache = DynamicCache(config=model.config)
    step_input, step_logits, manual = ids, [], []
    for _ in range(new_tokens):
        logits = model(input_ids=step_input, past_key_values=cache, use_cache=True).logits[:, -1].float()
        step_input = logits.argmax(dim=-1, keepdim=True)
        step_logits.append(logits)
        manual.append(step_input)
    manual_ids = torch.cat(manual, dim=1)
    agree = generate_ids.shape == manual_ids.shape and bool(torch.equal(generate_ids, manual_ids))
    return {
        "generate_ids": generate_ids.numpy(),
        "manual_ids": manual_ids.numpy(),
        "step_logits": torch.stack(step_logits, dim=1).numpy(),
        "agree": np.array(agree),
    }


def run_job(model: DeepseekV4ForCausalLM, job: dict[str, Any]) -> dict[str, np.ndarray]:
    """Execute one request job and return its arrays (keys without the job-name prefix)."""
    ids = torch.tensor(job["input_ids"], dtype=torch.long)
    if ids.dim() != 2:
        raise ValueError(f"job {job['name']}: input_ids must be [B][S]")
    kind, seq = job["kind"], ids.shape[1]
    result: dict[str, np.ndarray] = {"input_ids": ids.numpy()}
    if kind == "prefill":
        result["logits"] = model(input_ids=ids, use_cache=False).logits.float().numpy()
    elif kind == "decode":
        prefill_len = int(job["prefill_len"])
        result["logits"] = forward_chunks(model, ids, [prefill_len] + [1] * (seq - prefill_len)).numpy()
    elif kind == "chunked":
        result["logits"] = forward_chunks(model, ids, [int(c) for c in job["chunks"]]).numpy()
    elif kind == "greedy":
        result.update(greedy(model, ids, int(job["max_new_tokens"])))
    else:
        raise ValueError(f"job {job['name']}: unknown kind {kind!r}")
    return result


def summary(name: str, kind: str, result: dict[str, np.ndarray]) -> str:
    """One-line human summary of a job's result."""
    if kind == "greedy":
        verdict = "AGREE" if bool(result["agree"]) else "DISAGREE"
        return (
            f"[{name}] greedy B={result['generate_ids'].shape[0]} new={result['manual_ids'].shape[1]} "
            f"generate-vs-manual {verdict}; manual[0][:16]={result['manual_ids'][0][:16].tolist()}"
        )
    logits = result["logits"]
    return (
        f"[{name}] {kind} logits {list(logits.shape)} max|x|={np.abs(logits).max():.4g} "
        f"argmax[0][-8:]={logits[0].argmax(-1)[-8:].tolist()} finite={bool(np.isfinite(logits).all())}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="official-layout checkpoint folder")
    parser.add_argument("--requests", type=Path, required=True, help="request JSON with a 'jobs' list")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    jobs = json.loads(args.requests.read_text())["jobs"]
    names = [job["name"] for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate job names in {args.requests}")
    try:
        model = load_model(args.model)
    except LoadError as err:
        print(f"hf_v4_runner: LOAD FAILED: {err}", file=sys.stderr)
        return 2

    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for job in jobs:
            result = run_job(model, job)
            print(summary(job["name"], job["kind"], result), flush=True)
            if job["kind"] == "greedy" and not bool(result["agree"]):
                print(f"hf_v4_runner: WARNING job {job['name']}: generate() and manual loop disagree", file=sys.stderr)
            arrays.update({f"{job['name']}.{key}": value for key, value in result.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    print(f"[done] wrote {len(arrays)} arrays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
