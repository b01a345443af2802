"""`deepseek-v4-ov export`: a DeepSeek-V4 folder in the official release layout -> an OpenVINO folder that
optimum-intel (`OVModelForCausalLM`, trust_remote_code) and OpenVINO GenAI load.

Stages (each prints one line when it starts and its time when it ends):

1. validate  everything that can be checked without loading weights, before any work: the options
             (weight format and the compression flags that apply to it), OUTPUT (non-empty needs
             `overwrite`; it may not be or contain SRC), SRC's config.json (model_type, consistency),
             every shard header (each expected tensor present with its dtype and shape, no unknown
             tensor, no truncated shard) and, when SRC has one, its tokenizer;
2. load      the port in FP32 with the exact weights (`official.load_state_dict`: FP8/FP4 release
             tensors dequantised exactly);
3. convert   `ov_convert.convert`: stateful (default) or prefill-only IR;
4. compress  `compression.compress_with`: NNCF weight compression under the release-mirroring policy;
5. write     into a temporary folder beside OUTPUT that replaces OUTPUT only when complete
             (`checkpoint.atomic_output_dir`): openvino_model.xml/.bin, config.json (SRC's keys with
             `auto_map` and `use_cache`, without SRC's storage-only `quantization_config`/`expert_dtype`),
             the two bundled .py files, generation_config.json (SRC's when it has one),
             openvino_config.json (the compression options and policy), SRC's tokenizer files and their
             OpenVINO conversion (openvino_tokenizer.xml / openvino_detokenizer.xml).

A summary follows: file sizes, precision per tensor group read back from the IR, time per stage, peak
memory (ru_maxrss).
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, CheckpointError, atomic_output_dir
from deepseek_v4_ov.compress.policy import CompressionOptions, GroupPrecision, format_report, precision_report, report_dict

IR_XML, IR_BIN = "openvino_model.xml", "openvino_model.bin"
OV_CONFIG_NAME = "openvino_config.json"
GENERATION_CONFIG = "generation_config.json"
# what SRC's config.json says about its own storage; the IR's precision is in openvino_config.json
STORAGE_ONLY_KEYS = ("quantization_config", "expert_dtype")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt")


@dataclass
class ExportResult:
    output: Path
    files: dict[str, int]  # file name -> bytes
    precision: dict[str, GroupPrecision]
    times: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    @property
    def ir_bytes(self) -> int:
        return self.files.get(IR_XML, 0) + self.files.get(IR_BIN, 0)

    def format(self) -> str:
        f = self.files
        lines = [
            f"exported to {self.output}",
            f"  IR size {self.ir_bytes / 1e6:.2f} MB (openvino_model.bin {f.get(IR_BIN, 0) / 1e6:.2f} MB + "
            f"openvino_model.xml {f.get(IR_XML, 0) / 1e6:.2f} MB); folder {sum(f.values()) / 1e6:.2f} MB in "
            f"{len(f)} files",
            "  precision per tensor group (IR constants):",
            format_report(self.precision),
            "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.times.items())
            + f"; total {sum(self.times.values()):.1f}s",
            f"  peak memory (ru_maxrss) {self.peak_rss_mb:,.0f} MB",
        ]
        return "\n".join(lines)


def _one_line(err: Exception) -> str:
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def _has_tokenizer(src: Path) -> bool:
    return (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file()


@contextmanager
def _tokenizer_only(src: Path) -> Iterator[Path]:
    """A temporary copy of SRC's tokenizer files alone: `AutoTokenizer` on SRC itself would read its
    config.json and stop at the `deepseek_v4` model type (remote code); tokenizer_config.json names the
    tokenizer class, which is all it needs."""
    with tempfile.TemporaryDirectory(prefix="dsv4-tokenizer-") as tmp:
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(tmp) / name)
        yield Path(tmp)


def validate(src: Path, output: Path, opts: CompressionOptions, overwrite: bool, convert_tokenizer: bool = True):
    """All checks that need no weights; returns (config, storage format). Raises ValueError /
    CheckpointError / FileExistsError with a one-line message naming the problem."""
    from deepseek_v4_ov.checkpoint.release import check_folder

    opts.validate()
    src, output = Path(src), Path(output)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such folder (SRC must be a DeepSeek-V4 checkpoint folder)")
    s, o = src.resolve(), output.resolve()
    if o == s or o in s.parents:
        raise ValueError(f"OUTPUT {output} is SRC or contains it; choose another folder")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    try:
        config, fmt, _, _ = check_folder(src)
    except CheckpointError as err:
        raise CheckpointError(_one_line(err)) from err
    _check_group_size(config, opts)
    gen = src / GENERATION_CONFIG
    if gen.is_file():
        try:
            json.loads(gen.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{gen}: not valid JSON ({err})") from err
    if convert_tokenizer and _has_tokenizer(src):
        try:
            from transformers import AutoTokenizer

            with _tokenizer_only(src) as tok:
                AutoTokenizer.from_pretrained(str(tok))
        except Exception as err:  # noqa: BLE001 - any loader failure is a bad SRC tokenizer
            raise CheckpointError(f"{src}: tokenizer files present but unreadable ({_one_line(err)})") from err
    return config, fmt


def _check_group_size(config, opts: CompressionOptions) -> None:
    """A group size that does not divide the input size of a weight it applies to fails in NNCF after
    loading and converting; say so now."""
    from deepseek_v4_ov.compress.policy import PRIMARY, target_of
    from deepseek_v4_ov.checkpoint.release import logical_tensors

    r = opts.resolved()
    gs = r.get("group_size", -1)
    if gs <= 0 or r.get("group_size_fallback") != "error":
        return
    bad = [(n, s) for n, s in logical_tensors(config).items()
           if len(s) == 2 and target_of(n, opts) == PRIMARY and s[1] % gs]
    if bad:
        name, shape = bad[0]
        raise ValueError(f"--group-size {gs} does not divide the input size of {len(bad)} weight(s), e.g. "
                         f"{name} {list(shape)}; choose another --group-size or --group-size-fallback adjust/ignore")


def load_model(src: Path, config):
    """The port in FP32, eval mode, with SRC's exact weights."""
    import torch

    from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    from deepseek_v4_ov.checkpoint.release import load_state_dict

    state = load_state_dict(src, config)
    # the port holds dequantised FP32 weights: SRC's storage description does not apply to it (and
    # OpenVINO's PyTorch frontend reads `config.quantization_config` as a transformers quantiser object)
    for key in STORAGE_ONLY_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    model = DeepseekV4ForCausalLM(config).float().eval()
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()},
                          strict=True)
    return model


def output_config(src: Path, use_cache: bool) -> dict[str, Any]:
    """config.json for OUTPUT: SRC's own keys, storage-only keys dropped, `auto_map` and `use_cache` set."""
    from deepseek_v4_ov.checkpoint.toy import AUTO_MAP

    raw = json.loads((src / CONFIG_NAME).read_text())
    for key in STORAGE_ONLY_KEYS:
        raw.pop(key, None)
    raw["auto_map"] = AUTO_MAP
    raw["use_cache"] = use_cache
    return raw


def resolve_options(weight_format: str, group_size: int | None, sym: bool, ratio: float | None,
                    backup_precision: str | None, all_layers: bool, awq: bool,
                    group_size_fallback: str | None) -> CompressionOptions:
    """The NNCF options of an export; `native` takes none of them and compresses nothing (its codes come
    from the checkpoint), so it is checked for stray options and maps to fp32 here."""
    from deepseek_v4_ov.compress.native import NATIVE, check_native_options

    if weight_format == NATIVE:
        check_native_options(group_size, sym, ratio, backup_precision, all_layers, awq, group_size_fallback)
    return CompressionOptions("fp32" if weight_format == NATIVE else weight_format, group_size, sym, ratio,
                              backup_precision, all_layers, awq, group_size_fallback)


def export(src: str | Path, output: str | Path, weight_format: str = "fp32", group_size: int | None = None,
           sym: bool = False, ratio: float | None = None, backup_precision: str | None = None,
           all_layers: bool = False, awq: bool = False, group_size_fallback: str | None = None,
           prefill_only: bool = False, overwrite: bool = False, convert_tokenizer: bool = True,
           log: Callable[[str], None] | None = None, streaming: bool = False) -> ExportResult:
    """Export SRC to OUTPUT (see the module docstring); returns the summary (also printed through `log`).

    `weight_format="native"` keeps the release encodings (`native.py`); `streaming=True` builds the IR
    block by block in bounded memory (`streaming.py`)."""
    from deepseek_v4_ov.convert import trace as ov_convert
    from deepseek_v4_ov.compress.policy import compress_with
    from deepseek_v4_ov.compress.native import NATIVE, nativize

    if streaming:
        from deepseek_v4_ov.convert.pieces import export_streaming

        return export_streaming(src, output, weight_format=weight_format, group_size=group_size, sym=sym,
                                ratio=ratio, backup_precision=backup_precision, all_layers=all_layers, awq=awq,
                                group_size_fallback=group_size_fallback, prefill_only=prefill_only,
                                overwrite=overwrite, convert_tokenizer=convert_tokenizer, log=log)
    log = log or (lambda line: print(line, flush=True))
    src, output = Path(src), Path(output)
    is_native = weight_format == NATIVE
    opts = resolve_options(weight_format, group_size, sym, ratio, backup_precision, all_layers, awq,
                           group_size_fallback)
    times: dict[str, float] = {}
    kind = "prefill-only" if prefill_only else "stateful"

    @contextmanager
    def stage(i: int, name: str, what: str) -> Iterator[None]:
        log(f"[{i}/5] {name}: {what}")
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start
        log(f"      {name} done in {times[name]:.1f}s")

    with stage(1, "validate", f"{src}"):
        config, fmt = validate(src, output, opts, overwrite, convert_tokenizer)
        if is_native and fmt != "fp8":
            raise CheckpointError(f"{src}: --weight-format native needs a checkpoint in the release layout (FP8/FP4 "
                                  f"with E8M0 scales); this one is {fmt}")
    log(f"      {fmt} checkpoint, {config.num_hidden_layers} layers, {config.n_routed_experts} experts, "
        f"vocab {config.vocab_size}")

    with stage(2, "load", "weights into the PyTorch port (FP32, exact dequantisation)"):
        model = load_model(src, config)

    with stage(3, "convert", f"{kind} IR (ov.convert_model)"):
        ov_model = ov_convert.convert(model, stateful=True, prefill_only=prefill_only)

    resolved = {"weight_format": NATIVE} if is_native else opts.resolved()
    with stage(4, "compress", ", ".join(f"{k}={v}" for k, v in resolved.items())):
        if is_native:
            nativize(ov_model, src)
        else:
            ov_model = compress_with(ov_model, opts)

    with_tokenizer = convert_tokenizer and _has_tokenizer(src)
    with stage(5, "write", f"{output} (atomically)"), atomic_output_dir(output, overwrite) as tmp:
        ov_convert.save(ov_model, model, tmp, source=src)
        use_cache = json.loads((tmp / CONFIG_NAME).read_text()).get("use_cache", not prefill_only)
        (tmp / CONFIG_NAME).write_text(json.dumps(output_config(src, use_cache), indent=2) + "\n")
        if (src / GENERATION_CONFIG).is_file():
            shutil.copyfile(src / GENERATION_CONFIG, tmp / GENERATION_CONFIG)
        ov_config = {
            "dtype": weight_format,
            "ir": kind,
            "quantization_config": resolved,
            "precision_policy": "deepseek_v4_ov.compress.policy (release FP4 -> format, FP8 -> 8 bit, BF16 -> f16, "
                                "F32 -> f32)",
            "source": {"path": str(src), "storage_format": fmt},
        }
        (tmp / OV_CONFIG_NAME).write_text(json.dumps(ov_config, indent=2) + "\n")
        if with_tokenizer:
            from deepseek_v4_ov.checkpoint.tokenizer import convert_tokenizer as to_ov_tokenizer

            with _tokenizer_only(src) as tok:
                for name in TOKENIZER_FILES:
                    if (tok / name).is_file():
                        shutil.copyfile(tok / name, tmp / name)
                to_ov_tokenizer(tok, tmp)

    files = {p.name: p.stat().st_size for p in sorted(output.iterdir()) if p.is_file()}
    result = ExportResult(output, files, precision_report(ov_model), times,
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if not with_tokenizer:
        log("      no tokenizer in SRC: OUTPUT has none" if convert_tokenizer else "      tokenizer not converted")
    log(result.format())
    return result


def precision_of(output: str | Path) -> dict[str, dict[str, Any]]:
    """precision_report of an exported folder's IR, as plain dicts."""
    import openvino as ov

    return report_dict(precision_report(ov.Core().read_model(str(Path(output) / IR_XML))))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `deepseek-v4-ov export` or `python -m export`")
