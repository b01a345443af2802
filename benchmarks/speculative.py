"""Plain greedy decode against MTP-1 and DSpark speculative decode (`generate --mtp` / `--dspark`) on the
`trained-full` toy (its own MTP block; its DSpark drafter, `toy --drafter dspark`), FP32 IR, f32 hint, in one
run, side by side.

    .venv/bin/python benchmarks/speculative.py [--prompts 4] [--prompt-length 120] [--new-tokens 128]
                                               [--repeats 3] [--threads N] [--json FILE]
    .venv/bin/python benchmarks/speculative.py --results RUN.json [RUN2.json]   # RESULTS.md block from runs

The trained toy is written and exported three times (the plain target; with its MTP drafter, `export
--drafter mtp`; in the -0731 layout with its DSpark drafter, `export --drafter dspark`) into --workdir, reused
when present. Prompts are windows of held-out Python source
(deepseek_v4_ov/toys/data/heldout.txt, never trained on). Each (repeat, prompt) runs plain, then MTP, then DSpark decoding,
back to back, after one unmeasured warm-up of each; both give the same tokens (checked). Decode tokens/s
counts the tokens after the first over the time after it (`runtime/generate.py`). The table gives the median
over all runs of each mode, the best run of each, the median of the per-run ratios, the same on CPU time
(tokens per CPU second of this process: the figure other processes' load moves least; with --threads 1 it
is the work done), each drafter's acceptance and mean accepted drafts per step, and what the snapshot of the target's states costs. Last, the target's
cost per call (CPU ms, median) by call length: constant 1, constant 2, and alternating 2/3 (what a
verify call of varying length pays on the CPU plugin).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (ensure_export, machine, machine_line, python_main, replace_results_block, run_child,  # noqa: E402
                     table, write_json)

from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer  # noqa: E402
from deepseek_v4_ov.runtime.generate import Generator  # noqa: E402
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM  # noqa: E402
from deepseek_v4_ov.toys.trained import heldout_windows  # noqa: E402

PRESET = "trained-full"


def ensure_trained(workdir: Path, drafter: str | None = None) -> Path:
    """The trained toy with its own drafter (MTP), or with `drafter` ("dspark") in its place."""
    folder = workdir / (PRESET + (f"-{drafter}" if drafter else ""))
    if not (folder / "config.json").is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        rc, wall, _, out = run_child([python_main(), "-m", "deepseek_v4_ov.cli", "toy", str(folder), "--preset",
                                      PRESET, "--overwrite", *(["--drafter", drafter] if drafter else [])])
        if rc:
            raise RuntimeError(f"writing {folder.name} failed:\n{out[-4000:]}")
        print(f"  wrote {folder} in {wall:.1f}s", flush=True)
    return folder


def call_costs(folder: Path, config: dict, prompt: list[int], calls: int = 24) -> dict[str, float]:
    """CPU ms per target call (median) for calls of constant length 1, 2 and of lengths alternating 2/3."""
    lm = OVCausalLM(folder, config=config)
    ids = np.resize(np.array(prompt, dtype=np.int64), 4 * calls + len(prompt))[None]
    out = {}
    for name, lengths in (("1", [1]), ("2", [2]), ("2/3", [2, 3])):
        lm.reset()
        lm(ids[:, : len(prompt)])
        at, times = len(prompt), []
        for k in range(calls):
            n = lengths[k % len(lengths)]
            start = time.process_time()
            lm(ids[:, at: at + n])
            times.append(time.process_time() - start)
            at += n
        out[name] = 1e3 * statistics.median(times[2:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench-speculative")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-length", type=int, default=120)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS of target and drafter alike "
                                                           "(default 0: the plugin's choice, all cores)")
    ap.add_argument("--json", default=None, help="write the results here (e.g. benchmarks/results/speculative.json)")
    ap.add_argument("--results", nargs="+", type=Path, metavar="JSON",
                    help="write benchmarks/RESULTS.md's `speculative` block from these runs' JSON files and exit")
    args = ap.parse_args()
    if args.results:
        blocks = [report(json.loads(path.read_text())) for path in args.results]
        replace_results_block("speculative", "\n\n".join(blocks))
        return
    info = machine()
    print(machine_line(info), flush=True)
    src = ensure_trained(args.workdir)
    plain_dir = ensure_export(args.workdir, src, "fp32")
    dirs = {"mtp": ensure_export(args.workdir, src, "fp32", drafter="mtp"),
            "dspark": ensure_export(args.workdir, ensure_trained(args.workdir, "dspark"), "fp32", drafter="dspark")}
    prompts = [w[0].tolist() for w in heldout_windows(load_hf_tokenizer(src), args.prompts, args.prompt_length)]
    config = {**F32_CONFIG, **({"INFERENCE_NUM_THREADS": args.threads} if args.threads else {})}
    plain = Generator(plain_dir, config=config)
    spec = {mode: Generator(folder, drafter=mode, config=config) for mode, folder in dirs.items()}
    for gen in (plain, *spec.values()):  # warm-up: first calls of each input shape
        gen.generate(prompts[0], args.new_tokens, stop_at_eos=False)
    runs = []
    for repeat in range(args.repeats):
        for k, ids in enumerate(prompts):
            a = plain.generate(ids, args.new_tokens, stop_at_eos=False)
            for mode, gen in spec.items():
                b = gen.generate(ids, args.new_tokens, stop_at_eos=False)
                if a.tokens != b.tokens:
                    raise AssertionError(f"prompt {k}: {mode} speculative tokens differ from plain greedy")
                s = b.stats
                runs.append({"mode": mode, "repeat": repeat, "prompt": k, "plain_tokens_per_s": a.tokens_per_s,
                             "tokens_per_s": b.tokens_per_s, "ratio": b.tokens_per_s / a.tokens_per_s,
                             "plain_tokens_per_cpu_s": a.tokens_per_cpu_s, "tokens_per_cpu_s": b.tokens_per_cpu_s,
                             "cpu_ratio": b.tokens_per_cpu_s / a.tokens_per_cpu_s,
                             "plain_ttft_s": a.ttft_s, "ttft_s": b.ttft_s, "steps": s.steps,
                             "proposed": s.proposed, "accepted": s.accepted, "decode_s": b.decode_s,
                             "drafter_s": s.drafter_s, "snapshot_s": s.snapshot_s, "saves": s.snapshot_saves,
                             "restores": s.snapshot_restores, "snapshot_bytes": s.snapshot_bytes})
                print(f"  repeat {repeat} prompt {k}: plain {a.tokens_per_s:.1f} tok/s, {mode} {b.tokens_per_s:.1f} "
                      f"tok/s (x{runs[-1]['ratio']:.2f}; per CPU second x{runs[-1]['cpu_ratio']:.2f}), acceptance "
                      f"{s.acceptance:.3f}", flush=True)
    summary = {mode: summarize([r for r in runs if r["mode"] == mode]) for mode in spec}
    costs = call_costs(plain_dir, config, prompts[0])
    payload = {"machine": info, "command": " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()},
               "summary": summary, "call_cpu_ms": costs, "runs": runs}
    print()
    print(report(payload))
    write_json(args.json, payload)


def report(payload: dict) -> str:
    """The tables of one run (its JSON payload): decode speed by drafter, the drafters' figures, the target
    call's cost by length."""
    summary, args, costs = payload["summary"], payload["args"], payload["call_cpu_ms"]
    threads = f"{args['threads']} thread(s)" if args["threads"] != "0" else "default threads"
    lines = [f"`{PRESET}`, FP32 IR, f32 hint, {threads}, {args['prompts']} held-out prompts of "
             f"{args['prompt_length']} tokens, {args['new_tokens']} new tokens, {args['repeats']} repeats; "
             f"`{payload['command']}`; {machine_line(payload['machine'])}", ""]
    first = summary["mtp"]
    rows = [["plain greedy", f"{first['plain_tokens_per_s']:.1f}", "1.00", f"{first['plain_best_tokens_per_s']:.1f}",
             "1.00", f"{first['plain_tokens_per_cpu_s']:.1f}", "1.00"]]
    for mode, label in (("mtp", "--mtp (MTP-1 speculative)"), ("dspark", "--dspark (DSpark block of 5)")):
        m = summary[mode]
        rows.append([label, f"{m['tokens_per_s']:.1f}", f"{m['ratio_of_medians']:.2f}", f"{m['best_tokens_per_s']:.1f}",
                     f"{m['ratio_of_best']:.2f}", f"{m['tokens_per_cpu_s']:.1f}",
                     f"{m['median_ratio']:.2f} / {m['median_cpu_ratio']:.2f}"])
    lines += [table(["decode", "tokens/s (median)", "x plain", "tokens/s (best run)", "x plain",
                     "tokens per CPU s (median)", "median per-run x plain (wall / CPU)"], rows), ""]
    lines += [table(["drafter", "acceptance (drafts)", "mean accepted per step", "tokens per target call",
                     "drafter ms/step", "snapshot ms/step", "snapshot share of decode", "snapshot size",
                     "restores per step"], [[
        mode, f"{m['acceptance']:.3f}", f"{m['mean_accepted']:.2f}", f"{m['tokens_per_step']:.2f}",
        f"{m['drafter_ms_per_step']:.2f}", f"{m['snapshot_ms_per_step']:.3f}",
        f"{100 * m['snapshot_share_of_decode']:.2f}%", f"{m['snapshot_bytes'] / 1e3:.1f} kB",
        f"{m['restores_per_step']:.2f}"] for mode, m in summary.items()]), ""]
    lines += [table(["target call of", "1 token", "2 tokens", "2 and 3 tokens alternating"], [[
        "CPU ms (median)", *(f"{costs[k]:.2f}" for k in ("1", "2", "2/3"))]])]
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict[str, float]:
    """One drafter's runs: medians, best runs, ratios to plain, acceptance, what the loop spent."""
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    total = lambda key: sum(r[key] for r in runs)  # noqa: E731
    best = lambda key: max(r[key] for r in runs)  # noqa: E731
    return {
        "plain_tokens_per_s": med("plain_tokens_per_s"), "tokens_per_s": med("tokens_per_s"),
        "ratio_of_medians": med("tokens_per_s") / med("plain_tokens_per_s"), "median_ratio": med("ratio"),
        "plain_best_tokens_per_s": best("plain_tokens_per_s"), "best_tokens_per_s": best("tokens_per_s"),
        "ratio_of_best": best("tokens_per_s") / best("plain_tokens_per_s"),
        "plain_tokens_per_cpu_s": med("plain_tokens_per_cpu_s"), "tokens_per_cpu_s": med("tokens_per_cpu_s"),
        "median_cpu_ratio": med("cpu_ratio"),
        "acceptance": total("accepted") / total("proposed"),
        "mean_accepted": total("accepted") / total("steps"),
        "tokens_per_step": (total("accepted") + total("steps")) / total("steps"),
        "snapshot_ms_per_step": 1e3 * total("snapshot_s") / total("steps"),
        "snapshot_share_of_decode": total("snapshot_s") / total("decode_s"),
        "snapshot_bytes": max(r["snapshot_bytes"] for r in runs),
        "drafter_ms_per_step": 1e3 * total("drafter_s") / total("steps"),
        "restores_per_step": total("restores") / total("steps"),
    }


if __name__ == "__main__":
    main()
