"""Train the drafters of `trained-full` on its frozen target: its MTP block (MTP-1) and a DSpark block drafter.

    python training/train_drafters.py train DATA --out RUN [--steps 400 --batch 32 --anchors 48 --device cuda]
    python training/train_drafters.py ship RUN        # into deepseek_v4_ov/toys/data/trained-full and trained-full-dspark

The target (every non-`mtp.*` tensor of the shipped `trained-full`) is frozen; only the drafters learn, by
distillation: each drafter's logits are fitted (cross-entropy with soft labels) to the target's own next-token
distribution at the position it drafts for, with the true text as the prefix. That is what greedy
speculative decoding accepts: a draft is kept when it equals the target's argmax.

* MTP-1 (`mtp.0`, shipped weights as the start): for position t, the target's final streams at t and token
  t+1 predict the target's distribution at t+1 (the token after t+1).
* DSpark (`toys.writer.with_drafter`: three stages, block 5, Markov rank 16; random start, seed `--seed`): for
  `--anchors` random positions t per sequence (t >= W-1, so the context ring is full), the ring holds the taps
  of positions t-W+1..t, the block [x_{t+1}, noise x 4] sits at t+1..t+5, draft k is fitted to the target's
  distribution at t+1+k with the Markov bias of the true token x_{t+1+k}; the confidence head is fitted (binary
  cross-entropy, weight `CONFIDENCE_WEIGHT`) to whether draft k's argmax equals the target's. Anchors are folded
  into the batch (one cache row per anchor), so the drafter runs exactly as in `dspark_draft`.

As `train_toys.py train`: AdamW with warm-up and cosine decay, the routers' biases balanced without gradient, the
last `--qat-fraction` of the steps on the weights rounded as the release stores them, the result written in the
release layout. The log (`train_log.json`) has the held-out agreement with the target's argmax: MTP top-1 and,
per DSpark draft position, top-1 and the mean accepted prefix (teacher-forced: the true previous tokens).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train_toys import SEQ_LEN, add_run_options, draw_batch, optimise

PRESET = "trained-full"
CONFIDENCE_WEIGHT = 0.1


def build_models(seed: int, device: str):
    """The frozen target inside two models: `trained-full` with its MTP block, and the same target with a
    freshly initialised DSpark drafter (seeded)."""
    from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    from deepseek_v4_ov.toys.trained import build_model, trained_config

    mtp_model, _ = build_model(PRESET)
    torch.manual_seed(seed)
    dspark_model = DeepseekV4ForCausalLM(trained_config(PRESET, "dspark")).eval()
    target = {k: v for k, v in mtp_model.state_dict().items() if not k.startswith("mtp.")}
    missing, unexpected = dspark_model.load_state_dict(target, strict=False)
    assert not unexpected and all(k.startswith("mtp.") for k in missing), (missing, unexpected)
    for model in (mtp_model, dspark_model):
        model.to(device)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("mtp."))
    return mtp_model, dspark_model


def soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits` against the target's distribution (mean over positions)."""
    return -(target_logits.float().softmax(-1) * logits.float().log_softmax(-1)).sum(-1).mean()


def dspark_batch(model, taps: torch.Tensor, ids: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor):
    """Drafts of DSpark blocks at `anchors` `[B, A]` (ring full), folded into the batch: returns draft logits
    and confidences `[B*A, K, .]`, and the target's logits they are fitted to `[B*A, K, V]`."""
    from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4Cache

    c = model.config
    w, k, dev = c.sliding_window, c.dspark_block_size, taps.device
    b_idx = torch.arange(taps.shape[0], device=dev).unsqueeze(1).expand_as(anchors).flatten()
    t = anchors.flatten()
    ring = t.unsqueeze(1) - w + 1 + torch.arange(w, device=dev)  # positions t-W+1 .. t
    rows = t.unsqueeze(1) + 1 + torch.arange(k, device=dev)  # block positions t+1 .. t+K
    cache = DeepseekV4Cache({"mtp_length": t - w + 1,
                             **{f"mtp.{j}.context": taps.new_zeros(len(t), 0, c.head_dim) for j in range(len(model.mtp))}})
    model.dspark_absorb(taps[b_idx.unsqueeze(1), ring], cache)
    h, base = model.dspark_block(ids[b_idx, t + 1].unsqueeze(1), cache)
    draft, confidence = model.dspark_heads(h, base, ids[b_idx.unsqueeze(1), rows])  # true previous tokens
    return draft, confidence, logits[b_idx.unsqueeze(1), rows]


def losses(mtp_model, dspark_model, ids: torch.Tensor, anchors: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = dspark_model(ids[:, :-1])  # the frozen target: logits, final streams and the DSpark taps
    mtp = mtp_model.mtp_logits(out.streams[:, :-1], ids[:, 1:-1], mtp_model.empty_cache(ids.shape[0], ids.device))
    draft, confidence, wanted = dspark_batch(dspark_model, out.dspark_hidden, ids, out.logits, anchors)
    correct = (draft.argmax(-1) == wanted.argmax(-1)).float()
    return {
        "mtp": soft_ce(mtp, out.logits[:, 1:]),
        "dspark": soft_ce(draft, wanted),
        "confidence": F.binary_cross_entropy(confidence.clamp(1e-6, 1 - 1e-6), correct),
        "mtp_top1": (mtp.argmax(-1) == out.logits[:, 1:].argmax(-1)).float().mean(),
        "dspark_top1": correct.mean(0),  # per draft position
        "dspark_prefix": correct.cumprod(-1).sum(-1).mean(),  # mean accepted drafts (teacher-forced)
    }


def draw_anchors(batch: int, count: int, length: int, window: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """`count` distinct anchor positions per sequence in [W-1, length-2-K] (ring full, block inside)."""
    low, high = window - 1, length - 2 - block
    return torch.stack([low + torch.randperm(high - low + 1, generator=gen)[:count] for _ in range(batch)])


@torch.no_grad()
def evaluate(mtp_model, dspark_model, ids: np.ndarray, device: str, anchors: int, seed: int = 0) -> dict:
    n = (len(ids) - 1) // SEQ_LEN
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float | torch.Tensor] = {}
    for i in range(n):
        chunk = torch.from_numpy(ids[i * SEQ_LEN : (i + 1) * SEQ_LEN + 1].astype(np.int64)).unsqueeze(0).to(device)
        c = dspark_model.config
        picks = draw_anchors(1, anchors, SEQ_LEN, c.sliding_window, c.dspark_block_size, gen).to(device)
        for key, value in losses(mtp_model, dspark_model, chunk, picks).items():
            sums[key] = sums.get(key, 0.0) + value.detach().cpu().double() / n
    return {k: (v.tolist() if v.dim() else float(v)) for k, v in sums.items()} | {"windows": n}


def train_drafters(data: Path, out: Path, steps: int, batch: int, anchors: int, lr: float, seed: int, device: str,
                   qat_fraction: float, log_every: int = 50, max_seconds: float = 0.0) -> None:
    from deepseek_v4_ov.checkpoint.layout import write_shards
    from deepseek_v4_ov.checkpoint.release import round_to_release

    out.mkdir(parents=True, exist_ok=True)
    train_ids = np.load(data / "train_ids.npy").astype(np.int64)
    held_ids = np.load(data / "heldout_ids.npy")
    mtp_model, dspark_model = build_models(seed, device)
    c = dspark_model.config
    params = [(n, p) for m in (mtp_model, dspark_model) for n, p in m.named_parameters() if p.requires_grad]
    print(f"drafters of {PRESET}: MTP {sum(p.numel() for n, p in mtp_model.named_parameters() if p.requires_grad):,} "
          f"and DSpark {sum(p.numel() for n, p in dspark_model.named_parameters() if p.requires_grad):,} parameters "
          f"trained, {steps} steps of {batch}x{SEQ_LEN} ({anchors} DSpark anchors per sequence) on {device}", flush=True)
    gates = [m for model in (mtp_model, dspark_model) for n, m in model.named_modules()
             if n.startswith("mtp.") and type(m).__name__ == "Gate"]
    gen = torch.Generator().manual_seed(seed)

    def step_loss(step: int):
        ids = draw_batch(train_ids, batch, gen, device)
        picks = draw_anchors(batch, anchors, SEQ_LEN, c.sliding_window, c.dspark_block_size, gen).to(device)
        parts = losses(mtp_model, dspark_model, ids, picks)
        loss = parts["mtp"] + parts["dspark"] + CONFIDENCE_WEIGHT * parts["confidence"]
        return loss, {k: round(float(v.detach()), 4) for k, v in parts.items() if k != "dspark_top1"}

    log, steps_done, train_s = optimise(params, gates, steps, lr, qat_fraction, step_loss, log_every, max_seconds)
    for model in (mtp_model, dspark_model):
        model.eval()
    master_eval = evaluate(mtp_model, dspark_model, held_ids, device, anchors)
    mtp_stored, dspark_stored = round_to_release(mtp_model, "mtp."), round_to_release(dspark_model, "mtp.")
    stored_eval = evaluate(mtp_model, dspark_model, held_ids, device, anchors)
    for sub, stored in (("mtp", mtp_stored), ("dspark", dspark_stored)):
        (out / sub).mkdir(exist_ok=True)
        write_shards(out / sub, stored, 2 << 20)
    summary = {"preset": PRESET, "seed": seed, "steps": steps, "steps_done": steps_done, "batch": batch, "anchors": anchors, "seq_len": SEQ_LEN,
               "lr": lr, "qat_fraction": qat_fraction, "device": device, "torch": torch.__version__,
               "train_s": round(train_s, 1), "heldout_master": master_eval, "heldout_stored": stored_eval, "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"done in {train_s:.0f}s; held-out (stored weights): MTP top-1 vs target {stored_eval['mtp_top1']:.3f}, "
          f"DSpark top-1 per draft {[round(x, 3) for x in stored_eval['dspark_top1']]}, mean accepted prefix "
          f"{stored_eval['dspark_prefix']:.2f} of {c.dspark_block_size}", flush=True)


def ship_drafters(run: Path) -> None:
    """The trained MTP block replaces `trained-full`'s `mtp.*` tensors; the DSpark drafter goes to
    `trained-full-dspark` (its `mtp.*` tensors only: the target is `trained-full`'s)."""
    from safetensors.torch import load_file

    from deepseek_v4_ov.checkpoint.layout import write_shards
    from deepseek_v4_ov.toys.trained import DRAFTER_FOLDERS, FOLDERS, stored_tensors

    target = stored_tensors(PRESET, "none")
    mtp = {k: v for f in sorted((run / "mtp").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    dest = FOLDERS[PRESET]
    for old in dest.glob("*.safetensors"):
        old.unlink()
    write_shards(dest, {**target, **mtp}, 2 << 20)
    dspark_dir = DRAFTER_FOLDERS[PRESET, "dspark"]
    dspark_dir.mkdir(exist_ok=True)
    for old in dspark_dir.glob("*.safetensors"):
        old.unlink()
    dspark = {k: v for f in sorted((run / "dspark").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    write_shards(dspark_dir, dspark, 2 << 20)
    (dspark_dir / "train_log.json").write_text((run / "train_log.json").read_text())
    print(f"shipped {run}: MTP block -> {dest}, DSpark drafter -> {dspark_dir}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python training/train_drafters.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("train", help="train trained-full's MTP block and a DSpark drafter")
    d.add_argument("data", type=Path)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--steps", type=int, default=400)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--anchors", type=int, default=48, help="DSpark blocks per training sequence")
    d.add_argument("--lr", type=float, default=2e-3)
    add_run_options(d)
    e = sub.add_parser("ship", help="copy a `train` run into deepseek_v4_ov/toys/data")
    e.add_argument("run", type=Path)
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 training: the toys' reference is FP32
    if args.cmd == "train":
        train_drafters(args.data, args.out, args.steps, args.batch, args.anchors, args.lr, args.seed, args.device,
                       args.qat_fraction, args.log_every, args.max_seconds)
    else:
        ship_drafters(args.run)


if __name__ == "__main__":
    main()
