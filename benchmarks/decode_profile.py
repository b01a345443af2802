"""A decode profile you can trust: per exported slice, the unprofiled decode step and a steady-state profile.

    python benchmarks/decode_profile.py IR [IR ...] [--prompt 256] [--steps 12] [--context 4096] \
        [--json benchmarks/results/decode_profile.json]

For each IR (an exported folder, e.g. a full-width slice of `benchmarks/layer_types.py`), in a fresh process:
1. unprofiled: a `--prompt`-token prompt, `--warmup` decode steps, then the median of `--steps` decode steps
   (each after reading a 1 GiB buffer, so that the weights come from memory, not from the L3); the same at
   `--context` tokens of context when given (CSA's top-k entries fill at 2,048 tokens, HCA's keep growing).
2. profiled (PERF_COUNT, a second compile): the same prompt and warm-up, then `--steps` decode steps; each
   node's time is averaged over those steps (the plugin's counters are per call), so the profile is a
   steady state, not a first call. Profiling inflates the step (~2.5x at full width): read shares, time the
   unprofiled step.
3. every executed node is mapped to the port's module it was traced from (`originalLayersNames` of the
   runtime graph: `__module.model.layers.0.attn.indexer/...` -> `layers.N.attn.indexer`), so the table says
   which part of `modeling_deepseek_v4.py` costs what; nodes made by the plugin's transformations (no
   traced name) fall under the module of the named node executed before them.

Prints, per IR: the step times, executed nodes per part (embed / layer / head), the top op types and the
module table; writes everything to `--json`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import last_json, machine, machine_line, python_main, run_child, table, write_json  # noqa: E402

EVICT_BYTES = 1 << 30  # larger than the last-level cache of the Xeons measured (480 MiB)
MODULE_RE = re.compile(r"__module\.model\.((?:layers|mtp)\.\d+(?:\.[a-z_]+(?:\.\d+)?)*)")
LAYER_RE = re.compile(r"^(?:layers|mtp)\.\d+")


def module_of(names: str) -> str | None:
    """The deepest port module named in a node's original names (`layers.0.attn.indexer`, with the layer
    index replaced by N), `embed`, `head`, or None when the node carries no traced name."""
    found = MODULE_RE.findall(names)
    if found:
        return LAYER_RE.sub(lambda m: m.group(0).split(".")[0] + ".N", max(found, key=len))
    if re.search(r"__module\.model\.embed|\bembed\b", names):
        return "embed"
    if re.search(r"__module\.model\.(head|norm|hc_head)|\bhead\b|hc_head|logits", names):
        return "head"
    return None


def part_of(module: str) -> str:
    return "layer" if module.startswith(("layers.", "mtp.")) else module


def runtime_names(compiled) -> dict[str, str]:
    """Executed node name -> the original (traced) names it was made from."""
    out = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        out[op.get_friendly_name()] = names
    return out


class CallProfile:
    """Per-node times of chosen calls of a PERF_COUNT-compiled `OVCausalLM`. The plugin reports each node's
    time averaged over every call since compile (measured on 2026.4.1: after call n, the mean of calls
    1..n), so the calls between two snapshots took n1 * mean1 - n0 * mean0."""

    def __init__(self, lm) -> None:
        self.lm, self.calls = lm, 0
        self.original = runtime_names(lm.compiled)

    def __call__(self, tokens, **kwargs) -> None:
        self.lm(tokens, **kwargs)
        self.calls += 1

    def reset(self) -> None:
        self.lm.reset()

    @property
    def last_s(self) -> float:
        return self.lm.last_s

    def snapshot(self) -> tuple[int, dict[str, tuple[str, float, str]]]:
        module, seen = "embed", {}
        for p in self.lm.request.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            module = module_of(self.original.get(p.node_name, "") + " " + p.node_name) or module
            seen[p.node_name] = (f"{p.node_type} [{p.exec_type}]", p.real_time.total_seconds() * 1e3, module)
        return self.calls, seen

    @staticmethod
    def between(first, last) -> dict[str, Any]:
        """Per call between the snapshots `first` and `last`: ms and node count per part (embed / layer /
        head), per op type and per port module, executed nodes per part, and the costliest nodes."""
        (n0, before), (n1, after) = first, last
        nodes = [(name, kind, (n1 * ms - n0 * before.get(name, (kind, 0.0, module))[1]) / (n1 - n0), module)
                 for name, (kind, ms, module) in after.items()]
        total = sum(n[2] for n in nodes)
        buckets: dict[str, dict[str, list]] = {"parts": {}, "by_type": {}, "by_module": {}}
        for _, kind, ms, module in nodes:
            for key, bucket in ((part_of(module), "parts"), (kind, "by_type"), (module, "by_module")):
                entry = buckets[bucket].setdefault(key, [0, 0.0])
                entry[0] += 1
                entry[1] += ms
        out: dict[str, Any] = {"calls": n1 - n0, "total_ms": round(total, 4)}
        for name, bucket in buckets.items():
            out[name] = {k: {"nodes": v[0], "ms": round(v[1], 4), "share": round(v[1] / total, 4) if total else 0}
                         for k, v in sorted(bucket.items(), key=lambda kv: -kv[1][1])}
        out["executed_nodes"] = {k: v["nodes"] for k, v in out["parts"].items()}
        out["top_nodes"] = [[round(ms, 4), name, kind, module] for name, kind, ms, module in
                            sorted(nodes, key=lambda n: -n[2])[:25]]
        return out


def worker(ir: Path, prompt: int, warmup: int, steps: int, context: int) -> dict[str, Any]:
    import numpy as np
    import openvino as ov

    from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM

    vocab = json.loads((ir / "config.json").read_text())["vocab_size"]
    longest = max(prompt, context) + warmup + steps + 1
    ids = np.random.default_rng(0).integers(2, vocab, (1, longest), dtype=np.int64)
    evict = np.ones(EVICT_BYTES // 8)
    core = ov.Core()

    def run(call, start: int, mark=None) -> list[float]:
        """Reset; a prompt of `start` tokens (in calls of at most 512), warm-up, then timed decode steps
        (`mark()` before the first and after the last); their times in ms."""
        call.reset()
        for at in range(0, start, 512):
            call(ids[:, at:min(start, at + 512)])
        for i in range(warmup):
            call(ids[:, start + i:start + i + 1])
        times = []
        for i in range(warmup, warmup + steps):
            if mark and i == warmup:
                mark()
            evict.sum()
            call(ids[:, start + i:start + i + 1])
            times.append(call.last_s * 1e3)
        if mark:
            mark()
        return times

    lm = OVCausalLM(ir, config=F32_CONFIG, core=core)
    out: dict[str, Any] = {"ir": str(ir), "prompt": prompt, "warmup": warmup, "steps": steps}
    out["decode_ms"] = round(statistics.median(run(lm, prompt)), 3)
    if context:
        out["context"] = context
        out["decode_ms_at_context"] = round(statistics.median(run(lm, context)), 3)
    del lm

    profiled = CallProfile(OVCausalLM(ir, config={**F32_CONFIG, "PERF_COUNT": "YES"}, core=core))
    marks = []
    out["profiled_step_ms"] = round(statistics.median(run(profiled, prompt, lambda: marks.append(
        profiled.snapshot()))), 3)
    out.update(CallProfile.between(*marks))
    return out


def report(res: dict[str, Any]) -> str:
    lines = [f"{res['ir']}: decode {res['decode_ms']} ms/step (median of {res['steps']}, prompt {res['prompt']})"
             + (f", {res['decode_ms_at_context']} ms at {res['context']} tokens" if "context" in res else "")
             + f"; profiled step {res['profiled_step_ms']} ms (profile of {res['calls']} steps: "
             f"{res['total_ms']} ms per step); executed nodes {res['executed_nodes']}"]
    rows = [[k, v["nodes"], f"{v['ms']:.3f}", f"{100 * v['share']:.1f}%"] for k, v in list(res["by_type"].items())[:15]]
    lines.append(table(["op type [exec]", "nodes", "ms/step (profiled)", "share"], rows))
    rows = [[k, v["nodes"], f"{v['ms']:.3f}", f"{100 * v['share']:.1f}%"] for k, v in res["by_module"].items()]
    lines.append(table(["port module", "nodes", "ms/step (profiled)", "share"], rows))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("irs", nargs="*", type=Path)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--context", type=int, default=0, help="also time decode after this many tokens")
    ap.add_argument("--json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.prompt, args.warmup, args.steps, args.context)))
        return 0
    if not args.irs:
        ap.error("give at least one exported IR folder")
    for ir in args.irs:
        if not (ir / "openvino_model.xml").is_file():
            ap.error(f"{ir}: no openvino_model.xml (not an exported folder)")
    info = machine()
    print(machine_line(info), flush=True)
    result: dict[str, Any] = {"machine": info, "command": "python benchmarks/decode_profile.py " + " ".join(sys.argv[1:]),
                              "slices": []}
    for ir in args.irs:
        cmd = [python_main(), str(Path(__file__).resolve()), "--worker", str(ir), "--prompt", str(args.prompt),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--context", str(args.context)]
        rc, wall, rss, out = run_child(cmd)
        if rc:
            print(f"{ir}: FAILED\n{out[-3000:]}", flush=True)
            result["slices"].append({"ir": str(ir), "error": out[-3000:]})
            continue
        res = last_json(out)
        res["peak_rss_mb"] = round(rss, 1)
        print(report(res), flush=True)
        result["slices"].append(res)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
