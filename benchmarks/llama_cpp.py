"""llama.cpp beside our OpenVINO IR on the same synthetic full-width slices, in the same call.

    python benchmarks/llama_cpp.py --llama-dir /tmp/llama.cpp --ratios 4 128 --workdir /tmp/lc \\
        --json benchmarks/results/llama_cpp.json             # (the device run: benchmarks/_device_llama_cpp.sh)
    python benchmarks/llama_cpp.py --results benchmarks/results/llama_cpp.json   # RESULTS.md block
    python benchmarks/llama_cpp.py --check --llama-dir DIR --workdir /tmp/lc    # numerics on the trained toy

llama.cpp: the sources the llama-cpp-python 0.3.36 sdist vendors (ggml-org/llama.cpp 0c1e57098, DeepSeek-V4
in src/models/deepseek4.cpp), stripped by `benchmarks/_llama_cpp_src.sh` and built on the machine (CPU,
Release, GGML_NATIVE); `--llama-dir` is that source tree with its `build/bin`.

1. Slices: per layer type (ratio 4 CSA, 128 HCA, 0 SWA) one synthetic release-layout checkpoint with TWO
   layers of that type (`conversion_memory.ensure_slice(workdir, [r, r], ...)`: hidden 4096, 64 heads of 512,
   256 experts of 2048 top-6, vocabulary 129,280, embed + head). Its 1-layer variant is a view of it (a
   folder of symlinks to the shards of embed, layer 0 and head, with config.json and the index cut to one
   layer), so both variants hold the same weights.
2. llama.cpp: each variant converted by llama.cpp's own `convert_hf_to_gguf.py`, run in-process here with
   two adaptations (the checkpoint format is not changed; the view gets its own config.json): the view's
   config.json gains `norm_topk_prob: true` (the converter requires the key; V4's sqrtsoftplus router
   normalises its top-k weights, as the port does), the view gets our toy byte-level BPE tokenizer (the
   slices carry none), and the converter is told that tokenizer's pre-tokenizer is `gpt-2` (it is
   ByteLevel with GPT-2's regex; llama.cpp knows pre-tokenizers by a hash of known tokenizers' output) and
   loads it with `PreTrainedTokenizerFast` (its `AutoTokenizer` reads config.json first, which a transformers
   without DeepSeek-V4 cannot parse). The converter itself dequantises the FP8 linears (E8M0 128x128
   blocks) and stores them as Q8_0, repacks the FP4 experts losslessly into MXFP4, keeps BF16/F32 tensors:
   that file is the `MXFP4 experts + Q8_0 (as converted)` row; `llama-quantize --allow-requantize ...
   Q4_K_M` makes the `Q4_K_M` row from it. Each file is benched with `llama-bench -t T -p 256 -n 32 -r R
   --repack 0 -o json` (`--repack 1`, the default, aborts on AMX CPUs: `attn_output_a` lands in the AMX
   buffer); the other work of this script (our exports, the next conversion) is stopped (SIGSTOP) while it
   runs. Per layer = the 2-layer file minus the 1-layer file (median of the repetitions, each side).
   Bytes read per token of a layer: the GGUF sizes of one layer's tensors, the routed experts' at
   top-k / experts (every other tensor of the layer counted whole).
3. Ours: the default export (int4) of the slice's views, compiled from file, f32 hint, measured in a fresh
   process the way llama-bench measures: no cache eviction, a warm-up round, then R rounds of a 256-token
   prefill from an empty cache and R rounds of 32 single-token decode steps from an empty cache (ms/token =
   the round's total / 32; median of rounds). Per layer, `--ours diff`: the 2-layer IR minus the 1-layer IR
   (as llama.cpp); `--ours profile` (default: a 2-layer export takes ~8 min on the 16-core Xeon): the
   1-layer IR's time times the layer's share of a PERF_COUNT profile of the same calls (decode: 4 steps
   after a 256-token prompt; prefill: one 256-token call), as `layer_types.py` splits a slice.
   Bytes read per token of our layer: `layer_types.layer_split` (the IR's constants, experts at top-k/E).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (ROOT, last_json, machine, machine_line, python_main, replace_results_block,  # noqa: E402
                     run_child, table, write_json)

TYPE_NAMES = {0: "SWA (ratio 0)", 4: "CSA (ratio 4)", 128: "HCA (ratio 128)"}
QUANTS = {"mxfp4": "MXFP4 experts + Q8_0 (as converted)", "q4_k_m": "Q4_K_M (llama-quantize)"}
SMALL = {"hidden_size": 512, "moe_intermediate_size": 256, "vocab_size": 4096, "num_attention_heads": 8,
         "head_dim": 128, "q_lora_rank": 128, "o_lora_rank": 128, "o_groups": 2, "index_n_heads": 8,
         "index_head_dim": 64}  # --small: a quick check of the pipeline (layer_types.py's small widths)
EXPERT_RE = re.compile(r"blk\.\d+\.ffn_(gate|up|down|gate_up)_exps\.weight")


def disk_free(path: Path) -> str:
    return f"{shutil.disk_usage(path).free / 1e9:.1f} GB"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ checkpoint views


def make_view(src: Path, dst: Path, layers: int, for_llama: bool, tokenizer: Path | None = None) -> Path:
    """`dst`: the first `layers` layers of release-layout checkpoint `src` as symlinks to its shards, with
    config.json and the index cut to them; `for_llama`: plus `norm_topk_prob` and a tokenizer (copied
    from folder `tokenizer` when `src` has none)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    index = json.loads((src / "model.safetensors.index.json").read_text())

    def kept(name: str) -> bool:
        m = re.match(r"layers\.(\d+)\.", name)
        return m is None or int(m.group(1)) < layers

    weight_map = {k: v for k, v in index["weight_map"].items() if kept(k)}
    for shard in sorted(set(weight_map.values())):
        (dst / shard).symlink_to((src / shard).resolve())
    mixed = [s for s in set(weight_map.values()) if any(v == s and not kept(k) for k, v in index["weight_map"].items())]
    if mixed:
        raise RuntimeError(f"shards {mixed} mix kept and dropped layers: cannot view {src} as {layers} layer(s)")
    index["weight_map"] = weight_map
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    config["num_hidden_layers"] = layers
    config["compress_ratios"] = config["compress_ratios"][:layers]
    config["num_hash_layers"] = min(config.get("num_hash_layers", 0), layers)
    if for_llama:
        config.setdefault("norm_topk_prob", config.get("scoring_func", "softmax") != "softmax")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if for_llama:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            origin = src / name if (src / name).is_file() else (tokenizer / name if tokenizer else None)
            if origin is not None and origin.is_file():
                shutil.copyfile(origin, dst / name)
    return dst


def ensure_tokenizer(workdir: Path, vocab: int, max_pos: int) -> Path:
    """Our toy tokenizer (deepseek_v4_ov.checkpoint.tokenizer) for a vocabulary of `vocab`, written once."""
    folder = workdir / f"tokenizer-{vocab}"
    if not (folder / "tokenizer.json").is_file():
        code = ("import sys; sys.path.insert(0, %r)\nfrom pathlib import Path\n"
                "from deepseek_v4_ov.checkpoint.tokenizer import write_toy_tokenizer\n"
                "p = Path(%r); p.mkdir(parents=True, exist_ok=True); write_toy_tokenizer(p, %d, %d)\n"
                ) % (str(ROOT), str(folder), vocab, max_pos)
        rc, _, _, out = run_child([python_main(), "-c", code])
        if rc:
            raise RuntimeError(out[-3000:])
    return folder


# ------------------------------------------------------------------------------------------------ llama.cpp


class LlamaCpp:
    def __init__(self, root: Path, threads: int, repeat: int) -> None:
        self.root = root.resolve()
        self.bin = self.root / "build" / "bin"
        self.threads, self.repeat = threads, repeat
        src = self.root / "SOURCE.txt"
        self.source = src.read_text().strip() if src.is_file() else "unknown"

    def wait_build(self, timeout: float = 900) -> float:
        """Wait for the background build (its `build/DONE` or `build/FAILED` marker); returns seconds waited."""
        start = time.perf_counter()
        while not (self.root / "build" / "DONE").is_file():
            if (self.root / "build" / "FAILED").is_file() or time.perf_counter() - start > timeout:
                raise RuntimeError(f"llama.cpp build failed or timed out; see {self.root / 'build'}")
            time.sleep(2)
        return time.perf_counter() - start

    def convert(self, view: Path, out: Path) -> dict:
        cmd = [python_main(), str(Path(__file__).resolve()), "--convert", str(view), str(out),
               "--llama-dir", str(self.root)]
        rc, wall, rss, output = run_child(cmd)
        if rc:
            raise RuntimeError(f"convert_hf_to_gguf {view} failed:\n{output[-4000:]}")
        return {"wall_s": round(wall, 1), "peak_rss_gb": round(rss / 1e3, 2), "bytes": out.stat().st_size}

    def quantize(self, src: Path, out: Path, qtype: str) -> dict:
        cmd = [str(self.bin / "llama-quantize"), "--allow-requantize", str(src), str(out), qtype,
               str(self.threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")  # it prints raw bytes
        rc, wall, output = proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr
        if rc:
            raise RuntimeError(f"llama-quantize {qtype} failed:\n{output[-4000:]}")
        return {"wall_s": round(wall, 1), "bytes": out.stat().st_size,
                "types": dict(re.findall(r"llama_model_quantize_impl:\s+(\w+):\s+(\d+) tensors", output)) or None}

    def bench_cmd(self, gguf: Path, prompt: int, gen: int) -> list[str]:
        return [str(self.bin / "llama-bench"), "-m", str(gguf), "-t", str(self.threads), "-p", str(prompt),
                "-n", str(gen), "-r", str(self.repeat), "--repack", "0", "-o", "json"]

    def bench(self, gguf: Path, prompt: int, gen: int) -> dict:
        cmd = self.bench_cmd(gguf, prompt, gen)
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if proc.returncode:
            raise RuntimeError(f"llama-bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows = json.loads(proc.stdout)
        out: dict[str, Any] = {}
        for r in rows:
            kind = "prefill" if r["n_prompt"] and not r["n_gen"] else "decode"
            n = r["n_prompt"] or r["n_gen"]
            samples = [s / 1e6 for s in r["samples_ns"]]
            out[kind] = {"tokens": n, "ms": round(statistics.median(samples), 3),
                         "ms_per_token": round(statistics.median(samples) / n, 4),
                         "tok_s": round(r["avg_ts"], 2), "tok_s_stddev": round(r["stddev_ts"], 2),
                         "samples_ms": [round(s, 3) for s in samples]}
            for key in ("build_commit", "model_type", "model_size", "cpu_info", "n_threads", "n_batch",
                        "n_ubatch", "flash_attn", "repack", "type_k", "type_v"):
                out.setdefault(key, r.get(key))
        return out

    def tensor_bytes(self, gguf: Path) -> dict[str, Any]:
        """Per-layer and ends bytes of the GGUF's tensors (type of each layer's largest tensors)."""
        sys.path[:0] = [str(self.root / "gguf-py")]
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf))
        arch = reader.fields["general.architecture"].contents()
        k = int(reader.fields[f"{arch}.expert_used_count"].contents())
        e = int(reader.fields[f"{arch}.expert_count"].contents())
        layers: dict[int, dict[str, Any]] = {}
        ends = {"stored": 0, "active": 0.0}
        for t in reader.tensors:
            nb = int(t.n_bytes)
            m = re.match(r"blk\.(\d+)\.", t.name)
            if m is None:
                ends["stored"] += nb
                ends["active"] += nb / t.shape[-1] if t.name == "token_embd.weight" else nb
                continue
            lay = layers.setdefault(int(m.group(1)), {"stored": 0, "active": 0.0, "experts_stored": 0, "types": {}})
            lay["stored"] += nb
            expert = bool(EXPERT_RE.fullmatch(t.name))
            lay["active"] += nb * k / e if expert else nb
            lay["experts_stored"] += nb if expert else 0
            lay["types"][t.tensor_type.name] = lay["types"].get(t.tensor_type.name, 0) + nb
        return {"layers": layers, "ends": ends, "top_k": k, "experts": e}


def convert_main(view: Path, out: Path, llama_dir: Path) -> int:
    """Run llama.cpp's convert_hf_to_gguf.py on `view` in this process, with the two adaptations the module
    docstring names (tokenizer loaded as PreTrainedTokenizerFast, pre-tokenizer `gpt-2`)."""
    sys.path[:0] = [str(llama_dir), str(llama_dir / "gguf-py")]
    import transformers
    from transformers import PreTrainedTokenizerFast

    transformers.AutoTokenizer.from_pretrained = lambda path, *a, **k: PreTrainedTokenizerFast.from_pretrained(path)
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = ["convert_hf_to_gguf.py", str(view), "--outfile", str(out)]
    convert_hf_to_gguf.main()
    return 0


# ------------------------------------------------------------------------------------------------------ ours


def ours_worker(ir: Path, prompt: int, gen: int, repeat: int, with_profile: bool) -> dict:
    import numpy as np
    import openvino as ov

    from deepseek_v4_ov.runtime.ov_lm import OVCausalLM

    cfg = json.loads((ir / "config.json").read_text())
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    lm = OVCausalLM(ir, config=config, core=core)
    ids = np.random.default_rng(0).integers(2, cfg["vocab_size"], (1, prompt + gen + 8), dtype=np.int64)

    def prefill() -> float:
        lm.reset()
        lm(ids[:, :prompt])
        return lm.last_s

    def decode_round() -> float:
        lm.reset()
        total = 0.0
        for i in range(gen):
            lm(ids[:, i:i + 1])
            total += lm.last_s
        return total

    prefill()  # warm-up rounds, as llama-bench's; each shape's right before its timed rounds (a change of
    pre = [prefill() for _ in range(repeat)]  # call length re-prepares the CPU plugin's graph)
    decode_round()
    dec = [decode_round() for _ in range(repeat)]
    out: dict[str, Any] = {
        "compile_s": round(lm.timings.compile_s, 2),
        "prefill": {"tokens": prompt, "ms": round(1e3 * statistics.median(pre), 3),
                    "ms_per_token": round(1e3 * statistics.median(pre) / prompt, 4),
                    "samples_ms": [round(1e3 * s, 3) for s in pre]},
        "decode": {"tokens": gen, "ms": round(1e3 * statistics.median(dec), 3),
                   "ms_per_token": round(1e3 * statistics.median(dec) / gen, 4),
                   "samples_ms": [round(1e3 * s, 3) for s in dec]}}
    if with_profile:  # steady state (decode_profile.CallProfile): a second prefill; 10 steps after 4 warm-up
        from decode_profile import CallProfile

        del lm
        prof = CallProfile(OVCausalLM(ir, config={**config, "PERF_COUNT": "YES"}, core=core))
        prof.reset()
        prof(ids[:, :prompt])
        prof.reset()
        first = prof.snapshot()
        prof(ids[:, :prompt])
        out["profile_prefill"] = CallProfile.between(first, prof.snapshot())
        for i in range(4):
            prof(ids[:, prompt + i:prompt + i + 1])
        first = prof.snapshot()
        for i in range(4, 14):
            prof(ids[:, prompt + i:prompt + i + 1])
        out["profile_decode"] = CallProfile.between(first, prof.snapshot())
    return out


def measure_ours(ir: Path, args, with_profile: bool) -> dict:
    cmd = [python_main(), str(Path(__file__).resolve()), "--worker", str(ir), "--prompt", str(args.prompt),
           "--gen", str(args.gen), "--repeat", str(args.repeat)] + (["--profile"] if with_profile else [])
    rc, wall, rss, out = run_child(cmd)
    if rc:
        raise RuntimeError(f"our worker on {ir} failed:\n{out[-3000:]}")
    res = last_json(out)
    res.update(wall_s=round(wall, 1), peak_rss_gb=round(rss / 1e3, 2))
    return res


class Background:
    """Child processes in their own process groups that can be stopped while something is timed."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, cmd: list[str], logfile: Path) -> None:
        self.logs[name] = logfile
        fh = logfile.open("w")
        self.procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started[name] = time.perf_counter()

    def running(self) -> list[subprocess.Popen]:
        return [p for p in self.procs.values() if p.poll() is None]

    def signal(self, sig: int) -> None:
        for p in self.running():
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, name: str, timeout: float) -> tuple[int | None, float, str]:
        """(exit status, or None when killed at `timeout` seconds from now; seconds since start; its log)."""
        proc = self.procs[name]
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        return rc, time.perf_counter() - self.started[name], self.logs[name].read_text()


# ------------------------------------------------------------------------------------------------- the run


def per_layer_llama(one: dict, two: dict) -> dict:
    return {kind: {"ms_per_token": round(two[kind]["ms_per_token"] - one[kind]["ms_per_token"], 4)}
            for kind in ("prefill", "decode")}


def ours_per_layer(res1: dict, res2: dict | None) -> dict:
    if res2 is not None:
        return {"method": "2-layer IR minus 1-layer IR",
                "decode_ms_per_token": round(res2["decode"]["ms_per_token"] - res1["decode"]["ms_per_token"], 4),
                "prefill_ms_per_token": round(res2["prefill"]["ms_per_token"] - res1["prefill"]["ms_per_token"], 4)}
    d, p = res1["profile_decode"], res1["profile_prefill"]
    sd, sp = d["parts"]["layer"]["share"], p["parts"]["layer"]["share"]
    return {"method": "1-layer IR x the layer's share of its PERF_COUNT profile",
            "layer_share_decode": round(sd, 4), "layer_share_prefill": round(sp, 4),
            "decode_ms_per_token": round(res1["decode"]["ms_per_token"] * sd, 4),
            "prefill_ms_per_token": round(res1["prefill"]["ms_per_token"] * sp, 4),
            "layer_executed_ops_decode": d["executed_nodes"]["layer"]}


def main_run(args) -> int:
    from conversion_memory import ensure_slice

    start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    info = machine()
    log(machine_line(info))
    llama = LlamaCpp(args.llama_dir, args.threads, args.repeat)
    args.workdir.mkdir(parents=True, exist_ok=True)
    overrides = {**(SMALL if args.small else {}), **json.loads(args.set or "{}")} or None
    result: dict[str, Any] = {
        "machine": info, "command": "python benchmarks/llama_cpp.py " + " ".join(sys.argv[1:]),
        "llama_cpp": {"source": llama.source, "threads": args.threads,
                      "bench": " ".join(Path(c).name if i == 0 else c
                                        for i, c in enumerate(llama.bench_cmd(Path("FILE.gguf"), args.prompt,
                                                                              args.gen)))},
        "slice": {"experts": args.experts, "small": args.small, "overrides": overrides},
        "method": {"llama_cpp": "per layer = 2-layer GGUF minus 1-layer GGUF (llama-bench medians)",
                   "ours": "2-layer IR minus 1-layer IR" if args.ours == "diff"
                   else "1-layer IR x the layer's share of a PERF_COUNT profile",
                   "cache": "no eviction on either side", "prompt": args.prompt, "gen": args.gen,
                   "repeat": args.repeat},
        "types": {}}

    # 1. the 2-layer slices (several at once: writing them is mostly I/O)
    with ThreadPoolExecutor(len(args.ratios)) as pool:
        srcs = dict(zip(args.ratios, pool.map(
            lambda r: ensure_slice(args.workdir, [r, r], args.experts, overrides), args.ratios)))
    log(f"slices written ({time.perf_counter() - start:.0f}s)")
    cfg = json.loads(next(iter(srcs.values())).joinpath("config.json").read_text())
    # 2. our exports in the background (stopped while llama-bench runs)
    bg = Background()
    irs: dict[tuple[int, int], Path] = {}
    for ratio, src in srcs.items():
        for layers in ((1, 2) if args.ours == "diff" else (1,)):
            view = make_view(src, args.workdir / f"{src.name}-L{layers}-view", layers, for_llama=False)
            irs[(ratio, layers)] = args.workdir / f"{src.name}-L{layers}-int4"
            if args.reuse and (irs[(ratio, layers)] / "openvino_model.xml").is_file():
                bg.start(f"export r{ratio} L{layers}", ["true"], args.workdir / f"reused-r{ratio}-L{layers}.log")
                continue
            bg.start(f"export r{ratio} L{layers}", [python_main(), "-m", "deepseek_v4_ov", "export", "--model", str(view),
                     str(irs[(ratio, layers)]), "--weight-format", "int4", "--disable-convert-tokenizer",
                     "--overwrite"], args.workdir / f"export-r{ratio}-L{layers}.log")
    log(f"{len(bg.procs)} export(s) started")
    tok = ensure_tokenizer(args.workdir, cfg["vocab_size"], cfg.get("max_position_embeddings", 4096))
    # 3. llama.cpp: convert, quantise, bench (our exports stopped meanwhile), delete
    build_wait = None
    for ratio, src in srcs.items():
        t = result["types"].setdefault(TYPE_NAMES[ratio], {"ratio": ratio, "llama_cpp": {}, "ours": {}})
        if left() < 120:
            log(f"skipped llama.cpp r={ratio}: {left():.0f}s left")
            continue
        views = {n: make_view(src, args.workdir / f"{src.name}-L{n}-gguf-view", n, True, tok) for n in (1, 2)}
        mx = {n: args.workdir / f"{src.name}-L{n}-mxfp4.gguf" for n in (1, 2)}
        with ThreadPoolExecutor(2) as pool:  # the converter is mostly one thread
            conv = dict(zip((1, 2), pool.map(lambda n: {"reused": True, "bytes": mx[n].stat().st_size, "wall_s": 0}
                                              if args.reuse and mx[n].is_file() else llama.convert(views[n], mx[n]),
                                              (1, 2))))
        log(f"r={ratio}: converted in {conv[1]['wall_s']}s / {conv[2]['wall_s']}s "
            f"({conv[1]['bytes'] / 1e9:.2f} / {conv[2]['bytes'] / 1e9:.2f} GB); disk free {disk_free(args.workdir)}")
        if not args.keep_checkpoints and args.ours != "diff":
            for shard in {p.resolve() for p in views[2].glob("*.safetensors")} - {
                    p.resolve() for p in views[1].glob("*.safetensors")}:
                shard.unlink()  # layer 1's shard: no export reads it
        if build_wait is None:
            build_wait = llama.wait_build()
            result["llama_cpp"]["build_waited_s"] = round(build_wait, 1)
        for layers in (1, 2):
            q4 = args.workdir / f"{src.name}-L{layers}-q4_k_m.gguf"
            quant = llama.quantize(mx[layers], q4, "Q4_K_M")
            log(f"r={ratio} L{layers}: Q4_K_M in {quant['wall_s']}s ({quant['bytes'] / 1e9:.2f} GB)")
            files = {"mxfp4": mx[layers], "q4_k_m": q4}
            bg.signal(signal.SIGSTOP)
            try:
                for q, path in files.items():
                    res = llama.bench(path, args.prompt, args.gen)
                    res["gguf"] = llama.tensor_bytes(path)
                    res["gguf"]["file_bytes"] = path.stat().st_size
                    res["convert"] = conv[layers] if q == "mxfp4" else quant
                    t["llama_cpp"].setdefault(q, {})[f"L{layers}"] = res
                    log(f"r={ratio} L{layers} {q}: decode {res['decode']['ms_per_token']:.3f} ms/token, prefill "
                        f"{res['prefill']['ms_per_token']:.3f} ms/token")
            finally:
                bg.signal(signal.SIGCONT)
            if not args.keep_gguf:
                for path in files.values():
                    path.unlink()
            write_json(args.json, result)
        for q, runs in t["llama_cpp"].items():
            if "L1" in runs and "L2" in runs:
                layer = per_layer_llama(runs["L1"], runs["L2"])
                lay = runs["L2"]["gguf"]["layers"]
                layer["bytes_per_token"] = int(lay[max(lay)]["active"])
                layer["stored_bytes"] = int(lay[max(lay)]["stored"])
                layer["types_bytes"] = lay[max(lay)]["types"]
                runs["per_layer"] = layer
    # 4. ours: wait for the exports, then measure (nothing else running)
    done = set()
    for name in list(bg.procs):
        rc, wall, out = bg.wait(name, left() - 30)
        pieces = dict(re.findall(r"piece \d+/\d+ \((\S+)\): ([\d.]+)s", out))
        log(f"{name}: exit {rc} after {wall:.0f}s (pieces {pieces})")
        ratio, layers = int(name.split()[1][1:]), int(name.split()[2][1:])
        result["types"][TYPE_NAMES[ratio]]["ours"].setdefault(f"L{layers}", {})["export"] = {
            "wall_s": round(wall, 1), "piece_s": {k: float(v) for k, v in pieces.items()},
            **({"error": out[-2000:]} if rc else {"killed_at_budget": True} if rc is None else {})}
        if rc == 0:
            done.add((ratio, layers))
    if not args.keep_checkpoints:
        for src in srcs.values():
            shutil.rmtree(src, ignore_errors=True)
    from layer_types import layer_split

    for ratio in srcs:
        t = result["types"][TYPE_NAMES[ratio]]
        res = {}
        for layers in ((1, 2) if args.ours == "diff" else (1,)):
            if (ratio, layers) not in done:
                continue
            if left() < 30:
                log(f"skipped ours r={ratio} L{layers}: {left():.0f}s left")
                continue
            try:
                res[layers] = measure_ours(irs[(ratio, layers)], args,
                                           with_profile=layers == 1 and args.ours != "diff")
            except RuntimeError as exc:
                t["ours"][f"L{layers}"]["error"] = str(exc)[-2000:]
                log(f"ours r={ratio} L{layers}: ERROR {str(exc)[-500:]}")
                continue
            t["ours"][f"L{layers}"].update({k: v for k, v in res[layers].items()
                                            if k not in ("profile_prefill", "profile_decode")})
            log(f"ours r={ratio} L{layers}: decode {res[layers]['decode']['ms_per_token']:.3f} ms/token, prefill "
                f"{res[layers]['prefill']['ms_per_token']:.3f} ms/token")
        if 1 in res and (args.ours != "diff" or 2 in res):
            t["ours"]["per_layer"] = ours_per_layer(res[1], res.get(2))
            if "profile_decode" in res[1]:
                t["ours"]["L1"]["profile_parts"] = {"decode": res[1]["profile_decode"]["parts"],
                                                    "prefill": res[1]["profile_prefill"]["parts"]}
            split = layer_split(irs[(ratio, 1)])
            t["ours"]["per_layer"]["bytes_per_token"] = int(split["layer_active"])
            t["ours"]["per_layer"]["stored_bytes"] = int(split["layer_stored"])
        write_json(args.json, result)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    finish(result)
    write_json(args.json, result)
    print(report(result))
    if not args.keep_irs:
        for ir in irs.values():
            shutil.rmtree(ir, ignore_errors=True)
    return 0


def finish(result: dict) -> None:
    """Ratios ours / llama.cpp per layer type and quantisation."""
    for t in result["types"].values():
        ours = t["ours"].get("per_layer")
        for runs in t["llama_cpp"].values():
            lay = runs.get("per_layer")
            if ours and lay:
                lay["ours_over_this"] = {
                    "decode": round(ours["decode_ms_per_token"] / lay["decode"]["ms_per_token"], 3),
                    "prefill": round(ours["prefill_ms_per_token"] / lay["prefill"]["ms_per_token"], 3),
                    "bytes": round(ours["bytes_per_token"] / lay["bytes_per_token"], 3)}


def report(data: dict) -> str:
    """The RESULTS.md block (`llama-cpp`): per-layer decode/prefill/bytes of llama.cpp's files and ours, and the whole
    1-layer slice's decode tokens/s."""
    m, meth = data["machine"], data["method"]
    rows, whole = [], []
    for name, t in data["types"].items():
        for q, runs in t["llama_cpp"].items():
            if "per_layer" in runs:
                lay = runs["per_layer"]
                rows.append([name, f"llama.cpp {QUANTS[q]}", f"{lay['decode']['ms_per_token']:.2f}",
                             f"{lay['prefill']['ms_per_token']:.2f}", f"{lay['bytes_per_token'] / 1e6:,.0f}",
                             f"{lay['ours_over_this']['decode']:.2f} / {lay['ours_over_this']['prefill']:.2f}"
                             if "ours_over_this" in lay else "-"])
            if "L1" in runs:
                whole.append([name, f"llama.cpp {QUANTS[q]}", f"{1e3 / runs['L1']['decode']['ms_per_token']:.1f}",
                              f"{1e3 / runs['L1']['prefill']['ms_per_token']:.0f}"])
        ours = t["ours"].get("per_layer")
        if ours:
            rows.append([name, "ours, default int4 (f32 hint)", f"{ours['decode_ms_per_token']:.2f}",
                         f"{ours['prefill_ms_per_token']:.2f}", f"{ours['bytes_per_token'] / 1e6:,.0f}", "1"])
        if "decode" in t["ours"].get("L1", {}):
            one = t["ours"]["L1"]
            whole.append([name, "ours, default int4 (f32 hint)", f"{1e3 / one['decode']['ms_per_token']:.1f}",
                          f"{1e3 / one['prefill']['ms_per_token']:.0f}"])
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['cpu_flags']}; OpenVINO {m['openvino']}, "
             f"load average at start {m['loadavg_1m']}), {data['llama_cpp']['source']}, "
             f"`{data['llama_cpp']['bench']}`; `{data['command']}`. Per layer: llama.cpp {meth['llama_cpp']}; "
             f"ours {meth['ours']}; {meth['cache']}.", "",
             table(["layer type", "per layer, " + f"{data['llama_cpp']['threads']} threads", "decode ms/token",
                    f"prefill ms/token ({meth['prompt']}-token prompt)", "MB read/token",
                    "ours / this (decode / prefill)"], rows)]
    if whole:
        lines += ["", table(["1-layer slice (embed + layer + head)", "runtime", "decode tokens/s",
                             f"prefill tokens/s ({meth['prompt']} tokens)"], whole)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- numerics check


def check(args) -> int:
    """llama.cpp against our PyTorch port on the trained toy (release layout: FP8 linears, FP4 experts):
    greedy continuation of a held-out prompt, and perplexity on the held-out text computed as
    llama-perplexity computes it (chunks of --ctx tokens, the first token of each chunk replaced by BOS,
    the second half of each chunk scored)."""
    import math

    import torch

    llama = LlamaCpp(args.llama_dir, args.threads, args.repeat)
    info = machine()
    log(machine_line(info))
    args.workdir.mkdir(parents=True, exist_ok=True)
    toy = args.workdir / "trained-fp8"
    if not (toy / "config.json").is_file():
        rc, _, _, out = run_child([python_main(), "-m", "deepseek_v4_ov.cli", "toy", str(toy), "--preset", "trained",
                                   "--format", "fp8", "--overwrite"])
        if rc:
            raise RuntimeError(out[-3000:])
    cfg = json.loads((toy / "config.json").read_text())
    view = make_view(toy, args.workdir / "trained-gguf-view", cfg["num_hidden_layers"], True)
    gguf = args.workdir / "trained-mxfp4.gguf"
    conv = llama.convert(view, gguf)
    log(f"converted the trained toy in {conv['wall_s']}s")
    from transformers import PreTrainedTokenizerFast

    from deepseek_v4_ov.checkpoint.release import load_model
    from deepseek_v4_ov.toys.trained import heldout_text

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(toy))
    text = heldout_text()
    model = load_model(toy, drafter=False)
    out: dict[str, Any] = {"machine": info, "llama_cpp": llama.source, "gguf": conv}
    # greedy continuation
    prompt_text = text[args.prompt_at:args.prompt_at + 400]
    ids = tokenizer(prompt_text)["input_ids"]
    with torch.no_grad():
        seq = torch.tensor([ids])
        for _ in range(args.check_new):
            nxt = model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
    ours_new = seq[0, len(ids):].tolist()
    prompt_file = args.workdir / "check-prompt.txt"
    prompt_file.write_text(prompt_text)
    cmd = [str(llama.bin / "llama-completion"), "-m", str(gguf), "-f", str(prompt_file), "-n", str(args.check_new),
           "--temp", "0", "--top-k", "1", "-t", str(args.threads), "--no-repack", "-no-cnv", "--no-warmup",
           "--ignore-eos", "--seed", "0", "--no-display-prompt", "-c", "1024"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"llama-completion failed:\n{proc.stderr[-3000:]}")
    llama_text = proc.stdout
    llama_new = tokenizer(llama_text, add_special_tokens=False)["input_ids"]
    ours_text = tokenizer.decode(ours_new)
    agree = next((i for i, (a, b) in enumerate(zip(ours_text, llama_text)) if a != b),
                 min(len(ours_text), len(llama_text)))
    out["greedy"] = {"prompt_tokens": len(ids), "new_tokens": args.check_new, "ours": ours_text,
                     "llama_cpp": llama_text, "agreeing_chars": agree, "ours_chars": len(ours_text),
                     "llama_tokens_reencoded": len(llama_new)}
    log(f"greedy: {agree} of {len(ours_text)} characters agree\n--- ours:\n{ours_text}\n--- llama.cpp:\n{llama_text}")
    # perplexity, llama-perplexity's way
    text_file = args.workdir / "heldout.txt"
    text_file.write_text(text)
    cmd = [str(llama.bin / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "-c", str(args.ctx),
           "--chunks", str(args.chunks), "-t", str(args.threads), "--no-repack", "-b", str(args.ctx)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"llama-perplexity failed:\n{proc.stderr[-3000:]}")
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", proc.stdout + proc.stderr)
    llama_ppl = float(m.group(1)) if m else None
    all_ids = tokenizer(text)["input_ids"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for c in range(args.chunks):
            chunk = all_ids[c * args.ctx:(c + 1) * args.ctx]
            chunk[0] = cfg["bos_token_id"]
            logp = model(torch.tensor([chunk])).logits[0].float().log_softmax(-1)
            first = args.ctx // 2
            for j in range(first, args.ctx - 1):
                nll -= float(logp[j, chunk[j + 1]])
                count += 1
    ours_ppl = math.exp(nll / count)
    out["perplexity"] = {"ctx": args.ctx, "chunks": args.chunks, "llama_cpp": llama_ppl,
                         "ours_pytorch": round(ours_ppl, 4),
                         "llama_over_ours": round(llama_ppl / ours_ppl, 4) if llama_ppl else None,
                         "llama_tokens": int(re.search(r"tokenizing the input .*?(\d+) tokens|(\d+) tokens",
                                                       proc.stderr).group(0).split()[-2])
                         if re.search(r"(\d+) tokens", proc.stderr) else None,
                         "ours_tokens": len(all_ids)}
    log(f"perplexity ({args.chunks} chunks of {args.ctx}): llama.cpp {llama_ppl}, ours (PyTorch, FP32) {ours_ppl:.4f}")
    write_json(args.json, out)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-dir", type=Path, default=Path("/tmp/llama.cpp"),
                    help="llama.cpp source tree (from .whl/llama.cpp-src.tar.xz) with build/bin")
    ap.add_argument("--ratios", type=int, nargs="+", default=[4, 128])
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--small", action="store_true", help="small widths (a quick check of the pipeline)")
    ap.add_argument("--set", help="JSON of preset fields to override (after --small)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-llama"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ours", choices=["profile", "diff"], default="profile",
                    help="our per-layer figure: the 1-layer IR's profile share, or 2-layer minus 1-layer IR")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip steps that would start later")
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument("--keep-gguf", action="store_true")
    ap.add_argument("--keep-irs", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse IRs and as-converted GGUFs found in --workdir")
    ap.add_argument("--json")
    ap.add_argument("--results", type=Path,
                    help="write benchmarks/RESULTS.md's `llama-cpp` block from this JSON and exit")
    ap.add_argument("--check", action="store_true", help="numerics: llama.cpp vs the PyTorch port, trained toy")
    ap.add_argument("--check-new", type=int, default=48)
    ap.add_argument("--prompt-at", type=int, default=2000, help="--check: prompt start in the held-out text")
    ap.add_argument("--ctx", type=int, default=256, help="--check: perplexity chunk length")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--convert", type=Path, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.results:
        replace_results_block("llama-cpp", report(json.loads(args.results.read_text())))
        return 0
    if args.convert:
        return convert_main(*args.convert, args.llama_dir)
    if args.worker:
        print("RESULT " + json.dumps(ours_worker(args.worker, args.prompt, args.gen, args.repeat, args.profile)))
        return 0
    if args.check:
        return check(args)
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
