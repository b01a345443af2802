"""Peak memory of the streaming export against checkpoint size, for synthetic release-layout checkpoints of
growing depth (the `mid` preset's real V4-Flash per-layer shapes, 16 experts), and the projection for
V4-Flash itself.

    .venv/bin/python benchmarks/streaming_memory.py --layers 2 4 8 --workdir /tmp/dsv4-mem [--compile-check]

Each checkpoint is written unit by unit (embed, each layer, head) so that writing it needs no more memory
than exporting it; each export runs in its own process (`deepseek_v4_ov.convert.pieces.export_streaming`) and
its peak RSS is that process's ru_maxrss (os.wait4). `--compile-check` also compiles the exported IR on
CPU (f32) in a fresh process and reports RSS after compile and after one inference, next to the IR size
and the size of the same weights expanded to f32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from math import prod
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9


def mid_preset(layers: int) -> dict:
    from toy.presets import PRESETS

    preset = copy.deepcopy(PRESETS["mid"])
    pattern = PRESETS["mid"]["compress_ratios"]  # [0, 4, 128, 4]: one sliding layer, then CSA/HCA alternating
    ratios = [pattern[0]] + [(4, 128)[i % 2] for i in range(layers - 1)]
    preset.update(num_hidden_layers=layers, compress_ratios=ratios + [0] * preset["num_nextn_predict_layers"])
    return preset


def _init(name: str, shape: tuple[int, ...], config, gen):
    import torch

    if name.endswith(".tid2eid"):
        return torch.randint(0, config.n_routed_experts, shape, generator=gen)
    if len(shape) == 2 and not name.endswith("ape"):
        return torch.randn(shape, generator=gen) * 0.02
    if name.endswith("norm.weight") or name.endswith("_scale"):
        return torch.ones(shape)
    return torch.zeros(shape)


def write_synthetic(folder: Path, preset: dict, seed: int = 0) -> int:
    """A release-layout (fp8) checkpoint for `preset`, one shard per unit, written unit by unit; returns
    its payload bytes."""
    import torch
    from safetensors.torch import save_file

    from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, INDEX_NAME
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
    from deepseek_v4_ov.checkpoint.dryrun import unit_of
    from deepseek_v4_ov.checkpoint.release import encode_release, logical_tensors
    from deepseek_v4_ov.checkpoint.toy import official_config_dict

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
            for key, t in encode_release(name, _init(name, shape, config, gen)).items():
                shard[key] = t.contiguous()
                total += t.numel() * t.element_size()
        filename = f"model-{k + 1:05d}-of-{len(units):05d}.safetensors"
        save_file(shard, str(tmp / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
        del shard
    (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}) + "\n")
    (tmp / CONFIG_NAME).write_text(json.dumps(official_config_dict(config, "fp8"), indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return total


def run_measured(code: str) -> tuple[float, float, str]:
    """Run `code` in a fresh interpreter; return (peak RSS bytes from wait4, seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{out[-3000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start, out


EXPORT = """
import sys; sys.path.insert(0, {root!r})
from deepseek_v4_ov.convert.pieces import export_streaming
export_streaming({src!r}, {out!r}, weight_format={fmt!r}, overwrite=True, convert_tokenizer=False)
"""

COMPILE = """
import sys, numpy as np, openvino as ov
def rss():
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))
core = ov.Core()
r0 = rss()
cm = core.compile_model({xml!r}, 'CPU', {{'INFERENCE_PRECISION_HINT': 'f32'}})
r1 = rss()
req = cm.create_infer_request()
ids = np.array([[5, 6, 7, 8]], np.int64)
req.infer({{'input_ids': ids, 'attention_mask': np.ones_like(ids), 'position_ids': np.arange(4)[None],
           'beam_idx': np.zeros(1, np.int32)}})
r2 = rss()
kinds = {{}}
for op in cm.get_runtime_model().get_ops():
    rt = op.get_rt_info()
    if rt['layerType'].astype(str) == 'Const':
        t = rt['outputPrecisions'].astype(str)
        kinds[t] = kinds.get(t, 0) + 1
print('RESULT', r0, r1, r2, kinds)
"""


def expanded_f32_bytes(config) -> int:
    from deepseek_v4_ov.checkpoint.release import logical_tensors

    return sum(4 * prod(s) for n, s in logical_tensors(config).items() if not n.startswith("mtp.") and
               not n.endswith("tid2eid"))


def main(argv: list[str] | None = None) -> int:
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/dsv4-streaming-mem"))
    p.add_argument("--weight-format", default="native")
    p.add_argument("--compile-check", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep checkpoints and IRs")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.layers:
        preset = mid_preset(n)
        src, out = args.workdir / f"mid{n}", args.workdir / f"mid{n}-{args.weight_format}"
        t = time.perf_counter()
        ckpt = write_synthetic(src, preset)
        print(f"[{n} layers] checkpoint {ckpt / GB:.2f} GB written in {time.perf_counter() - t:.0f}s", flush=True)
        peak, secs, log = run_measured(EXPORT.format(root=str(ROOT), src=str(src), out=str(out),
                                                     fmt=args.weight_format))
        for line in log.splitlines():
            if "piece" in line:
                print(f"[{n} layers]   {line.strip()}", flush=True)
        ir = (out / "openvino_model.bin").stat().st_size
        row = {"layers": n, "checkpoint_gb": ckpt / GB, "ir_gb": ir / GB, "peak_rss_gb": peak / GB,
               "ratio": peak / ckpt, "export_s": secs}
        print(f"[{n} layers] export peak RSS {peak / GB:.2f} GB in {secs:.0f}s; IR {ir / GB:.2f} GB", flush=True)
        if args.compile_check:
            _, _, cout = run_measured(COMPILE.format(xml=str(out / "openvino_model.xml")))
            r0, r1, r2, kinds = cout.split("RESULT ")[1].split(" ", 3)
            row.update(rss_before_compile_gb=int(r0) / GB, rss_compiled_gb=int(r1) / GB, rss_infer_gb=int(r2) / GB,
                       expanded_f32_gb=expanded_f32_bytes(DeepseekV4Config(**preset)) / GB, runtime_consts=kinds.strip())
            print(f"[{n} layers] compile: RSS {row['rss_before_compile_gb']:.2f} -> {row['rss_compiled_gb']:.2f} GB, "
                  f"after one inference {row['rss_infer_gb']:.2f} GB; weights expanded to f32 would be "
                  f"{row['expanded_f32_gb']:.2f} GB; runtime constants {kinds.strip()}", flush=True)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    print()
    print(f"| layers | checkpoint GB | IR GB | peak RSS GB | peak / checkpoint | export s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layers']} | {r['checkpoint_gb']:.2f} | {r['ir_gb']:.2f} | {r['peak_rss_gb']:.2f} | "
              f"{r['ratio']:.2f} | {r['export_s']:.0f} |")
    # Projection: the peak is set by the largest piece (a decoder layer or embed/head) loaded in FP32, so it
    # scales with the largest piece's FP32 size, not with depth.
    mid, flash = DeepseekV4Config(**mid_preset(2)), None
    try:
        from deepseek_v4_ov.checkpoint.dryrun import unit_of
        from deepseek_v4_ov.checkpoint.release import logical_tensors

        def largest_piece(cfg) -> int:
            units: dict[str, int] = {}
            for name, shape in logical_tensors(cfg).items():
                if not name.startswith("mtp."):
                    units[unit_of(name)] = units.get(unit_of(name), 0) + 4 * prod(shape)
            return max(units.values())

        flash = _flash_config()
        base = min(r["peak_rss_gb"] for r in rows) * GB
        scale = largest_piece(flash) / largest_piece(mid)
        print(f"\nlargest piece in FP32: mid {largest_piece(mid) / GB:.2f} GB, V4-Flash {largest_piece(flash) / GB:.2f} GB "
              f"(x{scale:.1f}); projected V4-Flash peak RSS ~ {base * scale / GB:.0f} GB (measured peak x that ratio), "
              f"independent of its 43 layers")
    except Exception as err:  # noqa: BLE001 - the projection is informative only
        print(f"projection unavailable: {err}")
    (args.workdir / "streaming_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _flash_config():
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

    preset = mid_preset(2)
    ratios = [0, 0] + [(4, 128)[i % 2] for i in range(41)]
    preset.update(num_hidden_layers=43, n_routed_experts=256, num_hash_layers=3, num_nextn_predict_layers=1,
                  compress_ratios=ratios + [0])
    return DeepseekV4Config(**preset)


if __name__ == "__main__":
    sys.exit(main())
