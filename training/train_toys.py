"""Train the `trained` and `trained-full` toys on the Python standard library's own sources.

Three steps, each re-runnable (the corpus is on every machine with Python, no download):

  python training/train_toys.py prepare DATA             # corpus selection, tokenizer, token ids, held-out text
  python training/train_toys.py train DATA --preset trained --out RUN [--steps 1500 --batch 128 --device cuda]
  python training/train_toys.py ship RUN deepseek_v4_ov/toys/data/trained   # copy the release-layout weights into the repository

`prepare` (CPU, ~1 min) lists the `.py` files of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`) in sorted order, without test suites, IDLE, site-packages and files over
200 KB (`corpus_files`); a file is held out when crc32 of its relative path is 0 mod 16 (`is_held_out`) and
is never trained on. It trains the byte-level BPE tokenizer (`deepseek_v4_ov.toys.tokenizer`, exactly 512 entries)
on the first `TOKENIZER_CHARS` characters of the training files, encodes every training file (bos first) to
`train_ids.npy` (uint16), and writes a deterministic held-out sample (`heldout.txt`: whole held-out files in
sorted order up to `HELDOUT_CHARS`) with its ids. DATA also gets `corpus.json` (interpreter version, file
lists, sizes). The machine that trains reads only DATA, so another Python (the GPU machine has 3.12) trains
on exactly the same tokens.

`train` (CPU works, slowly; a GPU in minutes) trains the toy from the preset's random initialisation (seed
`--seed`, batches drawn with the same seed) with AdamW, cross-entropy on the next token, plus the MTP
block's cross-entropy on token t+2 where the preset has one (weight `MTP_WEIGHT`). The learned routers'
biases are updated without gradient, as DeepSeek's auxiliary-loss-free balancing does (bias += `BIAS_RATE`
* sign(mean load - load)). The last `--qat-fraction` of the steps is quantisation-aware: each forward and
backward runs on the weights rounded as the release stores them (FP4 e2m1 per-32 E8M0 scales for routed
experts, FP8 e4m3 with 128x128 E8M0 block scales for the linears, BF16 for the rest) and the gradient
updates the FP32 master weights (straight-through). At the end every tensor is written with
`official.encode_release` (the release layout, exactly as `deepseek-v4-ov toy --format fp8`), and the
held-out loss of the master and of the stored (rounded) weights is printed and written to `train_log.json`.

The shipped runs (deepseek_v4_ov/toys/data/*/train_log.json) were made with DATA prepared by CPython 3.11.7 and trained
on one H200 (Python 3.12, torch 2.11): `trained` --steps 1500 --batch 128, `trained-full` --steps 700
--batch 64. One change since: the QAT fake quantiser then broke exact FP4 ties towards the smaller code; it
now breaks them to the even code like `quant.quantize_fp4` (exact ties have measure zero in training; the
stored weights were always rounded by `encode_release`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from deepseek_v4_ov.toys.trained import read_source, stdlib_root

VOCAB_SIZE = 512
HOLDOUT_MOD = 16
EXCLUDED_DIRS = ("test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3",
                 "turtledemo", "tkinter", "ensurepip")
MAX_FILE_BYTES = 200_000
TOKENIZER_CHARS = 1_500_000
HELDOUT_CHARS = 60_000
SEQ_LEN = 512
MTP_WEIGHT = 0.3
BIAS_RATE = 1e-3

TRAINED_DIR = Path(__file__).resolve().parents[1] / "deepseek_v4_ov" / "toys" / "data"


# ------------------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------------------
def corpus_files(root: Path | None = None) -> list[str]:
    """Relative paths (posix) of the standard library's .py files used as corpus, sorted."""
    root = root or stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith("test_") for part in rel.parts):
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        out.append(rel.as_posix())
    return out


def is_held_out(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % HOLDOUT_MOD == 0


def heldout_text(root: Path, files: list[str]) -> tuple[str, list[str]]:
    """Whole held-out files in order, separated by a comment line naming the file, up to HELDOUT_CHARS."""
    parts, used, size = [], [], 0
    for rel in files:
        if not is_held_out(rel):
            continue
        text = f"# ---- Lib/{rel} (Python {sys.version_info.major}.{sys.version_info.minor}, PSF licence) ----\n" \
               + read_source(root, rel)
        if size + len(text) > HELDOUT_CHARS:
            if size:
                continue
            text = text[:HELDOUT_CHARS]
        parts.append(text)
        used.append(rel)
        size += len(text)
    return "".join(parts), used


def prepare(data: Path) -> None:
    from deepseek_v4_ov.toys.tokenizer import build_hf_tokenizer

    data.mkdir(parents=True, exist_ok=True)
    root = stdlib_root()
    files = corpus_files(root)
    train = [f for f in files if not is_held_out(f)]
    held = [f for f in files if is_held_out(f)]
    print(f"corpus: {len(files)} files under {root} (Python {sys.version.split()[0]}): "
          f"{len(train)} train, {len(held)} held out")
    tok_corpus, n = [], 0
    for rel in train:
        text = read_source(root, rel)
        tok_corpus.append(text)
        n += len(text)
        if n >= TOKENIZER_CHARS:
            break
    start = time.perf_counter()
    hf_tok = build_hf_tokenizer(VOCAB_SIZE, 4096, corpus="".join(tok_corpus)[:TOKENIZER_CHARS])
    print(f"tokenizer: {VOCAB_SIZE} entries trained on {TOKENIZER_CHARS:,} chars in {time.perf_counter() - start:.0f}s")
    hf_tok.save_pretrained(str(data / "tokenizer"))
    ids = []
    for rel in train:
        ids.extend(hf_tok(read_source(root, rel))["input_ids"])
    train_ids = np.asarray(ids, dtype=np.uint16)
    np.save(data / "train_ids.npy", train_ids)
    text, used = heldout_text(root, files)
    (data / "heldout.txt").write_text(text)
    held_ids = np.asarray(hf_tok(text)["input_ids"], dtype=np.uint16)
    np.save(data / "heldout_ids.npy", held_ids)
    info = {"python": sys.version.split()[0], "stdlib": str(root), "train_files": train, "heldout_files": held,
            "heldout_sample_files": used, "train_tokens": int(train_ids.size), "heldout_tokens": int(held_ids.size),
            "train_chars": sum(len(read_source(root, r)) for r in train), "tokenizer_chars": TOKENIZER_CHARS}
    (data / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"train: {train_ids.size:,} tokens ({info['train_chars'] / train_ids.size:.2f} chars/token); held-out "
          f"sample: {len(used)} files, {len(text):,} chars, {held_ids.size:,} tokens -> {data}")


# ------------------------------------------------------------------------------------------------------
# Release rounding as a differentiable-by-STE fake quantiser (any device)
# ------------------------------------------------------------------------------------------------------
_FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _pow2_scale(amax: torch.Tensor, max_code: float) -> torch.Tensor:
    """2^ceil(log2(amax / max_code)): the E8M0 scale `quant._exponents` picks."""
    ratio = (amax / max_code).clamp(min=torch.finfo(torch.float32).tiny)
    mantissa, exponent = torch.frexp(ratio)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent).clamp(-127, 127)
    return torch.ldexp(torch.ones_like(ratio), exponent)


def fake_fp4(w: torch.Tensor) -> torch.Tensor:
    from deepseek_v4_ov.checkpoint.quant import round_to_grid

    rows, cols = w.shape
    g = w.reshape(rows, cols // 32, 32)
    scale = _pow2_scale(g.abs().amax(-1, keepdim=True), 6.0)
    x = g / scale
    grid = _FP4_GRID.to(w.device)
    idx = round_to_grid(x, grid)  # nearest, ties to the even code, as `quant.quantize_fp4`
    return (grid[idx].to(w.dtype) * x.sign() * scale).reshape(rows, cols)


def fake_fp8(w: torch.Tensor) -> torch.Tensor:
    rows, cols = w.shape
    br, bc = -(-rows // 128), -(-cols // 128)
    padded = torch.zeros(br * 128, bc * 128, device=w.device)
    padded[:rows, :cols] = w
    blocks = padded.view(br, 128, bc, 128)
    scale = _pow2_scale(blocks.abs().amax(dim=(1, 3), keepdim=True), 448.0)
    q = (blocks / scale).to(torch.float8_e4m3fn).float() * scale
    return q.view(br * 128, bc * 128)[:rows, :cols]


def fake_release(name: str, w: torch.Tensor) -> torch.Tensor:
    from deepseek_v4_ov.checkpoint.release import BF16, FP4, FP8, storage_class

    kind = storage_class(name)
    if kind == FP4:
        return fake_fp4(w)
    if kind == FP8:
        return fake_fp8(w)
    if kind == BF16:
        return w.to(torch.bfloat16).float()
    return w


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------
def losses(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean next-token cross-entropy, and the MTP block's (token t+2 from streams at t and token t+1)."""
    out = model(ids[:, :-1])
    main = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
    if not len(model.mtp):
        return main, None
    mtp = model.mtp_logits(out.streams[:, :-1], ids[:, 1:-1], out.past_key_values)
    return main, torch.nn.functional.cross_entropy(mtp.flatten(0, 1), ids[:, 2:].flatten())


@torch.no_grad()
def evaluate(model, ids: np.ndarray, device: str, seq: int = SEQ_LEN) -> dict:
    """Held-out mean losses over consecutive windows of `seq` + 1 tokens (each from fresh state)."""
    model.eval()
    n = (len(ids) - 1) // seq
    windows = torch.from_numpy(ids[: n * seq + 1].astype(np.int64))
    main_sum = mtp_sum = 0.0
    for i in range(n):
        chunk = windows[i * seq : (i + 1) * seq + 1].unsqueeze(0).to(device)
        main, mtp = losses(model, chunk)
        main_sum += float(main)
        mtp_sum += float(mtp) if mtp is not None else 0.0
    model.train()
    out = {"loss": main_sum / n, "ppl": math.exp(main_sum / n), "windows": n}
    if len(model.mtp):
        out["mtp_loss"] = mtp_sum / n
    return out


def optimise(params: list[tuple[str, torch.nn.Parameter]], gates: list, steps: int, lr: float, qat_fraction: float,
             step_loss, log_every: int = 50, max_seconds: float = 0.0) -> tuple[list[dict], int, float]:
    """The training loop of the toys and of their drafters: AdamW (weight decay 0.1 on matrices, none on
    vectors and router biases, betas 0.9/0.95), 5% warm-up then cosine to 5% of `lr`, gradients clipped at
    1.0; the routers `gates` balanced without gradient (bias += BIAS_RATE * sign(mean load - load)); the
    last `qat_fraction` of the steps straight-through on the weights rounded as the release stores them.
    `step_loss(step)` draws its batch and returns (loss, fields to log). Returns the log, the steps done and
    the seconds spent."""
    opt = torch.optim.AdamW([{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for n, p in params if p.dim() < 2 and not n.endswith("gate.bias")],
                              "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    loads: dict[int, torch.Tensor] = {}

    def count_picks(module, args, output):
        loads[id(module)] = torch.bincount(output[0].flatten(), minlength=module.weight.shape[0]).float()

    for g in gates:
        g.register_forward_hook(count_picks)
    warmup, qat_start = max(1, steps // 20), int(steps * (1 - qat_fraction))
    quantised = [(n, p) for n, p in params if p.dim() == 2 and p.is_floating_point()]
    log, start, step = [], time.perf_counter(), 0
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        masters = None
        if step >= qat_start:  # straight-through: forward/backward on the stored values, update the masters
            masters = [p.data.clone() for _, p in quantised]
            with torch.no_grad():
                for name, p in quantised:
                    p.data.copy_(fake_release(name, p.data))
        loss, fields = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        if masters is not None:
            with torch.no_grad():
                for (_, p), m in zip(quantised, masters):
                    p.data.copy_(m)
        opt.step()
        with torch.no_grad():
            for g in gates:
                load = loads[id(g)]
                g.bias.add_(BIAS_RATE * torch.sign(load.mean() - load))
        if step % log_every == 0 or step == steps - 1:
            entry = {"step": step, **fields, "lr": opt.param_groups[0]["lr"], "qat": masters is not None,
                     "elapsed_s": round(time.perf_counter() - start, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if max_seconds and time.perf_counter() - start > max_seconds:
            print(f"stopped early at step {step} of {steps}: --max-seconds {max_seconds} reached", flush=True)
            break
    return log, step + 1, time.perf_counter() - start


def draw_batch(ids: np.ndarray, batch: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """`batch` random windows of SEQ_LEN + 1 training tokens."""
    starts = torch.randint(0, len(ids) - SEQ_LEN - 1, (batch,), generator=gen).numpy()
    return torch.from_numpy(np.stack([ids[s : s + SEQ_LEN + 1] for s in starts])).to(device)


def train(data: Path, preset_name: str, out: Path, steps: int, batch: int, lr: float, seed: int, device: str,
          qat_fraction: float, log_every: int = 50, max_seconds: float = 0.0) -> None:
    from deepseek_v4_ov.checkpoint.layout import write_shards
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
    from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    from deepseek_v4_ov.checkpoint.release import round_to_release
    from deepseek_v4_ov.toys.presets import PRESETS

    out.mkdir(parents=True, exist_ok=True)
    train_ids = np.load(data / "train_ids.npy").astype(np.int64)
    held_ids = np.load(data / "heldout_ids.npy")
    torch.manual_seed(seed)
    config = DeepseekV4Config(**PRESETS[preset_name])
    model = DeepseekV4ForCausalLM(config).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{preset_name}: {n_params:,} parameters, {len(train_ids):,} training tokens, {steps} steps of "
          f"{batch}x{SEQ_LEN} on {device}", flush=True)
    gen = torch.Generator().manual_seed(seed)

    def step_loss(step: int):
        main, mtp = losses(model, draw_batch(train_ids, batch, gen, device))
        loss = main + (MTP_WEIGHT * mtp if mtp is not None else 0.0)
        return loss, {"loss": main.item(), "mtp_loss": mtp.item() if mtp is not None else None}

    gates = [m for m in model.modules() if type(m).__name__ == "Gate" and not m.hashed]
    log, steps_done, train_s = optimise(list(model.named_parameters()), gates, steps, lr, qat_fraction, step_loss,
                                        log_every, max_seconds)
    master_eval = evaluate(model, held_ids, device)
    model = model.cpu().float()
    stored = round_to_release(model)
    stored_eval = evaluate(model.to(device), held_ids, device)
    write_shards(out, stored, 2 << 20)
    summary = {"preset": preset_name, "parameters": n_params, "seed": seed, "steps": steps,
               "steps_done": steps_done, "batch": batch,
               "seq_len": SEQ_LEN, "lr": lr, "qat_fraction": qat_fraction, "device": device,
               "torch": torch.__version__, "train_s": round(train_s, 1),
               "final_train_loss": log[-1]["loss"], "final_train_mtp_loss": log[-1]["mtp_loss"],
               "heldout_master": master_eval, "heldout_stored": stored_eval, "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"done in {train_s:.0f}s: held-out loss master {master_eval['loss']:.4f} (ppl {master_eval['ppl']:.3f}), "
          f"stored FP4/FP8 {stored_eval['loss']:.4f} (ppl {stored_eval['ppl']:.3f})"
          + (f"; MTP {stored_eval['mtp_loss']:.4f}" if "mtp_loss" in stored_eval else ""), flush=True)


def ship(run: Path, dest: Path) -> None:
    """Copy a training run's release-layout shards and log into the repository folder `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.safetensors"):
        old.unlink()
    for f in [*run.glob("*.safetensors"), run / "model.safetensors.index.json", run / "train_log.json"]:
        shutil.copyfile(f, dest / f.name)
    print(f"shipped {run} -> {dest}")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a training run (`train`, and train_drafters.py's) that `optimise` and the batches use."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--qat-fraction", type=float, default=0.2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="safety stop (recorded in the log); 0: none")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python training/train_toys.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("data", type=Path)
    b = sub.add_parser("train")
    b.add_argument("data", type=Path)
    b.add_argument("--preset", default="trained")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--steps", type=int, default=1500)
    b.add_argument("--batch", type=int, default=128)
    b.add_argument("--lr", type=float, default=3e-3)
    add_run_options(b)
    c = sub.add_parser("ship")
    c.add_argument("run", type=Path)
    c.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 training: the toys' reference is FP32
    if args.cmd == "prepare":
        prepare(args.data)
    elif args.cmd == "train":
        train(args.data, args.preset, args.out, args.steps, args.batch, args.lr, args.seed, args.device,
              args.qat_fraction, args.log_every, args.max_seconds)
    else:
        ship(args.run, args.dest)


if __name__ == "__main__":
    main()
