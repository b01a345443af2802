"""The official DeepSeek-V4 checkpoint layout: tensor inventory, header-only dry run, exact loading.

Official tensor names are the port's parameter names (no `model.` prefix), so the mapping is the identity;
what this module adds is the storage layout (spec section 6):

* routed experts `(layers|mtp).N.ffn.experts.E.w{1,2,3}.weight`: FP4 e2m1 packed into I8 `[O, K/2]`, with
  `.scale` F8_E8M0 `[O, K/32]`;
* `attn.{wq_a,wq_b,wkv,wo_a,wo_b}`, `attn.indexer.wq_b`, `ffn.shared_experts.w{1,2,3}`, `mtp.N.{e,h}_proj`,
  DSpark's `mtp.0.main_proj`:
  FP8 e4m3 with `.scale` F8_E8M0 `[ceil(O/128), ceil(K/128)]`;
* `tid2eid` I64; `hc_*`, `attn_sink`, `ape`, `gate.bias` F32; everything else BF16.

A folder written as BF16 or FP32 (toy formats) has the same names without `.scale` companions.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
from transformers.initialization import no_init_weights

from deepseek_v4_ov.checkpoint import quant
from deepseek_v4_ov.checkpoint.drafter import check_drafter
from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, CheckpointError, CheckpointReader, read_config
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config
from deepseek_v4_ov.model.modeling_deepseek_v4 import DeepseekV4ForCausalLM

# Storage classes of one logical (port) tensor.
FP8, FP4, BF16, F32, I64 = "fp8", "fp4", "bf16", "f32", "i64"
STORAGE_FORMATS = ("bf16", "fp32", "fp8")
"""A source checkpoint's storage formats (`Checkpoint.fmt`; not the output formats, `compress/formats.py`):
fp8 is the release layout, FP4 routed experts and FP8 linears with E8M0 scales, the rest BF16/F32/I64."""

# config.json keys that describe the release's storage, not the model (dropped from a loaded or exported model)
STORAGE_ONLY_KEYS = ("quantization_config", "expert_dtype")
QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
EXPERT_DTYPE = "fp4"


_FP4_RE = re.compile(r"(layers|mtp)\.\d+\.ffn\.experts\.\d+\.w[123]\.weight")
_FP8_RE = re.compile(
    r"(layers|mtp)\.\d+\.(attn\.(wq_a|wq_b|wkv|wo_a|wo_b|indexer\.wq_b)|ffn\.shared_experts\.w[123]|e_proj|h_proj|"
    r"main_proj)"
    r"\.weight"
)
_F32_RE = re.compile(r"(.*\.)?hc_\w+|.*\.(attn_sink|ape|gate\.bias)")


def storage_class(name: str) -> str:
    """How the release stores the port tensor `name`: fp8, fp4, bf16, f32 or i64."""
    if _FP4_RE.fullmatch(name):
        return FP4
    if _FP8_RE.fullmatch(name):
        return FP8
    if name.endswith(".tid2eid"):
        return I64
    return F32 if _F32_RE.fullmatch(name) else BF16


def scale_name(weight_name: str) -> str:
    return weight_name.removesuffix(".weight") + ".scale"


# ------------------------------------------------------------------------------------------------------
# Inventory
# ------------------------------------------------------------------------------------------------------
def logical_tensors(config: DeepseekV4Config) -> dict[str, tuple[int, ...]]:
    """Every port tensor (= official name) with its full-precision shape, in the port's order: the state dict
    of `DeepseekV4ForCausalLM(config)` built on the meta device (no memory, no initialisation), once per
    model geometry (the config's own fields; storage keys such as `quantization_config` left out)."""
    fields = inspect.signature(DeepseekV4Config).parameters
    geometry = {k: v for k, v in config.to_dict().items() if k in fields}
    return dict(model_tensors(json.dumps(geometry, sort_keys=True)))


@lru_cache(maxsize=4)
def model_tensors(geometry: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`logical_tensors` of the config fields `geometry` (JSON): V4-Flash's model takes seconds to build."""
    with torch.device("meta"), no_init_weights():
        model = DeepseekV4ForCausalLM(DeepseekV4Config(**json.loads(geometry)))
    return tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())


def stored_entries(name: str, shape: tuple[int, ...], source_format: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The file tensors (name -> (safetensors dtype, shape)) that hold one port tensor in storage format
    `source_format`."""
    kind = storage_class(name)
    if kind == I64:
        return {name: ("I64", shape)}
    if source_format == "fp32":
        return {name: ("F32", shape)}
    if source_format == "bf16" or kind in (BF16, F32):
        return {name: ("F32" if kind == F32 else "BF16", shape)}
    rows, cols = shape
    if kind == FP8:
        blk = quant.FP8_BLOCK
        return {name: ("F8_E4M3", shape), scale_name(name): ("F8_E8M0", (-(-rows // blk), -(-cols // blk)))}
    if cols % quant.FP4_GROUP:
        raise CheckpointError(f"{name}: FP4 storage needs the input dimension divisible by 32, got {cols}")
    return {name: ("I8", (rows, cols // 2)), scale_name(name): ("F8_E8M0", (rows, cols // quant.FP4_GROUP))}


def expected_tensors(config: DeepseekV4Config, source_format: str = "fp8") -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every file tensor of a checkpoint for `config` in storage format `source_format` ("fp8" = the release
    layout, with `.scale` companions; "bf16"; "fp32"): name -> (safetensors dtype string, shape)."""
    if source_format not in STORAGE_FORMATS:
        raise ValueError(f"unknown storage format {source_format!r}; choose one of {STORAGE_FORMATS}")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, shape in logical_tensors(config).items():
        out.update(stored_entries(name, shape, source_format))
    return out


def storage_format(folder: Path) -> str:
    """The storage format a folder's config.json declares: fp8 (quantization_config, checked against the
    release's), else fp32 or bf16 from its dtype."""
    path = Path(folder) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err
    qc = raw.get("quantization_config")
    if qc is not None:
        got = {k: qc.get(k) for k in QUANTIZATION_CONFIG}
        if got != QUANTIZATION_CONFIG or raw.get("expert_dtype", qc.get("expert_dtype")) != EXPERT_DTYPE:
            raise CheckpointError(
                f"{path}: unsupported quantization_config {qc} / expert_dtype {raw.get('expert_dtype')!r}; the "
                f"reader knows {QUANTIZATION_CONFIG} with expert_dtype {EXPERT_DTYPE!r}"
            )
        return "fp8"
    return "fp32" if raw.get("torch_dtype", raw.get("dtype")) == "float32" else "bf16"


# ------------------------------------------------------------------------------------------------------
# Writing (synthetic release checkpoints)
# ------------------------------------------------------------------------------------------------------
def encode_release(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """One port tensor in the release layout: quantised weight plus `.scale`, or the plain tensor cast."""
    kind = storage_class(name)
    if kind == FP8:
        q, s = quant.quantize_fp8(tensor)
        return {name: q, scale_name(name): s}
    if kind == FP4:
        q, s = quant.quantize_fp4(tensor)
        return {name: q, scale_name(name): s}
    return {name: tensor if kind == I64 else tensor.to(torch.float32 if kind == F32 else torch.bfloat16)}


def round_to_release(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's tensors whose names start with `prefix`, in the release layout (`encode_release`, on the
    CPU, floating tensors in FP32); the model is left holding exactly their stored (dequantised) values."""
    stored: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(prefix):
                encoded = encode_release(name, tensor.cpu().float() if tensor.is_floating_point() else tensor.cpu())
                tensor.copy_(decode_release(name, encoded).to(tensor))
                stored.update(encoded)
    return stored


def decode_release(name: str, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of `encode_release`: the exact FP32 value of a quantised weight, or the stored tensor."""
    kind = storage_class(name)
    if kind == FP8:
        return quant.dequantize_fp8(stored[name], stored[scale_name(name)])
    if kind == FP4:
        return quant.dequantize_fp4(stored[name], stored[scale_name(name)])
    return stored[name]


# ------------------------------------------------------------------------------------------------------
# A validated checkpoint
# ------------------------------------------------------------------------------------------------------
class Checkpoint(CheckpointReader):
    """A checkpoint folder validated once, from config.json, the index and the shard headers (each read
    once), and handed to every stage: `config`, storage format `fmt`, the reader's `weight_map`/`headers`,
    and the port's tensors on demand (`tensor`, `iter_tensors`).

    Every layout is read: the base release (MTP block `mtp.0`), `-DSpark` and `-0731` (DSpark stages
    `mtp.0..`), or no drafter; the index's drafter must be the one config.json declares
    (`checkpoint.drafter.check_drafter`: kind and `mtp.N` count) before the tensors are checked.
    `without_drafter()` gives the target model alone."""

    def __init__(self, folder: Path, config: DeepseekV4Config | None = None) -> None:
        super().__init__(folder)
        self.config = read_config(self.folder) if config is None else config
        self.fmt = storage_format(self.folder)
        check_drafter(self.config, self.weight_map, self.folder)
        self._validate()

    def without_drafter(self) -> Checkpoint:
        """This checkpoint as the target model alone: `config.without_drafter()`, and the `mtp.*` tensors
        dropped from `weight_map`/`headers`, so that nothing reads them (the folder was validated whole)."""
        target = copy.copy(self)
        target.config = self.config.without_drafter()
        target.weight_map = {n: s for n, s in self.weight_map.items() if not n.startswith("mtp.")}
        target.headers = {n: h for n, h in self.headers.items() if not n.startswith("mtp.")}
        return target

    def _validate(self) -> None:
        """Every expected tensor present with the dtype and shape config.json implies, every quantised
        weight with its scale, no unknown tensor; CheckpointError naming tensor and shard otherwise."""
        folder, weight_map, headers, fmt = self.folder, self.weight_map, self.headers, self.fmt
        problems = []
        expected = expected_tensors(self.config, fmt)
        for name, (dtype, shape) in expected.items():
            if name not in weight_map:
                if name.endswith(".scale") and (w := name.removesuffix(".scale") + ".weight") in weight_map:
                    problems.append(f"{folder / weight_map[w]}: quantised weight {w!r} has no scale {name!r}")
                else:
                    problems.append(f"{folder}: tensor {name!r} ({dtype}{list(shape)}) is missing from the checkpoint")
            elif (headers[name].dtype, headers[name].shape) != (dtype, shape):
                h = headers[name]
                problems.append(f"{folder / weight_map[name]}: tensor {name!r} is {h.dtype}{list(h.shape)}, expected "
                                f"{dtype}{list(shape)} for this config.json ({fmt} layout)")
        for name in weight_map:
            if name not in expected:
                problems.append(f"{folder / weight_map[name]}: unknown tensor {name!r} for this config.json ({fmt} layout)")
        if problems:
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise CheckpointError(f"{len(problems)} problem(s) in {folder}:\n  " + "\n  ".join(problems[:10]) + more)

    def tensor(self, name: str) -> torch.Tensor:
        """The port tensor `name`: a quantised weight dequantised exactly to FP32, anything else as stored."""
        quantised = self.fmt == "fp8" and storage_class(name) in (FP8, FP4)
        stored = {k: self.get(k) for k in ((name, scale_name(name)) if quantised else (name,))}
        try:
            return decode_release(name, stored) if quantised else stored[name]
        except ValueError as err:
            raise CheckpointError(f"{self.folder / self.weight_map[name]}: tensor {name!r}: {err}") from err

    def iter_tensors(self, prefixes: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(port name, tensor) one at a time in the port's order; `prefixes` (e.g. ["layers.3."]) restricts
        the tensors read."""
        wanted = tuple(prefixes) if prefixes is not None else None
        for name in logical_tensors(self.config):
            if wanted is None or name.startswith(wanted):
                yield name, self.tensor(name)


def check_folder(folder: Path | str, config: DeepseekV4Config | None = None) -> Checkpoint:
    """Validate a checkpoint folder from headers alone (see `Checkpoint`); raises CheckpointError naming
    tensor and shard for the first problems found."""
    return Checkpoint(Path(folder), config)


# ------------------------------------------------------------------------------------------------------
# Tensor groups (dry run and precision reports)
# ------------------------------------------------------------------------------------------------------
GROUPS = (
    ("embed / head", r"(embed|head)\.weight"),
    ("routed experts", r".*\.ffn\.experts\..*"),
    ("shared expert", r".*\.ffn\.shared_experts\..*"),
    ("router (gate weight, bias, tid2eid)", r".*\.ffn\.gate\..*"),
    ("indexer", r".*\.attn\.indexer\..*"),
    ("compressor", r".*\.attn\.compressor\..*"),
    ("attention core", r".*\.attn\..*"),
    ("mHC (hc_*)", r"(.*\.)?hc_\w+"),
    ("MTP input projections", r"mtp\.\d+\.[eh]_proj\..*"),
    ("DSpark heads and input projection", r"mtp\.\d+\.(main_proj|markov_head|confidence_head)\..*"),
    ("norms", r".*norm\.weight"),
)
def group_of(name: str) -> str:
    return next(g for g, pattern in GROUPS if re.fullmatch(pattern, name))



# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------
def iter_state_dict(source: Path | str | Checkpoint, config: DeepseekV4Config | None = None,
                    prefixes: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (port name, tensor) one at a time, quantised weights dequantised exactly to FP32, other tensors
    as stored; a folder is validated from headers first."""
    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint(Path(source), config)
    yield from checkpoint.iter_tensors(prefixes)


def load_state_dict(source: Path | str | Checkpoint, config: DeepseekV4Config | None = None
                    ) -> dict[str, torch.Tensor]:
    """The whole state dict of a checkpoint folder (or validated checkpoint), keyed by port parameter name."""
    return dict(iter_state_dict(source, config))


def load_model(source: Path | str | Checkpoint, drafter: bool = True):
    """The port in FP32, eval mode, with the checkpoint's exact weights (every weight held at once: for the
    PyTorch reference side of checks, not for exporting). `drafter=False`: the target model alone
    (`Checkpoint.without_drafter`: no `mtp.*` module, no `mtp.*` tensor read)."""
    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint(Path(source))
    if not drafter:
        checkpoint = checkpoint.without_drafter()
    config = checkpoint.config
    # the port holds dequantised FP32 weights: the storage description does not apply to it (and OpenVINO's
    # PyTorch frontend reads `config.quantization_config` as a transformers quantiser object)
    for key in STORAGE_ONLY_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    model = DeepseekV4ForCausalLM(config).float().eval()
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in checkpoint.iter_tensors()}, strict=True)
    return model
