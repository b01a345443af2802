"""Random-weight toy checkpoints in the official release layout.

A toy folder holds config.json (official keys plus `auto_map`), the two bundled .py files, sharded
safetensors with `model.safetensors.index.json`, generation_config.json and a small byte-level BPE
tokenizer of its own (`tokenizer.py`), so it goes through the same reader as the real release, loads with
`trust_remote_code=True`, and loads natively in transformers 5.23.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, atomic_output_dir, write_shards
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
from deepseek_v4_ov.checkpoint.release import EXPERT_DTYPE, F32, QUANTIZATION_CONFIG, decode_release, encode_release, storage_class
from deepseek_v4_ov.checkpoint.tokenizer import write_toy_tokenizer

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "model"  # the bundled pair
BUNDLED_FILES = ("configuration_deepseek_v4.py", "modeling_deepseek_v4.py")
AUTO_MAP = {
    "AutoConfig": "configuration_deepseek_v4.DeepseekV4Config",
    "AutoModel": "modeling_deepseek_v4.DeepseekV4Model",
    "AutoModelForCausalLM": "modeling_deepseek_v4.DeepseekV4ForCausalLM",
}
FORMATS = ("bf16", "fp32", "fp8")
"""fp8 is the release layout: FP4 routed experts and FP8 linears with E8M0 scales, the rest BF16/F32/I64."""

def official_dtype(name: str, tensor: torch.Tensor, fmt: str) -> torch.dtype:
    """Storage dtype of one tensor in a bf16 or fp32 toy: integer tables keep theirs; with bf16 the tensors
    the release keeps in F32 (`official.storage_class`) stay F32, everything else is BF16."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if fmt == "fp32" or storage_class(name) == F32:
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
    if fmt not in FORMATS:
        raise ValueError(f"unknown toy format {fmt!r}; choose one of {FORMATS}")
    config = DeepseekV4Config(**preset)
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(tensor.to(official_dtype(name, tensor, fmt)))
        if fmt != "fp8":
            stored = {name: t.to(official_dtype(name, t, fmt)) for name, t in model.state_dict().items()}
            return model, stored
        stored = {}
        for name, tensor in model.state_dict().items():
            encoded = encode_release(name, tensor)
            tensor.copy_(decode_release(name, encoded))
            stored.update(encoded)
    return model, stored


def official_config_dict(config: DeepseekV4Config, fmt: str) -> dict[str, Any]:
    """config.json content: the official keys plus the `auto_map` for trust_remote_code."""
    fields = inspect.signature(DeepseekV4Config.__init__).parameters
    data = {k: v for k, v in config.to_dict().items() if k in fields}
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "auto_map": AUTO_MAP,
        "torch_dtype": "float32" if fmt == "fp32" else "bfloat16",
        **dict(sorted(data.items())),
        **({"quantization_config": QUANTIZATION_CONFIG, "expert_dtype": EXPERT_DTYPE} if fmt == "fp8" else {}),
    }


def copy_bundled_code(folder: Path) -> None:
    for name in BUNDLED_FILES:
        shutil.copyfile(PACKAGE_DIR / name, folder / name)


def write_toy(
    output: Path,
    preset: dict[str, Any],
    seed: int,
    fmt: str = "bf16",
    max_shard_bytes: int = 2 << 20,
    overwrite: bool = False,
) -> DeepseekV4ForCausalLM:
    """Generate a toy and write it to `output` atomically; return the in-memory model (FP32)."""
    model, tensors = _toy_and_tensors(preset, seed, fmt)
    with atomic_output_dir(Path(output), overwrite) as folder:
        write_shards(folder, tensors, max_shard_bytes)
        config = official_config_dict(model.config, fmt)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copy_bundled_code(folder)
        write_toy_tokenizer(folder, config["vocab_size"], config.get("max_position_embeddings"))
    return model
