"""Random-weight toy checkpoints in the official release layout.

A toy folder holds config.json (official keys plus `auto_map`), the two bundled .py files, sharded
safetensors with `model.safetensors.index.json`, generation_config.json and a small byte-level BPE
tokenizer of its own (`tokenizer.py`), so it goes through the same reader as the real release, loads with
`trust_remote_code=True`, and loads natively in transformers 5.23.
"""

from __future__ import annotations

import difflib
import inspect
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from deepseek_v4_ov.checkpoint.layout import AUTO_MAP, CONFIG_NAME, atomic_output_dir, copy_bundled_code, write_shards
from deepseek_v4_ov.checkpoint.release import (
    EXPERT_DTYPE, F32, QUANTIZATION_CONFIG, STORAGE_FORMATS, round_to_release, storage_class,
)
from deepseek_v4_ov.model.configuration_deepseek_v4 import COMPRESS_RATIOS, DSPARK, MTP, SLIDING, DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
from deepseek_v4_ov.toys.tokenizer import write_toy_tokenizer

NOT_SETTABLE = ("self", "kwargs", "experts_implementation")
"""`DeepseekV4Config.__init__` parameters `--set` refuses: the catch-all, and a how-not-what switch that
config.json does not keep."""


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a `DeepseekV4Config.__init__` annotation (ints are floats too; bools are not
    ints)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def parse_set(item: str) -> tuple[str, Any]:
    """One `--set key=value`: the value as JSON when it parses (numbers, lists, objects, true/false/null),
    else the raw string. Raises ValueError naming the item if it is not `key=value`."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {item!r}: expected KEY=VALUE (JSON values for lists, e.g. 'compress_ratios=[0,4]')")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


DRAFTERS = (MTP, DSPARK, "none")
"""`--drafter` choices: the layouts a toy can be written in (see `with_drafter`)."""
DSPARK_TOY = {"dspark_block_size": 5, "dspark_markov_rank": 16}
"""A DSpark toy's block size (the releases') and Markov rank (the releases' 256, scaled down)."""
DSPARK_TOY_STAGES, DSPARK_TOY_TARGETS = 3, 3
DSPARK_KEYS = tuple(k for k in inspect.signature(DeepseekV4Config.__init__).parameters if k.startswith("dspark_"))


def with_drafter(fields: dict[str, Any], drafter: str) -> dict[str, Any]:
    """Config fields turned into one drafter layout, the decoder layers kept: "none" (no `mtp.*`:
    `num_nextn_predict_layers` 0), "mtp" (the base release: the fields' MTP blocks, at least one, sliding)
    or "dspark" (the `-DSpark`/`-0731` releases: three sliding stages past the layers, block size 5, noise
    token `vocab_size - 1` (the toy vocabulary's last merge), target layers the last three decoder layers
    (all if fewer), Markov rank 16, `num_nextn_predict_layers` 1 as in the releases; dspark_* keys already
    in `fields` are kept)."""
    if drafter not in DRAFTERS:
        raise ValueError(f"--drafter {drafter!r}: choose one of {', '.join(DRAFTERS)}")
    config = DeepseekV4Config(**fields)
    layers, n, sliding = config.layer_ratios, config.num_hidden_layers, COMPRESS_RATIOS[SLIDING]
    out = {k: v for k, v in fields.items() if k not in DSPARK_KEYS}
    if drafter == "none":
        return {**out, "num_nextn_predict_layers": 0, "compress_ratios": layers}
    if drafter == MTP:
        blocks = config.drafter_blocks if config.drafter == MTP else 1
        return {**out, "num_nextn_predict_layers": blocks, "compress_ratios": layers + [sliding] * blocks}
    dspark = {**DSPARK_TOY, "dspark_noise_token_id": config.vocab_size - 1,
              "dspark_target_layer_ids": list(range(max(0, n - DSPARK_TOY_TARGETS), n))}
    dspark.update({k: fields[k] for k in DSPARK_KEYS if fields.get(k) is not None})
    return {**out, **dspark, "num_nextn_predict_layers": 1,
            "compress_ratios": layers + [sliding] * DSPARK_TOY_STAGES}


def toy_config(preset: dict[str, Any], sets: Iterable[str] = (), drafter: str | None = None) -> dict[str, Any]:
    """A preset's config fields with `--set key=value` overrides applied in order, each key checked against
    `DeepseekV4Config`'s fields and each value against the field's type, then `--drafter` (`with_drafter`;
    None keeps the preset's own), then the whole geometry checked by `DeepseekV4Config` itself (its errors
    name the inconsistent field). Raises ValueError before any work."""
    hints = typing.get_type_hints(DeepseekV4Config.__init__)
    fields = [k for k in inspect.signature(DeepseekV4Config.__init__).parameters if k not in NOT_SETTABLE]
    out = dict(preset)
    for item in sets:
        key, value = parse_set(item)
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=2)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise ValueError(f"--set {key}: unknown config field{hint}; the fields are those of DeepseekV4Config "
                             f"(config.json), e.g. {', '.join(fields[:4])}, ...")
        if not _fits(value, hints[key]):
            raise ValueError(f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}: "
                             f"`{key}` must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}")
        out[key] = value
    DeepseekV4Config(**out)  # the consistency checks, naming the field
    if drafter is not None:
        out = with_drafter(out, drafter)
        DeepseekV4Config(**out)
    return out


def official_dtype(name: str, tensor: torch.Tensor, source_format: str) -> torch.dtype:
    """Storage dtype of one tensor in a bf16 or fp32 toy: integer tables keep theirs; with bf16 the tensors
    the release keeps in F32 (`official.storage_class`) stay F32, everything else is BF16."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if source_format == "fp32" or storage_class(name) == F32:
        return torch.float32
    return torch.bfloat16


def build_toy_model(preset: dict[str, Any], seed: int, fmt: str = "bf16") -> DeepseekV4ForCausalLM:
    """The toy model in FP32 with weights rounded to the storage format, deterministic for `seed`."""
    return _toy_and_tensors(preset, seed, fmt)[0]


def _toy_and_tensors(
    preset: dict[str, Any], seed: int, fmt: str
) -> tuple[DeepseekV4ForCausalLM, dict[str, torch.Tensor]]:
    """The toy model and the tensors its checkpoint stores; with fp8 the model holds exactly the
    dequantised values of the stored FP8/FP4 weights."""
    if fmt not in STORAGE_FORMATS:
        raise ValueError(f"unknown toy format {fmt!r}; choose one of {STORAGE_FORMATS}")
    config = DeepseekV4Config(**preset)
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(tensor.to(official_dtype(name, tensor, fmt)))
        if fmt != "fp8":
            stored = {name: t.to(official_dtype(name, t, fmt)) for name, t in model.state_dict().items()}
            return model, stored
    return model, round_to_release(model)


def official_config_dict(config: DeepseekV4Config, source_format: str) -> dict[str, Any]:
    """config.json content: the official keys plus the `auto_map` for trust_remote_code."""
    fields = inspect.signature(DeepseekV4Config.__init__).parameters
    data = {k: v for k, v in config.to_dict().items() if k in fields}
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "auto_map": AUTO_MAP,
        "torch_dtype": "float32" if source_format == "fp32" else "bfloat16",
        **dict(sorted(data.items())),
        **({"quantization_config": QUANTIZATION_CONFIG, "expert_dtype": EXPERT_DTYPE}
           if source_format == "fp8" else {}),
    }


def write_toy(
    output: Path,
    preset: dict[str, Any],
    seed: int,
    fmt: str = "bf16",
    max_shard_bytes: int = 2 << 20,
    overwrite: bool = False,
) -> DeepseekV4ForCausalLM:
    """Generate a toy and write it to `output` atomically; return the in-memory model (FP32). An existing
    non-empty `output` without `overwrite` is refused before the model is built."""
    with atomic_output_dir(Path(output), overwrite) as folder:
        model, tensors = _toy_and_tensors(preset, seed, fmt)
        write_shards(folder, tensors, max_shard_bytes)
        config = official_config_dict(model.config, fmt)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copy_bundled_code(folder)
        write_toy_tokenizer(folder, config["vocab_size"], config.get("max_position_embeddings"))
    return model
