"""Conversion memory and speed at V4-Flash's real widths, and the projection for the real model.

    python benchmarks/conversion_memory.py --experts 256 --ratios 0 4 128 --multi --formats int4 --jobs 2 \
        --workdir /tmp/dsv4-conv --json benchmarks/results/conversion_memory.json \
        --projection benchmarks/results/v4_flash_projection.json

With `--multi` the ratios make one slice of that many full-width layers (in that order; a leading sliding
layer is a hash layer, as in V4-Flash), exported once with `--jobs` pieces at a time; without it, one
one-layer slice per ratio. The peak is the export's whole process tree (the sum of the processes' PSS,
sampled every 0.2 s: worker processes included), the per-piece and per-stage times come from its log.

Each slice is a synthetic release-layout checkpoint (FP8 linears, FP4 experts, E8M0 scales; random codes)
of the `mid` preset (hidden 4096, 64 heads of 512, experts 2048 wide, vocabulary 129,280) with one layer of
the given compress ratio (0 sliding, 4 CSA, 128 HCA) and `--experts` routed experts, written unit by unit
so that writing it needs no more memory than converting it. Each export is the default command
(`python -m deepseek_v4_ov export --model SLICE OUT --weight-format F`) in a fresh process; its peak RSS is that process's
ru_maxrss (os.wait4), its per-piece times come from the export's own log. A `seed` toy export gives the
runtime's own footprint (torch + OpenVINO + NNCF loaded) that the conversion peak is compared with.

Projection for V4-Flash (43 layers, 159.6 GB checkpoint; the MTP block is not exported): the export holds
`--jobs` pieces at a time, each as large as a slice's layer piece (embed and head are V4-Flash's own), so its
peak is the slice's; its convert stage is the embed and head pieces plus, for every layer of V4-Flash, the
measured piece time of its layer type (the CSA layer's where a type was not measured), divided by the
concurrency measured on the slice (sum of piece times / convert stage time: the slice's ramp-up and tail make
this conservative); its stitch the slice's stitch time per IR byte times V4-Flash's IR bytes (the dry run's);
validate and write as measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT, machine, machine_line, python_main, run_child, table, write_json  # noqa: E402

GB = 1e9
V4_FLASH_CHECKPOINT_BYTES = 159_609_485_896  # the release's payload (dry run of its index, docs/export.md)
PIECE_RE = re.compile(r"piece \d+/\d+ \((\S+)\): ([\d.]+)s")
STAGE_RE = re.compile(r"^\s+(\w+) done in ([\d.]+)s", re.M)


def slice_preset(ratios: list[int], experts: int) -> dict:
    from deepseek_v4_ov.toys.presets import PRESETS

    preset = copy.deepcopy(PRESETS["mid"])
    preset.update(num_hidden_layers=len(ratios), compress_ratios=list(ratios), n_routed_experts=experts,
                  num_nextn_predict_layers=0,
                  num_hash_layers=1 if ratios[0] == 0 else 0)  # V4-Flash hashes its first (sliding) layers
    return preset


def _tree_pss(pid: int) -> int:
    """PSS bytes of process `pid` and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_tree(cmd: list[str]) -> tuple[int, float, float, str]:
    """Run `cmd`; (exit status, wall seconds, peak memory GB of its process tree: the sum of PSS sampled
    every 0.2 s, or the main process's ru_maxrss where higher, output)."""
    start, peak, done = time.perf_counter(), [0], threading.Event()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = [line for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    # the main process's own peak RSS (wait4) where it exceeds the sampled tree (a spike between samples)
    return proc.returncode, time.perf_counter() - start, max(peak[0], usage.ru_maxrss * 1024) / GB, "".join(lines)


def _stored(key: str, dtype: str, shape: tuple[int, ...], config, gen):
    """A random tensor as the release stores it: FP4/FP8 codes and E8M0 scales drawn directly (no FP32
    weight is made, so a 256-expert layer is written in seconds), BF16/F32 values, I64 hash tables."""
    import torch

    if dtype == "I64":
        return torch.randint(0, config.n_routed_experts, shape, generator=gen)
    if dtype == "I8":  # two FP4 e2m1 codes per byte
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
    if dtype == "F8_E4M3":  # any code but the two NaNs (0x7F, 0xFF)
        codes = torch.randint(0, 0x7F, shape, generator=gen, dtype=torch.uint8)
        return (codes | (torch.randint(0, 2, shape, generator=gen, dtype=torch.uint8) << 7)).view(torch.float8_e4m3fn)
    if dtype == "F8_E8M0":  # scales 2^-9 .. 2^-3
        return torch.randint(118, 125, shape, generator=gen, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    if key.endswith("norm.weight") or key.endswith("_scale"):
        values = torch.ones(shape)
    elif len(shape) == 2 and not key.endswith("ape"):
        values = torch.randn(shape, generator=gen) * 0.02
    else:
        values = torch.zeros(shape)
    return values.to(torch.bfloat16 if dtype == "BF16" else torch.float32)


def write_synthetic(folder: Path, preset: dict, seed: int = 0) -> int:
    """A release-layout (fp8) checkpoint for `preset`, one shard per unit, written unit by unit; returns
    its payload bytes."""
    import torch
    from safetensors.torch import save_file

    from deepseek_v4_ov.export.plan import unit_of
    from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, INDEX_NAME
    from deepseek_v4_ov.checkpoint.release import logical_tensors, stored_entries
    from deepseek_v4_ov.toys.writer import official_config_dict
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

    config = DeepseekV4Config(**preset)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    units: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape in logical_tensors(config).items():
        units.setdefault(unit_of(name), []).append((name, shape))
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for k, (unit, tensors) in enumerate(units.items()):
        shard: dict[str, torch.Tensor] = {}
        for name, shape in tensors:
            for key, (dtype, stored_shape) in stored_entries(name, shape, "fp8").items():
                shard[key] = _stored(key, dtype, stored_shape, config, gen)
                total += shard[key].numel() * shard[key].element_size()
        filename = f"model-{k + 1:05d}-of-{len(units):05d}.safetensors"
        save_file(shard, str(tmp / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
        del shard
    (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}) + "\n")
    (tmp / CONFIG_NAME).write_text(json.dumps(official_config_dict(config, "fp8"), indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return total


def ensure_slice(workdir: Path, ratios: int | list[int], experts: int, overrides: dict | None = None) -> Path:
    """The synthetic slice `workdir/slice-r<ratios>-e<experts>` (written once, in a child process), a layer
    per ratio; `overrides` replaces preset fields (smaller widths for a quick local run)."""
    ratios = [ratios] if isinstance(ratios, int) else list(ratios)
    src = workdir / (f"slice-r{'-'.join(map(str, ratios))}-e{experts}" + ("-small" if overrides else ""))
    if not (src / "config.json").is_file():
        preset = {**slice_preset(ratios, experts), **(overrides or {})}
        rc, wall, rss, out = run_child([python_main(), "-c", (
            "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from conversion_memory import write_synthetic\nfrom pathlib import Path\n"
            "print('BYTES', write_synthetic(Path(%r), %r))\n") % (
            str(Path(__file__).parents[1]), str(Path(__file__).parent), str(src), preset)])
        if rc:
            raise RuntimeError(out[-3000:])
        print(f"wrote slice {src.name} in {wall:.0f}s (peak RSS {rss / 1e3:.1f} GB)", flush=True)
    return src


def export_measured(src: Path, out: Path, fmt: str, keep: bool = False, jobs: int | None = None) -> dict:
    cmd = [python_main(), "-m", "deepseek_v4_ov", "export", "--model", str(src), str(out), "--weight-format", fmt,
           "--disable-convert-tokenizer", "--overwrite", *(["--jobs", str(jobs)] if jobs else [])]
    rc, wall, peak_gb, output = run_tree(cmd)
    if rc != 0:
        raise RuntimeError(f"export {src.name} {fmt} failed (exit {rc}):\n{output[-4000:]}")
    print(output, flush=True)
    pieces = {unit: float(s) for unit, s in PIECE_RE.findall(output)}
    stages = {name: float(s) for name, s in STAGE_RE.findall(output)}
    ir = sum((out / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin"))
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"format": fmt, "jobs": jobs, "wall_s": round(wall, 2), "peak_rss_gb": round(peak_gb, 3),
            "ir_gb": round(ir / GB, 3), "piece_s": pieces, "stage_s": stages}


def flash_ir_bytes(flash, fmt: str) -> float:
    """V4-Flash's IR weights in `fmt` (the dry run's figure: the policy's theoretical bytes)."""
    from deepseek_v4_ov.compress.formats import format_named
    from deepseek_v4_ov.compress.policy import CompressionOptions, theoretical_bytes

    if format_named(fmt).keeps_release_codes:
        return V4_FLASH_CHECKPOINT_BYTES
    return sum(theoretical_bytes(flash, CompressionOptions(fmt)).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--ratios", type=int, nargs="+", default=[4], help="layer types: 0 sliding, 4 CSA, 128 HCA")
    ap.add_argument("--multi", action="store_true", help="one slice with a layer of each ratio (else a slice each)")
    ap.add_argument("--jobs", type=int, help="the export's --jobs (default: its own choice)")
    ap.add_argument("--formats", nargs="+", default=["int4", "native"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-conv"))
    ap.add_argument("--keep", nargs="*", default=[], help="keep the exports of these formats (WORKDIR/<slice>-<format>)")
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--projection", help="merge `projection.conversion_*` into this JSON (created if absent)")
    args = ap.parse_args()

    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config, flash_compress_ratios

    info = machine()
    print(machine_line(info), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline_src = args.workdir / "seed-fp8"
    if not (baseline_src / "config.json").is_file():
        code = ("import sys; sys.path.insert(0, %r)\nfrom deepseek_v4_ov.toys.presets import PRESETS\n"
                "from deepseek_v4_ov.toys.writer import write_toy\n"
                "write_toy(%r, PRESETS['seed'], 0, fmt='fp8', overwrite=True)\n") % (str(Path(__file__).parents[1]),
                                                                                  str(baseline_src))
        rc, _, _, out = run_child([python_main(), "-c", code])
        if rc:
            raise RuntimeError(out[-3000:])
    baseline = export_measured(baseline_src, args.workdir / "seed-out", "int4", jobs=1)  # one process: the footprint
    print(f"runtime footprint (seed int4 export): peak RSS {baseline['peak_rss_gb']:.2f} GB", flush=True)

    slices = []
    for ratios in [args.ratios] if args.multi else [[r] for r in args.ratios]:
        src = ensure_slice(args.workdir, ratios, args.experts)
        ckpt = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        for fmt in args.formats:
            r = export_measured(src, args.workdir / f"{src.name}-{fmt}", fmt, keep=fmt in args.keep, jobs=args.jobs)
            r.update(ratio=ratios[0] if len(ratios) == 1 else ratios, experts=args.experts,
                     checkpoint_gb=round(ckpt / GB, 3),
                     checkpoint_gbs=round(ckpt / GB / r["wall_s"], 3),
                     peak_over_runtime_gb=round(r["peak_rss_gb"] - baseline["peak_rss_gb"], 3))
            slices.append(r)
            print(f"  r={r['ratio']} {fmt}: {r['wall_s']:.0f}s, peak {r['peak_rss_gb']:.2f} GB "
                  f"(+{r['peak_over_runtime_gb']:.2f} over the runtime), {r['checkpoint_gbs']:.2f} GB/s, "
                  f"pieces {r['piece_s']}", flush=True)

    print(table(["ratio", "format", "experts", "checkpoint GB", "IR GB", "peak RSS GB", "over runtime GB",
                 "wall s", "GB/s"],
                [[s["ratio"], s["format"], s["experts"], s["checkpoint_gb"], s["ir_gb"], s["peak_rss_gb"],
                  s["peak_over_runtime_gb"], s["wall_s"], s["checkpoint_gbs"]] for s in slices]))
    flash = DeepseekV4Config(num_hidden_layers=43, compress_ratios=flash_compress_ratios(43, 1))
    projection = {}
    for fmt in args.formats:
        rows = [s for s in slices if s["format"] == fmt]
        layer_s: dict[int, float] = {}
        for s in rows:
            for i, ratio in enumerate(s["ratio"] if isinstance(s["ratio"], list) else [s["ratio"]]):
                layer_s.setdefault(ratio, s["piece_s"].get(f"layers.{i}", 0.0))
        default = layer_s.get(4, max(layer_s.values()))
        ends = sum(rows[0]["piece_s"].get(u, 0.0) for u in ("embed", "head"))
        piece_seconds = ends + sum(layer_s.get(r, default) for r in flash.layer_ratios)
        stages = rows[0]["stage_s"]
        concurrency = max(1.0, sum(rows[0]["piece_s"].values()) / max(stages.get("convert", 0.0), 1e-9))
        ir_bytes = flash_ir_bytes(flash, fmt)
        seconds = (stages.get("validate", 0.0) + piece_seconds / concurrency
                   + stages.get("stitch", 0.0) * ir_bytes / (rows[0]["ir_gb"] * GB) + stages.get("write", 0.0))
        projection[fmt] = {"conversion_peak_gb": max(s["peak_rss_gb"] for s in rows),
                           "conversion_peak_over_runtime_gb": max(s["peak_over_runtime_gb"] for s in rows),
                           "conversion_s": round(seconds, 1), "conversion_time_min": round(seconds / 60, 1),
                           "piece_s_sum": round(piece_seconds, 1), "concurrency": round(concurrency, 2),
                           "ir_gb": round(ir_bytes / GB, 1),
                           "checkpoint_gbs": round(V4_FLASH_CHECKPOINT_BYTES / GB / seconds, 3)}
        print(f"V4-Flash projection ({fmt}): peak {projection[fmt]['conversion_peak_gb']:.1f} GB, "
              f"{seconds / 60:.1f} min, {projection[fmt]['checkpoint_gbs']:.2f} GB/s of checkpoint", flush=True)
    command = "python benchmarks/conversion_memory.py " + " ".join(sys.argv[1:])
    write_json(args.json, {"machine": info, "command": command, "runtime_footprint": baseline, "slices": slices,
                           "projection": projection})
    if args.projection:
        path = Path(args.projection)
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("conversion", {}).update(machine=info, command=command, slices=slices,
                                                 runtime_footprint=baseline)
        default_fmt = "int4" if "int4" in projection else args.formats[0]
        data.setdefault("projection", {})["conversion_peak_gb"] = projection[default_fmt]["conversion_peak_gb"]
        data["projection"]["conversion_time_min"] = projection[default_fmt]["conversion_time_min"]
        data["projection"]["conversion_command"] = command
        data["projection"]["conversion_by_format"] = projection
        write_json(str(path), data)


if __name__ == "__main__":
    main()
