"""The one writer of an exported folder (every export path ends here).

OUTPUT holds `openvino_model.xml/.bin` (written by the pipeline), and from here: `config.json` (SRC's keys
with `auto_map` and `use_cache`, without SRC's storage-only `quantization_config`/`expert_dtype`), the two
bundled .py files, `generation_config.json` (SRC's, or derived from the config), `openvino_config.json`
(the export options, the precision policy and the source) and SRC's tokenizer files with their OpenVINO
conversion (openvino_tokenizer.xml / openvino_detokenizer.xml).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME
from deepseek_v4_ov.checkpoint.release import STORAGE_ONLY_KEYS
from deepseek_v4_ov.checkpoint.layout import AUTO_MAP, BUNDLED_FILES, PACKAGE_DIR
from deepseek_v4_ov.export.identity import OV_CONFIG_NAME

IR_XML, IR_BIN = "openvino_model.xml", "openvino_model.bin"
DRAFTER_XML, DRAFTER_BIN = "openvino_drafter_model.xml", "openvino_drafter_model.bin"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt")
PRECISION_POLICY = ("deepseek_v4_ov.compress.policy (release FP4 -> format, FP8 -> 8 bit, BF16 -> f16, "
                    "F32 -> f32)")


def has_tokenizer(src: Path) -> bool:
    return (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file()


@contextmanager
def tokenizer_only(src: Path) -> Iterator[Path]:
    """A temporary copy of SRC's tokenizer files alone: `AutoTokenizer` on SRC itself would read its
    config.json and stop at the `deepseek_v4` model type (remote code); tokenizer_config.json names the
    tokenizer class, which is all it needs."""
    with tempfile.TemporaryDirectory(prefix="dsv4-tokenizer-") as tmp:
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(tmp) / name)
        yield Path(tmp)


def output_config(src: Path, use_cache: bool) -> dict[str, Any]:
    """config.json for OUTPUT: SRC's own keys, storage-only keys dropped, `auto_map` and `use_cache` set."""
    raw = json.loads((src / CONFIG_NAME).read_text())
    for key in STORAGE_ONLY_KEYS:  # SRC's own storage; the IR's precision is in openvino_config.json
        raw.pop(key, None)
    raw["auto_map"] = AUTO_MAP
    raw["use_cache"] = use_cache
    return raw


def openvino_config(weight_format: str, prefill_only: bool, quantization: dict[str, Any], pieces: int,
                    src: Path, storage_format: str, drafter: dict[str, Any] | None = None,
                    identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """openvino_config.json: the same keys for every export (`drafter`: null, or what `drafter_record`
    says; `identity`: what the export was made from, `export/identity.py`)."""
    return {
        "dtype": weight_format,
        "ir": "prefill-only" if prefill_only else "stateful",
        "quantization_config": quantization,
        "precision_policy": PRECISION_POLICY,
        "pieces": pieces,
        "source": {"path": str(src), "storage_format": storage_format},
        "drafter": drafter,
        "export_key": identity["key"] if identity else None,
        "identity": identity,
    }


def drafter_record(kind: str, drafts_per_step: int, taps: str) -> dict[str, Any]:
    """openvino_config.json's `drafter`: its kind ("mtp"), its IR file, the drafts it proposes per step and
    the target output it reads."""
    return {"kind": kind, "ir": DRAFTER_XML, "drafts_per_step": drafts_per_step, "taps": taps}


def write_folder(folder: Path, src: Path, config, ov_config: dict[str, Any], tokenizer: bool) -> None:
    """Everything of OUTPUT but the IR files, into `folder` (see the module docstring)."""
    from transformers import GenerationConfig

    (folder / CONFIG_NAME).write_text(
        json.dumps(output_config(src, ov_config["ir"] == "stateful"), indent=2) + "\n")
    for name in BUNDLED_FILES:
        shutil.copyfile(PACKAGE_DIR / name, folder / name)
    if (src / GENERATION_CONFIG).is_file():
        shutil.copyfile(src / GENERATION_CONFIG, folder / GENERATION_CONFIG)
    else:
        GenerationConfig.from_model_config(config).save_pretrained(folder)
    (folder / OV_CONFIG_NAME).write_text(json.dumps(ov_config, indent=2) + "\n")
    if tokenizer:
        from deepseek_v4_ov.export.tokenizer import convert_tokenizer

        with tokenizer_only(src) as tok:
            for name in TOKENIZER_FILES:
                if (tok / name).is_file():
                    shutil.copyfile(tok / name, folder / name)
            convert_tokenizer(tok, folder)
