"""Per-layer-type runtime of the exported IR at V4-Flash's widths on the CPU, the graph-form comparison, and
the V4-Flash projection computed from them.

    python benchmarks/layer_types.py --experts 256 --ratios 0 4 128 --workdir /tmp/lt \\
        --json benchmarks/results/layer_types.json --projection benchmarks/results/v4_flash_projection.json
    python benchmarks/layer_types.py --merge benchmarks/results/layer_types.json [--slices-from OTHER.json] \
        --projection benchmarks/results/v4_flash_projection.json        # (again) from a run's JSON
    python benchmarks/layer_types.py --results benchmarks/results/v4_flash_projection.json   # RESULTS.md block

1. Slices: one synthetic release-layout layer per type (ratio 0 sliding window + hash routing, 4 CSA, 128
   HCA; `conversion_memory.ensure_slice`: hidden 4096, 256 experts of 2048 top-6, vocabulary 129,280, embed
   and head), exported with the default command (int4), several at once (NNCF's compression is
   single-threaded).
2. Per slice, in a fresh process (`--worker`), the stateful IR compiled from its file (weights memory-mapped)
   as `generate` compiles it (`runtime.generate.Generator`): memory after compile and after running
   (`private` = anonymous pages, `file` = mapped file pages, per byte of .bin); prefill of a `--prompt`-token
   and a LONG_PROMPT-token prompt as `generate` feeds them (`OVCausalLM.prefill`: calls of `--chunk` tokens,
   the head on each call's last position), the `--prompt` one also in one call returning every position's
   logits (what perplexity needs; the IR's own output); the time to first token through
   `Generator.generate` for both prompts; decode (one token at a time); verify calls of S = 1, 2, 5 new
   tokens after the prompt (what checking 1/2/5 draft tokens costs). `--chunks` (on the CSA slice): the
   LONG_PROMPT prefill with each of these chunk sizes and the private memory after each (sizes in
   increasing order, so each figure is what that size adds), to choose `--prefill-chunk`'s default. Each
   figure is steady state: every timed call follows an untimed call of the same shape; before each timed
   call or prompt a 1 GiB buffer is read, so that the slice's weights come from memory, not from the
   last-level cache (V4-Flash's 43 layers could not stay there). A second compile with PERF_COUNT gives the
   steady-state profile (`decode_profile.CallProfile`) of both prompts' calls (each prompt's second run)
   and of PROFILE_STEPS decode steps after 4 warm-up steps, split into embed / layer / head by the port
   module each node was traced from; the layer's share splits the unprofiled times. (Until 2026-12-03 the
   profile was read after the first calls, and the plugin's counters average every call since compile,
   prefill included: the "decode" profiles of earlier runs were mostly prefill.)
   Variants (`--variants`, on the CSA slice): other precision hints and dynamic-quantization group sizes.
3. Forms (`--forms`): `benchmarks/upstream/compressed_moe.py` cases at full width (256 experts): the
   routed experts' form (grouped = GatherMatmul, per-expert FC, one fused FC), int4 sym/asym and group
   sizes, int8, f4e2m1, hints, dynamic quantization, prefill-sized calls, the head's precision at the real
   vocabulary, FP8 block-scaled linears; time per call and the private memory per weight byte.
4. Projection for V4-Flash (43 layers: `flash_compress_ratios`, 2 sliding, 21 CSA, 20 HCA): decode ms =
   the slices' mean embed+head ms + the layer ms of each of the 43 layers' type (a type not measured takes
   the CSA slice's figure, flagged); the same for both prefills (`prefill_tok_s`: `--prompt` tokens,
   `prefill_2048_tok_s`) and verify; the bandwidth bound = measured read
   bandwidth / (embed row + head + the 43 layers' active bytes, from each slice IR's constants:
   `bandwidth.bytes_per_token`); resident/IR = each slice's private bytes per .bin byte weighted by the
   43 layers' .bin bytes (embed+head weighted by the slices' mean).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (last_json, machine, machine_line, memory_mb, python_main,  # noqa: E402
                     replace_results_block, run_child, table, write_json)
from decode_profile import CallProfile  # noqa: E402

TYPE_NAMES = {0: "SWA (ratio 0)", 4: "CSA (ratio 4)", 128: "HCA (ratio 128)"}
VERIFY_S = (1, 2, 5)
LONG_PROMPT = 2048  # the long prompt (projection key prefill_2048_tok_s)
LONG_CONTEXT = 4096  # decode is also timed after this many tokens (CSA's top-k fills at 2,048, HCA keeps growing)
SNIPPETS = {"SNIPPETS_MODE": "IGNORE_CALLBACK"}  # variant "+snippets": the plugin fuses small eltwise/reduce chains
                                                # regardless of their parallel work amount (mHC's Sinkhorn)
EVICT_BYTES = 1 << 30  # larger than the CPU's last-level cache (480 MiB on the Xeons measured)
PROFILE_STEPS = 10  # decode steps the steady-state profile averages
FORMS = [  # (label, compressed_moe.py arguments), most telling first (`--forms-s` may cut the list short)
    ("experts grouped int4 sym g64 [f32] (the export's form)", "--form grouped --weights int4 --sym --group 64"),
    ("experts grouped int4 sym g64, w2's shape (N 4096, K 2048)",
     "--form grouped --weights int4 --sym --group 64 --n 4096 --k 2048"),
    ("experts grouped int4 sym g64, w1 and w3 stacked (N 4096)", "--form grouped --weights int4 --sym --group 64 --n 4096"),
    ("experts grouped int4 asym g32 (the earlier default)", "--form grouped --weights int4 --group 32"),
    ("experts 1 fused FC int4 sym g64 (static picks)", "--form fused --weights int4 --sym --group 64"),
    ("experts 6 separate FC int4 sym g64 (static picks)", "--form each --weights int4 --sym --group 64"),
    ("head f16 (release precision)", "--experts 1 --top 1 --n 129280 --form fused --weights f16 --calls 12"),
    ("head int8 per row (the export's head)",
     "--experts 1 --top 1 --n 129280 --form fused --weights int8 --calls 12"),
    ("head int4 sym g64", "--experts 1 --top 1 --n 129280 --form fused --weights int4 --sym --group 64 --calls 12"),
    ("experts grouped int4 sym g32", "--form grouped --weights int4 --sym --group 32"),
    ("experts grouped int4 asym g128", "--form grouped --weights int4 --group 128"),
    ("experts grouped int8", "--form grouped --weights int8"),
    ("experts grouped f4e2m1 (native)", "--form grouped --weights f4e2m1"),
    ("experts grouped int4 sym g64 [bf16]", "--form grouped --weights int4 --sym --group 64 --hint bf16"),
    ("experts grouped int4 sym g64, dyn. quant. off", "--form grouped --weights int4 --sym --group 64 --dq 0"),
    ("experts grouped int4 sym g64, 256 tokens",
     "--form grouped --weights int4 --sym --group 64 --tokens 256 --calls 6"),
    ("experts grouped int4 sym g64, 256 tokens [bf16]",
     "--form grouped --weights int4 --sym --group 64 --tokens 256 --calls 6 --hint bf16"),
    ("attention-size FC f8e4m3 + e8m0 128-blocks (native FP8)",
     "--experts 1 --top 1 --n 4096 --form fused --weights f8e4m3 --group 128 --calls 12"),
    ("attention-size FC int8 (per row, the export's)",
     "--experts 1 --top 1 --n 4096 --form fused --weights int8 --calls 12"),
]


# ---------------------------------------------------------------------------------------------- worker


def worker(ir: Path, hint: str, dq: int | None, args, with_profile: bool) -> dict:
    """One slice's measurements (module docstring, 2.), in this process; with `with_profile` also the long
    prompt, the time to first token, the `--chunks` sweep and the profiles."""
    import numpy as np

    from deepseek_v4_ov.runtime.generate import Generator

    prompt, new, reps, chunk = args.prompt, args.new, args.reps, args.chunk
    cfg = json.loads((ir / "config.json").read_text())
    config = {"INFERENCE_PRECISION_HINT": hint, **(SNIPPETS if args.snippets else {})}
    if dq is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(dq)
    evict = np.ones(EVICT_BYTES // 8)  # read before every timed call: a slice's weights would stay in the L3
    mem = {"start": memory_mb()}
    gen = Generator(ir, config=config, prefill_chunk=chunk)
    lm = gen.target
    mem["compiled"] = memory_mb()
    try:
        dq_used = int(lm.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    except RuntimeError:
        dq_used = None
    ids = np.random.default_rng(0).integers(2, cfg["vocab_size"], (1, max(prompt, LONG_CONTEXT) + new + 16),
                                            dtype=np.int64)

    def call(tokens):
        evict.sum()
        lm(tokens)
        return lm.last_s

    def prefill(length: int = prompt, size: int = chunk) -> float:
        """A prompt as `generate` feeds it (calls of `size` tokens, the head on each call's last position)."""
        lm.reset()
        evict.sum()
        lm.prefill(ids[:, :length], size)
        return lm.last_s

    def every_logit() -> float:
        """The prompt in one call returning every position's logits (perplexity's call)."""
        lm.reset()
        return call(ids[:, :prompt])

    def ttft(length: int) -> float:
        evict.sum()
        return gen.generate(ids[0, :length].tolist(), 1, stop_at_eos=False).ttft_s

    prefill()
    prefill_s = [prefill() for _ in range(reps)]
    every_logit()
    every_s = [every_logit() for _ in range(reps)]
    verify: dict[int, list[float]] = {}
    for s in VERIFY_S:
        for _ in range(reps):
            prefill()
            lm(ids[:, prompt:prompt + s])  # untimed: the first call of this shape
            verify.setdefault(s, []).append(call(ids[:, prompt + s:prompt + 2 * s]))
    prefill()
    decode_s = [call(ids[:, prompt + i:prompt + i + 1]) for i in range(new)]
    decode_s = decode_s[max(1, new // 4):]
    mem["ran"] = memory_mb()
    out: dict[str, Any] = {
        "hint": hint, "dq_requested": dq, "dq_group_size": dq_used, "exec_precision": lm.precision,
        "compile_s": round(lm.timings.compile_s, 2), "prompt": prompt, "chunk": chunk,
        "prefill_ms": round(1e3 * statistics.median(prefill_s), 2),
        "prefill_every_logit_ms": round(1e3 * statistics.median(every_s), 2),
        "decode_ms": round(1e3 * statistics.median(decode_s), 3),
        "verify_ms": {str(s): round(1e3 * statistics.median(v), 3) for s, v in verify.items()},
        "bin_bytes": (ir / "openvino_model.bin").stat().st_size}
    out["prefill_tok_s"] = round(prompt / out["prefill_ms"] * 1e3, 2)
    out["prefill_over_decode"] = round(out["prefill_ms"] / out["decode_ms"], 2)
    private = mem["ran"]["private"] - mem["start"]["private"]
    out["private_over_bin"] = round(private * 2**20 / out["bin_bytes"], 4)
    out["file_over_bin"] = round((mem["ran"]["file"] - mem["start"]["file"]) * 2**20 / out["bin_bytes"], 4)
    if with_profile:  # the slice's main measurement: also the long prompt, TTFT, the chunk sweep
        prefill(LONG_PROMPT)  # untimed: its calls' shapes (the last one's, when chunk does not divide it)
        out["prefill_2048_ms"] = round(1e3 * statistics.median(prefill(LONG_PROMPT) for _ in range(args.long_reps)), 1)
        out["prefill_2048_tok_s"] = round(LONG_PROMPT / out["prefill_2048_ms"] * 1e3, 2)
        mem["long"] = memory_mb()
        out["ttft_ms"] = {str(n): round(1e3 * ttft(n), 1) for n in (prompt, LONG_PROMPT)}
        prefill(LONG_CONTEXT)
        lm(ids[:, LONG_CONTEXT:LONG_CONTEXT + 1])  # untimed: the first step at this context
        long_s = [call(ids[:, LONG_CONTEXT + i:LONG_CONTEXT + i + 1]) for i in range(1, 1 + new // 2)]
        out["decode_ms_at_context"] = {"context": LONG_CONTEXT, "ms": round(1e3 * statistics.median(long_s), 3)}
        out["chunks"] = []
        for size in sorted(args.chunks, key=lambda c: c or LONG_PROMPT):
            lm.reset()
            lm(ids[:, :size or LONG_PROMPT], keep=1)  # untimed: the first call of this shape
            ms = 1e3 * prefill(LONG_PROMPT, size)
            after = memory_mb()["private"]
            out["chunks"].append({"chunk": size, "prefill_2048_ms": round(ms, 1),
                                  "prefill_2048_tok_s": round(LONG_PROMPT / ms * 1e3, 2),
                                  "private_mb_over_start": round(after - mem["start"]["private"], 1)})
            print(f"  chunk {size}: {LONG_PROMPT / ms * 1e3:.1f} tok/s, private {after:.0f} MB", file=sys.stderr,
                  flush=True)
    out["memory_mb"] = {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in mem.items()}
    if with_profile:
        del gen, lm
        prof = CallProfile(Generator(ir, config={**config, "PERF_COUNT": "YES"}, prefill_chunk=chunk).target)

        def profiled_prefill(length: int) -> dict:
            """The second run of a prompt as `OVCausalLM.prefill` feeds it, per call."""
            for run in range(2):
                prof.reset()
                first = prof.snapshot()
                for start in range(0, length, chunk or length):
                    prof(ids[:, start:start + (chunk or length)], keep=1)
            return CallProfile.between(first, prof.snapshot())

        out["profile_prefill"] = profiled_prefill(prompt)
        out["profile_prefill_2048"] = profiled_prefill(LONG_PROMPT)
        prof.reset()
        prof(ids[:, :prompt], keep=1)
        for i in range(4):
            prof(ids[:, prompt + i:prompt + i + 1])
        first = prof.snapshot()
        for i in range(4, 4 + PROFILE_STEPS):
            prof(ids[:, prompt + i:prompt + i + 1])
        out["profile_decode"] = CallProfile.between(first, prof.snapshot())
    return out


# ------------------------------------------------------------------------------------------ orchestration


def measure(ir: Path, hint: str, dq: int | None, args, with_profile: bool, timeout: float | None = None,
            chunks: list[int] = (), snippets: bool = False) -> dict:
    cmd = [python_main(), str(Path(__file__).resolve()), "--worker", str(ir), "--hint", hint, "--prompt",
           str(args.prompt), "--new", str(args.new), "--reps", str(args.reps), "--chunk", str(args.chunk),
           "--long-reps", str(args.long_reps), "--chunks", *map(str, chunks)]
    if dq is not None:
        cmd += ["--dq", str(dq)]
    if with_profile:
        cmd.append("--profile")
    if snippets:
        cmd.append("--snippets")
    rc, wall, rss, out = run_child(cmd, timeout=timeout)
    if rc:
        return {"error": out[-3000:], "hint": hint, "dq_requested": dq}
    res = last_json(out)
    res.update(peak_rss_mb=round(rss, 1), wall_s=round(wall, 1))
    return res


def layer_split(ir: Path) -> dict[str, float]:
    """Active (read per decoded token) and stored bytes of the slice's layer and of its ends (embed + head)."""
    from bandwidth import bytes_per_token

    bpt = bytes_per_token(ir)
    g = bpt["groups"]
    ends = [g["head"], g["embedding (1 row)"]]
    stored = sum(v["ir_bytes"] for v in g.values())
    return {"layer_active": bpt["active_bytes"] - sum(e["active_bytes"] for e in ends),
            "ends_active": sum(e["active_bytes"] for e in ends),
            "layer_stored": stored - sum(e["ir_bytes"] for e in ends),
            "ends_stored": sum(e["ir_bytes"] for e in ends)}


def per_layer(res: dict) -> dict[str, Any]:
    """Split a slice's decode / prefill / verify time into its layer and its ends by the profile's shares."""
    share_d = res["profile_decode"]["parts"]["layer"]["share"]
    share_p = res["profile_prefill"]["parts"]["layer"]["share"]
    share_l = res["profile_prefill_2048"]["parts"]["layer"]["share"]
    return {"layer_share_decode": round(share_d, 4), "layer_share_prefill": round(share_p, 4),
            "layer_share_prefill_2048": round(share_l, 4),
            "layer_decode_ms": round(res["decode_ms"] * share_d, 3),
            "ends_decode_ms": round(res["decode_ms"] * (1 - share_d), 3),
            "layer_prefill_ms": round(res["prefill_ms"] * share_p, 2),
            "ends_prefill_ms": round(res["prefill_ms"] * (1 - share_p), 2),
            "layer_prefill_2048_ms": round(res["prefill_2048_ms"] * share_l, 1),
            "ends_prefill_2048_ms": round(res["prefill_2048_ms"] * (1 - share_l), 1),
            "layer_verify_ms": {s: round(v * share_d, 3) for s, v in res["verify_ms"].items()},
            "ends_verify_ms": {s: round(v * (1 - share_d), 3) for s, v in res["verify_ms"].items()},
            "layer_executed_ops_decode": res["profile_decode"]["executed_nodes"]["layer"]}


def project(types: dict[int, dict], bandwidth_gbs: float, prompt: int) -> dict[str, Any]:
    from deepseek_v4_ov.model.configuration_deepseek_v4 import flash_compress_ratios

    ratios = flash_compress_ratios(43, 0)
    measured = sorted(types)
    fallback = 4 if 4 in types else measured[0]
    pick = {r: (r if r in types else fallback) for r in set(ratios)}
    ends = lambda key: statistics.mean(t[key] for t in types.values())  # noqa: E731
    decode_ms = ends("ends_decode_ms") + sum(types[pick[r]]["layer_decode_ms"] for r in ratios)
    prefill_ms = ends("ends_prefill_ms") + sum(types[pick[r]]["layer_prefill_ms"] for r in ratios)
    prefill_2048_ms = ends("ends_prefill_2048_ms") + sum(types[pick[r]]["layer_prefill_2048_ms"] for r in ratios)
    verify = {s: statistics.mean(t["ends_verify_ms"][s] for t in types.values())
              + sum(types[pick[r]]["layer_verify_ms"][s] for r in ratios) for s in map(str, VERIFY_S)}
    active = ends("ends_active") + sum(types[pick[r]]["layer_active"] for r in ratios)
    stored_ends = ends("ends_stored")
    stored = stored_ends + sum(types[pick[r]]["layer_stored"] for r in ratios)
    private = ends("private_over_bin") * stored_ends + sum(
        types[pick[r]]["private_over_bin"] * types[pick[r]]["layer_stored"] for r in ratios)
    bound = bandwidth_gbs * 1e9 / active
    return {"layers": len(ratios), "layer_types": {TYPE_NAMES[r]: ratios.count(r) for r in sorted(set(ratios))},
            "unmeasured_types_use": {TYPE_NAMES[r]: TYPE_NAMES[p] for r, p in pick.items() if r != p},
            "decode_ms": round(decode_ms, 2), "decode_tok_s": round(1e3 / decode_ms, 3),
            "bound_tok_s": round(bound, 3), "decode_fraction_of_bound": round(1e3 / decode_ms / bound, 4),
            "active_gb_per_token": round(active / 1e9, 3), "ir_weights_gb": round(stored / 1e9, 2),
            "prefill_prompt": prompt, "prefill_ms": round(prefill_ms, 1),
            "prefill_tok_s": round(prompt / prefill_ms * 1e3, 2),
            "prefill_2048_ms": round(prefill_2048_ms, 1),
            "prefill_2048_tok_s": round(LONG_PROMPT / prefill_2048_ms * 1e3, 2),
            "prefill_over_decode": round(prefill_ms / decode_ms, 2),
            "verify_ms": {s: round(v, 2) for s, v in verify.items()},
            "verify_ratio": {s: round(v / verify["1"], 3) for s, v in verify.items()},
            "resident_over_ir": round(private / stored, 4)}


def run_forms(args) -> list[dict]:
    script = Path(__file__).resolve().parent / "upstream" / "compressed_moe.py"
    rows, start = [], time.perf_counter()
    for label, extra in FORMS:
        if time.perf_counter() - start > args.forms_s:
            print(f"  form {label}: skipped (--forms-s {args.forms_s:g} spent)", flush=True)
            continue
        argv = extra.split() + (["--experts", str(args.experts)] if "--experts" not in extra else [])
        if args.small:
            argv += ["--n", "256", "--k", "512"]
        rc, _, _, out = run_child([python_main(), str(script), *argv])
        row = {"label": label, "args": " ".join(argv)}
        row.update(last_json(out) if rc == 0 else {"error": out[-1500:]})
        print(f"  form {label}: " + (f"{row['ms']:.3f} ms, {row['read_gbs']} GB/s, private/weights "
                                      f"{row['private_per_weight_byte']}" if "ms" in row else "ERROR"), flush=True)
        rows.append(row)
    return rows


def build_slice(ratio: int, args) -> dict:
    from conversion_memory import ensure_slice, export_measured

    from deepseek_v4_ov.export.identity import code_version, recorded

    overrides = {"hidden_size": 512, "moe_intermediate_size": 256, "vocab_size": 4096, "num_attention_heads": 8,
                 "head_dim": 128, "q_lora_rank": 128, "o_lora_rank": 128, "o_groups": 2, "index_n_heads": 8,
                 "index_head_dim": 64} if args.small else None
    out = args.workdir / f"slice-r{ratio}-e{args.experts}{'-small' if overrides else ''}-int4"
    record = args.workdir / f"{out.name}.export.json"  # the export's figures, for a later run that reuses it
    have = recorded(out)
    # reused when the IR is there and either its export key says so or the export's figures were recorded
    # (`.export.json`: by this function, or by _device_layers.sh for a slice benchmarks/llama_cpp.py exported).
    # The slice's checkpoint is removed after its export (unless --keep-checkpoints), so the source digest
    # cannot be recomputed; it is a seeded toy of this geometry written by this code, so the recorded code
    # version (and the int4 format) stand for it
    keyed = (have is not None and have["code_version"] == code_version()
             and have["options"]["weight_format"] == "int4")
    if (out / "openvino_model.xml").is_file() and (keyed or record.is_file()):
        key = {"export_key": have["key"]} if have is not None else {}
        figures = json.loads(record.read_text()) if record.is_file() else "reused"
        return {"ratio": ratio, "ir": str(out), "export": figures, **key}
    src = ensure_slice(args.workdir, ratio, args.experts, overrides)
    res = export_measured(src, out, "int4", keep=True)
    record.write_text(json.dumps(res))
    if not args.keep_checkpoints:
        shutil.rmtree(src, ignore_errors=True)
    print(f"  exported {out.name}: {res['wall_s']:.0f}s, peak {res['peak_rss_gb']:.2f} GB, IR {res['ir_gb']} GB",
          flush=True)
    return {"ratio": ratio, "ir": str(out), "export": res}


def main_run(args) -> int:
    from bandwidth import measure_bandwidth

    start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    info = machine()
    print(machine_line(info), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": info, "command": "python benchmarks/layer_types.py " + " ".join(sys.argv[1:])}
    bw = measure_bandwidth(args.gib, 3, os.cpu_count() or 1)
    result["bandwidth"] = {k: round(v, 2) for k, v in bw.items()}
    print(f"bandwidth: read {bw['read_all_gbs']:.1f} GB/s on {os.cpu_count()} threads", flush=True)
    if args.forms:
        result["forms"] = run_forms(args)
        write_json(args.json, result)
    free_gb = shutil.disk_usage(args.workdir).free / 1e9
    parallel = max(1, min(len(args.ratios), args.parallel, int(free_gb // 18) if not args.small else 3))
    print(f"building {len(args.ratios)} slices, {parallel} at a time ({free_gb:.0f} GB free)", flush=True)
    with ThreadPoolExecutor(parallel) as pool:
        built = list(pool.map(lambda r: build_slice(r, args), args.ratios))
    result["slices"] = built
    if args.export_only:
        write_json(args.json, result)
        return 0
    types: dict[int, dict] = {}
    for b in built:
        ir = Path(b["ir"])
        if left() < args.worker_s:
            print(f"  skipped r={b['ratio']}: {left():.0f}s left", flush=True)
            continue
        res = measure(ir, "f32", None, args, with_profile=True, timeout=left(),
                      chunks=args.chunks if b["ratio"] == args.chunks_on else [])
        b["f32"] = res
        if "error" in res:
            print(f"  r={b['ratio']}: ERROR {res['error'][-500:]}", flush=True)
            continue
        b["per_layer"] = per_layer(res)
        b["bytes"] = layer_split(ir)
        types[b["ratio"]] = {**b["per_layer"], **b["bytes"], "private_over_bin": res["private_over_bin"]}
        print(f"  r={b['ratio']}: decode {res['decode_ms']:.2f} ms (layer {b['per_layer']['layer_decode_ms']:.2f}), "
              f"prefill {res['prefill_tok_s']:.1f} tok/s ({LONG_PROMPT}: {res['prefill_2048_tok_s']:.1f}), ttft "
              f"{res['ttft_ms']} ms, verify {res['verify_ms']}, private/bin "
              f"{res['private_over_bin']}, file/bin {res['file_over_bin']}", flush=True)
        write_json(args.json, result)
    variants = []
    csa = next((b for b in built if b["ratio"] == 4), built[0])
    for spec in args.variants:
        base, _, extra = spec.partition("+")
        hint, _, dq = base.partition(":")
        if left() < args.worker_s * 0.6:
            print(f"  skipped variant {spec}: {left():.0f}s left", flush=True)
            continue
        res = measure(Path(csa["ir"]), hint, int(dq) if dq else None, args, with_profile=False, timeout=left(),
                      snippets=extra == "snippets")
        res["variant"] = spec
        variants.append(res)
        print(f"  variant {spec}: " + (f"decode {res['decode_ms']:.2f} ms, prefill {res['prefill_tok_s']:.1f} tok/s"
                                       if "error" not in res else "ERROR " + res["error"][-300:]), flush=True)
    result["variants_on"] = csa["ratio"]
    result["variants"] = variants
    if types:
        result["projection"] = project(types, bw["read_all_gbs"], args.prompt)
        print(json.dumps(result["projection"], indent=1), flush=True)
    write_json(args.json, result)
    if args.projection and types:
        merge_projection(Path(args.projection), result)
    return 0


def merge_projection(path: Path, result: dict) -> None:
    """Add a run's machine, command, bandwidth, per-layer-type measurements, forms and runtime projection
    (`result`: this script's JSON) to the projection JSON, keeping its conversion keys."""
    types = {b["ratio"]: {**b["per_layer"], **b["bytes"], "private_over_bin": b["f32"]["private_over_bin"]}
             for b in result["slices"] if "per_layer" in b}
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["machine"] = result["machine"]
    data["command"] = result["command"]
    data["bandwidth_gbs"] = round(result["bandwidth"]["read_all_gbs"], 2)
    data["layer_types"] = {TYPE_NAMES[r]: t for r, t in sorted(types.items())}
    data["verify_cost"] = {TYPE_NAMES[b["ratio"]]: {
        "ms": b["f32"]["verify_ms"], "ratio": {s: round(v / b["f32"]["verify_ms"]["1"], 3)
                                               for s, v in b["f32"]["verify_ms"].items()}}
        for b in result["slices"] if "verify_ms" in b.get("f32", {})}
    data["forms"] = [{k: f[k] for k in ("label", "args", "ms", "read_gbs", "private_per_weight_byte", "weight_mb",
                                         "private_mb", "profile_ms") if k in f} for f in result.get("forms", [])]
    data["prefill"] = {TYPE_NAMES[b["ratio"]]: {k: b["f32"][k] for k in (
        "prompt", "chunk", "decode_ms", "prefill_ms", "prefill_every_logit_ms", "prefill_tok_s", "prefill_over_decode",
        "prefill_2048_ms", "prefill_2048_tok_s", "ttft_ms")} | {
        "private_mb": {k: round(b["f32"]["memory_mb"][k]["private"] - b["f32"]["memory_mb"]["start"]["private"], 1)
                       for k in ("ran", "long")}} for b in result["slices"] if "per_layer" in b}
    data["prefill_chunks"] = next(({"on": TYPE_NAMES[b["ratio"]], "runs": b["f32"]["chunks"]}
                                   for b in result["slices"] if b.get("f32", {}).get("chunks")), None)
    prompt = next(b["f32"]["prompt"] for b in result["slices"] if "per_layer" in b)
    data.setdefault("projection", {}).update(
        result.get("projection") or project(types, result["bandwidth"]["read_all_gbs"], prompt))
    write_json(str(path), data)


# ------------------------------------------------------------------------------------------ RESULTS.md


def results_block(path: Path) -> str:
    """The RESULTS.md block (`v4-flash-projection`): per-layer-type measurements, the V4-Flash projection and the forms, from the
    projection JSON."""
    data = json.loads(path.read_text())
    p, m = data["projection"], data["machine"]
    rows = [[name, f"{t['layer_decode_ms']:.2f}", f"{t['layer_prefill_ms']:.0f}",
             f"{t['layer_active'] / 1e6:,.0f}", f"{t['private_over_bin']:.2f}", t["layer_executed_ops_decode"]]
            for name, t in data["layer_types"].items()]
    verify = [[name, *(f"{v['ms'][s]:.1f}" for s in map(str, VERIFY_S)),
               f"{v['ratio']['2']:.2f} / {v['ratio']['5']:.2f}"] for name, v in data["verify_cost"].items()]
    forms = [[f["label"], f"{f['ms']:.3f}", f"{f['read_gbs']:.1f}", f"{f['private_per_weight_byte']:.2f}",
              ", ".join(f"{k} {v:.2f}" for k, v in list(f["profile_ms"].items())[:2])]
             for f in data.get("forms", []) if "ms" in f]
    unmeasured = "; ".join(f"{k} uses {v}'s figures" for k, v in p["unmeasured_types_use"].items())
    prefill = [[name, v["chunk"] or "one call", f"{v['prefill_tok_s']:.1f}",
                f"{v['prompt'] / v['prefill_every_logit_ms'] * 1e3:.1f}", f"{v['prefill_2048_tok_s']:.1f}",
                f"{v['ttft_ms'][str(v['prompt'])]:,.0f} / {v['ttft_ms'][str(LONG_PROMPT)]:,.0f}",
                f"{v['prefill_over_decode']:.1f}", f"{v['private_mb']['ran']:,.0f} / {v['private_mb']['long']:,.0f}"]
               for name, v in data["prefill"].items()]
    sweep = data["prefill_chunks"]
    chunks = [[c["chunk"] or "one call", f"{c['prefill_2048_tok_s']:.1f}", f"{c['private_mb_over_start']:,.0f}"]
              for c in (sweep["runs"] if sweep else [])]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['ram_gib']} GiB, OpenVINO "
             f"{m['openvino']}, load average at start {m['loadavg_1m']}; read bandwidth {data['bandwidth_gbs']} "
             f"GB/s), `{data['command']}`:", "",
             table(["layer type (slice, 256 experts)", "decode ms/layer", f"prefill ms/layer ({p['prefill_prompt']} tok)",
                    "MB read/token", "private/.bin (whole slice)", "executed ops/layer (decode)"], rows), "",
             table(["verify cost (whole slice)", *(f"S={s} ms" for s in VERIFY_S), "S=2 / S=5 vs S=1"], verify), "",
             table(["prefill (whole slice)", "chunk", f"tok/s, {p['prefill_prompt']} tok",
                    f"tok/s, {p['prefill_prompt']} tok, every logit", f"tok/s, {LONG_PROMPT} tok",
                    f"TTFT ms via generate, {p['prefill_prompt']} / {LONG_PROMPT} tok",
                    f"{p['prefill_prompt']}-tok prefill / decode step", f"private MB after {p['prefill_prompt']} / "
                    f"{LONG_PROMPT} tok"], prefill), "",
             table(["V4-Flash projection (43 layers" + (f"; {unmeasured}" if unmeasured else "") + ")", "value"], [
                 ["decode tokens/s", p["decode_tok_s"]], ["bandwidth bound tokens/s", p["bound_tok_s"]],
                 ["decode / bound", f"{p['decode_fraction_of_bound']:.1%}"],
                 [f"prefill tokens/s ({p['prefill_prompt']}-token prompt)", p["prefill_tok_s"]],
                 [f"prefill tokens/s ({LONG_PROMPT}-token prompt)", p["prefill_2048_tok_s"]],
                 [f"{p['prefill_prompt']}-token prefill / decode step", p["prefill_over_decode"]],
                 ["resident private memory / IR weights", p["resident_over_ir"]],
                 ["verify 2 / 5 tokens vs 1", f"{p['verify_ratio']['2']} / {p['verify_ratio']['5']}"],
                 ["IR weights GB / read per token GB", f"{p['ir_weights_gb']} / {p['active_gb_per_token']}"]])]
    if chunks:
        lines += ["", f"Chunk size (`--chunks`, {sweep['on']} slice, {LONG_PROMPT}-token prompt, head on each call's "
                      "last position; private = anonymous memory over the process's start, sizes run in increasing "
                      "order):", "", table(["chunk", "prefill tok/s", "private MB"], chunks)]
    if forms:
        lines += ["", "Forms (`benchmarks/upstream/compressed_moe.py`, one call, full width; private = anonymous "
                      "memory compile and the first calls add, per byte of the weights' constants):", "",
                  table(["form", "ms/call", "GB/s of the bytes read", "private / weight bytes", "top ops (ms)"], forms)]
    return "\n".join(lines)


def main() -> int:
    from deepseek_v4_ov.runtime.ov_lm import DEFAULT_PREFILL_CHUNK

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--ratios", type=int, nargs="*", default=[4, 128, 0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-layers"))
    ap.add_argument("--small", action="store_true", help="small widths (a quick check of the script)")
    ap.add_argument("--parallel", type=int, default=3, help="slices exported at once")
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument("--export-only", action="store_true",
                    help="build and export the slices, then stop (a later run in the same --workdir measures them)")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                    help="prompt tokens per call, as `generate --prefill-chunk` (0: one call)")
    ap.add_argument("--chunks", type=int, nargs="*", default=[],
                    help=f"also time the {LONG_PROMPT}-token prefill with each of these chunk sizes (0: one call) and "
                         "the private memory after each, on the --chunks-on slice")
    ap.add_argument("--chunks-on", type=int, default=4, help="the ratio of the slice that --chunks runs on")
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--long-reps", type=int, default=1, help=f"timed {LONG_PROMPT}-token prefills per slice")
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--forms", action="store_true", help="run the compressed_moe.py form comparison")
    ap.add_argument("--forms-s", type=float, default=1e9, help="start no form case after this many seconds")
    ap.add_argument("--variants", nargs="*", default=["bf16", "f32:0"],
                    help="HINT[:DQ][+snippets] compiled on the CSA slice besides f32 with the plugin's defaults "
                         "(+snippets: SNIPPETS_MODE=IGNORE_CALLBACK)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip measurements that would start later")
    ap.add_argument("--worker-s", type=float, default=60, help="time one slice measurement is assumed to take")
    ap.add_argument("--json")
    ap.add_argument("--projection", help="merge the runtime projection into this JSON")
    ap.add_argument("--results", type=Path,
                    help="write benchmarks/RESULTS.md's `v4-flash-projection` block from this projection JSON "
                         "and exit")
    ap.add_argument("--merge", type=Path, help="merge this earlier --json result into --projection and exit")
    ap.add_argument("--forms-from", type=Path, help="with --merge: take the forms from this run's JSON")
    ap.add_argument("--slices-from", type=Path, nargs="+", default=[],
                    help="with --merge: add the measured slices of these runs' JSON (same machine; e.g. a layer "
                         "type that did not fit the first run) and recompute the projection from all of them")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--hint", default="f32", help=argparse.SUPPRESS)
    ap.add_argument("--dq", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--snippets", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    bad = [v for v in args.variants if v.partition("+")[2] not in ("", "snippets")]
    if bad:
        ap.error(f"--variants {bad[0]}: HINT[:DQ][+snippets]")
    if args.results:
        replace_results_block("v4-flash-projection", results_block(args.results))
        return 0
    if args.merge:
        result = json.loads(args.merge.read_text())
        if args.forms_from:  # the forms of another run of this script (same machine)
            other = json.loads(args.forms_from.read_text())
            result["forms"] = other["forms"]
            result["command"] += f" (forms: {other['command']}, {other['machine']['date']})"
        for path in args.slices_from:
            other = json.loads(path.read_text())
            result["slices"] += [b for b in other["slices"] if "per_layer" in b]
            result["command"] += f" (+ slices: {other['command']}, {other['machine']['date']})"
            result.pop("projection", None)  # recomputed from every measured slice
        merge_projection(Path(args.projection), result)
        return 0
    if args.worker:
        res = worker(args.worker, args.hint, args.dq, args, args.profile)
        print("RESULT " + json.dumps(res))
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
