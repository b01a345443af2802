"""The trained toys: `deepseek-v4-ov toy OUT --preset trained` / `--preset trained-full`.

Weights trained by `training/train_toys.py` on the Python standard library's sources (see deepseek_v4_ov/toys/data/README.md),
shipped here in the release layout (routed experts FP4 e2m1 + E8M0 per-32 scales, linears FP8 e4m3 +
E8M0 128x128 scales, the rest BF16/F32/I64), with the byte-level BPE tokenizer trained on the same corpus
and a held-out sample of standard-library files that were never trained on (`heldout.txt`).
"""

from __future__ import annotations

import json
import math
import sysconfig
from collections import Counter
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
TOKENIZER_JSON = DATA / "tokenizer" / "tokenizer.json"
HELDOUT_TXT = DATA / "heldout.txt"
FOLDERS = {"trained": DATA / "trained", "trained-full": DATA / "trained-full"}
DRAFTER_FOLDERS = {("trained-full", "dspark"): DATA / "trained-full-dspark"}
"""Drafters trained on a trained preset's frozen target besides its own (`training/train_drafters.py`): their `mtp.*`
tensors only."""


def load_folder(folder: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no weights for {what} in {folder}")
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        out.update(load_file(str(shard)))
    return out


def own_drafter(name: str) -> str:
    """The drafter trained preset `name` was trained with ("mtp" or "none")."""
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
    from deepseek_v4_ov.toys.presets import PRESETS

    return DeepseekV4Config(**PRESETS[name]).drafter or "none"


def check_drafter(name: str, drafter: str | None) -> None:
    """Raise ValueError naming `--drafter` unless trained preset `name` can be written with `drafter`: its
    own (or None), "none", or one trained on its target (`DRAFTER_FOLDERS`)."""
    if name not in FOLDERS:
        raise ValueError(f"unknown trained preset {name!r}; choose one of {sorted(FOLDERS)}")
    if drafter in (None, "none", own_drafter(name)) or (name, drafter) in DRAFTER_FOLDERS:
        return
    shipped = [own_drafter(name), *(d for n, d in DRAFTER_FOLDERS if n == name), "none"]
    raise ValueError(f"--drafter {drafter}: the trained preset '{name}' has trained weights for the drafters "
                     f"{', '.join(dict.fromkeys(shipped))} only")


def stored_tensors(name: str, drafter: str | None = None) -> dict[str, torch.Tensor]:
    """The shipped release-layout tensors of trained preset `name` (quantised weights and their scales), with
    its own drafter (`drafter` None), another one trained on its target ("dspark" for trained-full) or
    none ("none")."""
    check_drafter(name, drafter)
    out = load_folder(FOLDERS[name], f"trained preset {name!r}")
    if drafter in (None, own_drafter(name)):
        return out
    target = {k: v for k, v in out.items() if not k.startswith("mtp.")}
    if drafter == "none":
        return target
    return {**target, **load_folder(DRAFTER_FOLDERS[name, drafter], f"the {drafter} drafter of {name!r}")}


def trained_config(name: str, drafter: str | None = None):
    """The config of trained preset `name` with the drafter of `stored_tensors(name, drafter)`."""
    from deepseek_v4_ov.toys.writer import with_drafter
    from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
    from deepseek_v4_ov.toys.presets import PRESETS

    return DeepseekV4Config(**with_drafter(PRESETS[name], drafter or own_drafter(name)))


def build_model(name: str, drafter: str | None = None):
    """The trained toy as an FP32 `DeepseekV4ForCausalLM` holding exactly the stored (dequantised) values."""
    from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    from deepseek_v4_ov.checkpoint.release import decode_release

    stored = stored_tensors(name, drafter)
    model = DeepseekV4ForCausalLM(trained_config(name, drafter)).eval()
    state = {k: decode_release(k, stored) for k in stored if not k.endswith(".scale")}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model, stored


def write_tokenizer(folder: Path, model_max_length: int) -> None:
    """The trained tokenizer with the toys' special tokens and chat template, saved as transformers does."""
    from transformers import PreTrainedTokenizerFast

    from deepseek_v4_ov.checkpoint.tokenizer import BOS_TOKEN, EOS_TOKEN
    from deepseek_v4_ov.toys.tokenizer import CHAT_TEMPLATE

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_JSON), bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                  pad_token=EOS_TOKEN, clean_up_tokenization_spaces=False,
                                  chat_template=CHAT_TEMPLATE, model_max_length=model_max_length)
    tok.save_pretrained(str(folder))
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_trained_toy(output: Path, name: str, fmt: str = "fp8", overwrite: bool = False,
                      max_shard_bytes: int = 2 << 20, drafter: str | None = None):
    """Write trained preset `name` to `output` (atomic), with the drafter `drafter` (see `stored_tensors`).
    `fp8` copies the release-layout tensors as shipped; `fp32`/`bf16` write their exact dequantised values
    (FP8/FP4 times E8M0 scales are exact in BF16 too, so all three formats hold the same model). Returns the
    in-memory FP32 model."""
    from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, atomic_output_dir, write_shards
    from deepseek_v4_ov.checkpoint.layout import copy_bundled_code
    from deepseek_v4_ov.checkpoint.release import STORAGE_FORMATS
    from deepseek_v4_ov.toys.writer import official_config_dict, official_dtype

    if fmt not in STORAGE_FORMATS:
        raise ValueError(f"unknown toy format {fmt!r}; choose one of {STORAGE_FORMATS}")
    model, stored = build_model(name, drafter)
    if fmt != "fp8":
        stored = {k: t.to(official_dtype(k, t, fmt)) for k, t in model.state_dict().items()}
    with atomic_output_dir(Path(output), overwrite) as folder:
        write_shards(folder, stored, max_shard_bytes)
        config = official_config_dict(model.config, fmt)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                      "do_sample": False}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copy_bundled_code(folder)
        write_tokenizer(folder, config["max_position_embeddings"])
    return model


def heldout_text() -> str:
    """Held-out Python source (standard-library files never trained on; PSF licence, see data/README.md)."""
    return HELDOUT_TXT.read_text()


def stdlib_root() -> Path:
    """The running interpreter's standard library: the trained toys' corpus."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_source(root: Path, rel: str) -> str:
    return (root / rel).read_text(encoding="utf-8", errors="replace")


def training_text() -> str:
    """The trained toys' training corpus as this machine has it: the standard-library files corpus.json lists
    as training files (never the held-out ones), read from this interpreter's standard library, in order
    (`export --dataset corpus` calibrates on it)."""
    root = stdlib_root()
    files = json.loads((DATA / "corpus.json").read_text())["train_files"]
    present = [rel for rel in files if (root / rel).is_file()]
    if not present:
        raise ValueError(f"--dataset corpus: none of the {len(files)} training files of deepseek_v4_ov/toys/data/corpus.json "
                         f"is in this interpreter's standard library {root}")
    return "".join(read_source(root, rel) for rel in present)


def heldout_ids(tokenizer) -> list[int]:
    """The held-out sample encoded with `tokenizer` (bos first)."""
    return tokenizer(heldout_text(), verbose=False)["input_ids"]  # longer than model_max_length on purpose


def heldout_windows(tokenizer, count: int, length: int) -> list[torch.Tensor]:
    """`count` consecutive, non-overlapping windows `[1, length]` of the held-out ids (deterministic)."""
    ids = heldout_ids(tokenizer)
    if count * length > len(ids):
        raise ValueError(f"held-out sample has {len(ids)} tokens, fewer than {count} x {length}")
    step = len(ids) // count
    return [torch.tensor([ids[i * step : i * step + length]]) for i in range(count)]


def unigram_perplexity(ids: list[int]) -> float:
    """Perplexity of the unigram model fitted on `ids` themselves (its best possible score on them)."""
    counts = Counter(ids)
    n = len(ids)
    return math.exp(-sum(c * math.log(c / n) for c in counts.values()) / n)
