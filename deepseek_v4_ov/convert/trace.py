"""Trace the PyTorch port into an OpenVINO IR: stateful (the default) or prefill-only.

Stateful IR (what optimum-intel's `OVModelForCausalLM` and OpenVINO GenAI drive):
    inputs   `input_ids [B, S]` i64, `attention_mask [B, L]` i64, `position_ids [B, S]` i64, `beam_idx [B]` i32
    outputs  `logits [B, S, vocab]` f32, and `state_init_guard` (a scalar 0; see `make_stateful`)
    states   one OpenVINO variable per decoder cache tensor of `DeepseekV4Cache` (`length` and every
             `layers.{i}.*`; the MTP block's `mtp.*` state is not in the IR), id `past_key_values.<name>...`
The model derives positions from its `length` state, so `attention_mask` and `position_ids` are accepted
for the runtimes' sake and not read (the port refuses padding in eager mode; see `positions_for`).
Every state starts as zeros of its empty-cache shape, batch taken from `input_ids`: growing axes empty,
`prev_*` rows fixed-size, `length` 0. Each call first gathers every state on the batch axis by `beam_idx`,
which is how optimum-intel and GenAI reorder beams. One compiled model serves prefill, chunked prefill and
one-token decode. With `stateful=False` the cache stays explicit: `past_key_values.<name>` inputs and
`present.<name>` outputs (no `beam_idx`).

Prefill-only IR: `input_ids` (+ `attention_mask`, not read) to `logits`, no state.

    ov_model = convert(model)                 # model: DeepseekV4ForCausalLM, FP32, eval
    save(ov_model, model, "out", source=src)  # openvino_model.xml/.bin, config.json, the .py files, generation_config.json
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from openvino.passes import MakeStateful, Manager
from torch import nn

from deepseek_v4_ov.model.modeling_deepseek_v4 import (
    DeepseekV4Cache,
    DeepseekV4ForCausalLM,
    MoE,
    set_experts_implementation,
)

IR_NAME = "openvino_model.xml"
BUNDLED_FILES = ("configuration_deepseek_v4.py", "modeling_deepseek_v4.py")
AUTO_MAP = {
    "AutoConfig": "configuration_deepseek_v4.DeepseekV4Config",
    "AutoModel": "modeling_deepseek_v4.DeepseekV4Model",
    "AutoModelForCausalLM": "modeling_deepseek_v4.DeepseekV4ForCausalLM",
}
INPUT_PREFIX, OUTPUT_PREFIX = "past_key_values.", "present."
GUARD_NAME = "state_init_guard"
F32_HINT = {"INFERENCE_PRECISION_HINT": "f32"}  # this CPU runs OpenVINO in bf16 by default


def decoder_state(model: DeepseekV4ForCausalLM, batch: int) -> dict[str, torch.Tensor]:
    """The empty decoder cache, `length` as int32 (the CPU plugin cannot hold an i64 variable);
    no `mtp.*` entries (the trunk never reads them)."""
    state = {k: v for k, v in model.empty_cache(batch).tensors.items() if not k.startswith("mtp")}
    state["length"] = state["length"].int()
    return state


class _CacheWrapper(nn.Module):
    """(input_ids, attention_mask, position_ids, *cache) -> (logits, *updated cache), cache in `names` order."""

    def __init__(self, model: DeepseekV4ForCausalLM, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids, attention_mask, position_ids, *cache):
        tensors = dict(zip(self.names, cache))
        tensors["length"] = tensors["length"].long()
        cache = DeepseekV4Cache(tensors)
        logits = self.model(input_ids, past_key_values=cache).logits
        cache.tensors["length"] = cache.tensors["length"].int()
        return (logits, *(cache.tensors[n] for n in self.names))


class _PrefillWrapper(nn.Module):
    def __init__(self, model: DeepseekV4ForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids).logits


@contextmanager
def experts_implementation(model: nn.Module, name: str):
    """Within the block every `MoE` of `model` runs the routed-experts form `name` (see `MoE`); each gets
    its own form back on exit. The trace uses "grouped": GroupedMatMul over stacked `[E, out, in]` constants."""
    before = [(m, m.experts_implementation) for m in model.modules() if isinstance(m, MoE)]
    set_experts_implementation(model, name)
    try:
        yield
    finally:
        for m, form in before:
            m.set_experts_implementation(form)


def _random_ids(model: DeepseekV4ForCausalLM, batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(2, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _example_state(model: DeepseekV4ForCausalLM, batch: int, tokens: int) -> dict[str, torch.Tensor]:
    """The cache after `tokens` random tokens, so that every traced tensor is non-empty."""
    tensors = decoder_state(model, batch)
    tensors["length"] = tensors["length"].long()
    cache = DeepseekV4Cache(tensors)
    with torch.no_grad():
        model(_random_ids(model, batch, tokens, 0), past_key_values=cache)
    cache.tensors["length"] = cache.tensors["length"].int()
    return cache.tensors


def _name_ports(ov_model: ov.Model, input_names: list[str], output_names: list[str]) -> None:
    for port, name in zip(ov_model.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    for port, name in zip(ov_model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})


def _make_topk_stable(ov_model: ov.Model) -> None:
    """Ties in every TopK go to the lower index, as `modeling_deepseek_v4.stable_topk_indices` does in eager
    PyTorch (the indexer's scores tie exactly; the router's practically never do)."""
    for op in ov_model.get_ops():
        if op.get_type_name() == "TopK":
            op.set_attribute("stable", True)


def convert(model: DeepseekV4ForCausalLM, stateful: bool = True, prefill_only: bool = False) -> ov.Model:
    """Trace `model` (FP32, eval) into an ov.Model with dynamic batch and sequence.

    Default: the stateful IR. `stateful=False`: explicit `past_key_values.*` inputs / `present.*` outputs.
    `prefill_only=True`: no cache at all (takes precedence over `stateful`).
    """
    model = model.eval()
    ids = _random_ids(model, 2, 5, 1)
    seq = (ov.PartialShape([-1, -1]), ov.Type.i64)
    if prefill_only:
        with torch.no_grad(), experts_implementation(model, "grouped"):
            ov_model = ov.convert_model(_PrefillWrapper(model), example_input=(ids, torch.ones_like(ids)),
                                        input=[seq, seq])
        _name_ports(ov_model, ["input_ids", "attention_mask"], ["logits"])
        _make_topk_stable(ov_model)
        return ov_model

    empty = decoder_state(model, 1)
    names = list(empty)
    # trace from a cache that already holds 133 tokens (entries, pending rows, a partial window all non-empty)
    example = _example_state(model, 2, 133)
    cache_inputs = []
    for n in names:
        # dynamic: batch, and the row axis of growing states (size 0 when empty); fixed: everything else
        grows = empty[n].dim() > 1 and empty[n].shape[1] == 0
        dims = [-1 if i == 0 or (i == 1 and grows) else d for i, d in enumerate(empty[n].shape)]
        cache_inputs.append((ov.PartialShape(dims), ov.Type.i32 if n == "length" else ov.Type.f32))
    mask = torch.ones(2, 138, dtype=torch.long)
    positions = torch.arange(133, 138).expand(2, -1)
    with torch.no_grad(), experts_implementation(model, "grouped"):
        ov_model = ov.convert_model(_CacheWrapper(model, names),
                                    example_input=(ids, mask, positions, *(example[n] for n in names)),
                                    input=[seq, seq, seq, *cache_inputs])
    _name_ports(ov_model, ["input_ids", "attention_mask", "position_ids", *(INPUT_PREFIX + n for n in names)],
                ["logits", *(OUTPUT_PREFIX + n for n in names)])
    _make_topk_stable(ov_model)
    if stateful:
        make_stateful(ov_model, {n: tuple(empty[n].shape[1:]) for n in names})
    return ov_model


def make_stateful(ov_model: ov.Model, state_shapes: dict[str, tuple[int, ...]]) -> None:
    """Turn every `past_key_values.<n>` input / `present.<n>` output pair into an OpenVINO variable.

    1. `beam_idx [B]` (i32) is added and every cache input is gathered by it on axis 0.
    2. OpenVINO's MakeStateful pass replaces each named pair by ReadValue/Assign.
    3. Each ReadValue gets a zero initialiser of shape `[batch of input_ids, *state_shapes[n]]`, so a reset
       state is the start of a sequence. (optimum's `patch_stateful` would do 1-3 equally, pairing names by
       position and taking the fixed dims from the partial shapes; here the pairs and dims are explicit.)
    4. The initialisers also feed one extra scalar output, `state_init_guard` (always 0). Without it the CPU
       plugin (2026.4.1) moves an initialiser used by a single ReadValue inside it (ReadValueWithSubgraph), and
       a growing state initialised that way comes back stale and wrongly shaped in the next infer request
       that starts from a reset state (seen on `seed`'s `index_keys`, its only [B, 0, 16] state; identical
       initialisers are merged and escape). An initialiser that also reaches a model output is not moved.
       tests/test_ov_convert.py checks both the symptom and the compiled graph.
    """
    batch = ops.gather(ops.shape_of(ov_model.input("input_ids"), "i64"), ops.constant([0]), ops.constant(0))
    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in state_shapes:
        port = ov_model.input(INPUT_PREFIX + name)
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    ov_model.validate_nodes_and_infer_types()

    manager = Manager()
    manager.register_pass(MakeStateful({INPUT_PREFIX + n: OUTPUT_PREFIX + n for n in state_shapes}))
    manager.run_passes(ov_model)

    guards = []
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        (name,) = (n[len(INPUT_PREFIX):] for n in op.output(0).get_names() if n.startswith(INPUT_PREFIX))
        dims = state_shapes[name]
        zero = ops.constant(np.zeros((), dtype=op.get_output_element_type(0).to_dtype()))
        init = ops.broadcast(zero, ops.concat([batch, ops.constant(np.array(dims, dtype=np.int64))], 0))
        op.set_arguments([init])
        # reduce to a scalar: a flattened empty tensor would be dropped from the Concat below
        total = ops.reduce_sum(init, ops.constant(np.arange(len(dims) + 1)), False)
        guards.append(ops.unsqueeze(ops.convert(total, ov.Type.f32), ops.constant(0)))
    guard = ops.reduce_sum(ops.concat(guards, 0), ops.constant([0]), False)
    guard.output(0).get_tensor().set_names({GUARD_NAME})
    ov_model.add_results([ops.result(guard)])
    ov_model.validate_nodes_and_infer_types()


def save(ov_model: ov.Model, model: DeepseekV4ForCausalLM, folder: str | Path,
         source: str | Path | None = None) -> Path:
    """Write `openvino_model.xml/.bin` (weights as they are in `ov_model`), config.json (the source's if it
    has one, else the model's; with `auto_map` and `use_cache` = stateful), the two bundled .py files and
    generation_config.json (the source's if present) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / IR_NAME, compress_to_fp16=False)
    source = Path(source) if source is not None else None
    if source is not None and (source / "config.json").is_file():
        config = json.loads((source / "config.json").read_text())
    else:
        config = model.config.to_dict()
    config["auto_map"] = AUTO_MAP
    config["use_cache"] = bool(ov_model.get_sinks())
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    package = Path(__file__).resolve().parents[1] / "model"
    for name in BUNDLED_FILES:
        shutil.copyfile(package / name, folder / name)
    if source is not None and (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", folder / "generation_config.json")
    else:
        model.generation_config.save_pretrained(folder)
    return folder
