"""Ports and states of a traced graph: names, stable TopK, and the port's cache as OpenVINO state.

Every traced piece (`convert/pieces.py`) goes through these, so the whole-model IR and a piece-wise one
have the same inputs, outputs and variables:

    inputs   `input_ids [B, S]` i64, `attention_mask [B, L]` i64, `position_ids [B, S]` i64, `beam_idx [B]` i32
    outputs  `logits [B, S, vocab]` f32, and `state_init_guard` (a scalar 0; see `make_stateful`)
    states   one OpenVINO variable per decoder cache tensor of `DeepseekV4Cache` (`length` and every
             `layers.{i}.*`), id `past_key_values.<name>present.<name>`

A prefill-only graph binds every state to its initial value instead (`bind_initial_states`).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino.passes import MakeStateful, Manager

INPUT_PREFIX, OUTPUT_PREFIX = "past_key_values.", "present."
GUARD_NAME = "state_init_guard"
TAPS = "drafter_taps"  # a target's output for its drafter (final streams [B, S, hc_mult, hidden]; --drafter)


def name_ports(ov_model: ov.Model, input_names: list[str], output_names: list[str]) -> None:
    """Name the inputs and outputs; the frontend also names inner tensors after Python variables (a
    block's intermediate `streams`), and those names are taken off, so each port name is one tensor."""
    for port, name in zip(ov_model.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    for port, name in zip(ov_model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})
    ports = {*input_names, *output_names}
    own = {(p.get_node().get_name(), p.get_index()) for p in ov_model.inputs}
    own |= {(r.input_value(0).get_node().get_name(), r.input_value(0).get_index()) for r in ov_model.get_results()}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Result":  # shares its input's tensor
            continue
        for out in op.outputs():
            tensor = out.get_tensor()
            if tensor.get_names() & ports and (op.get_name(), out.get_index()) not in own:
                tensor.set_names(tensor.get_names() - ports)


def make_topk_stable(ov_model: ov.Model) -> None:
    """Ties in every TopK go to the lower index, as `modeling_deepseek_v4.stable_topk_indices` does in eager
    PyTorch (the indexer's scores tie exactly; the router's practically never do)."""
    for op in ov_model.get_ops():
        if op.get_type_name() == "TopK":
            op.set_attribute("stable", True)


def _batch(ov_model: ov.Model):
    return ops.gather(ops.shape_of(ov_model.input("input_ids"), "i64"), ops.constant([0]), ops.constant(0))


def _initial_value(batch, element_type: ov.Type, dims: tuple[int, ...]):
    """Zeros of shape `[batch, *dims]`: the start of a sequence for every state."""
    zero = ops.constant(np.zeros((), dtype=element_type.to_dtype()))
    return ops.broadcast(zero, ops.concat([batch, ops.constant(np.array(dims, dtype=np.int64))], 0))


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
    batch = _batch(ov_model)
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
        init = _initial_value(batch, op.get_output_element_type(0), dims)
        op.set_arguments([init])
        # reduce to a scalar: a flattened empty tensor would be dropped from the Concat below
        total = ops.reduce_sum(init, ops.constant(np.arange(len(dims) + 1)), False)
        guards.append(ops.unsqueeze(ops.convert(total, ov.Type.f32), ops.constant(0)))
    guard = ops.reduce_sum(ops.concat(guards, 0), ops.constant([0]), False)
    guard.output(0).get_tensor().set_names({GUARD_NAME})
    ov_model.add_results([ops.result(guard)])
    ov_model.validate_nodes_and_infer_types()


def chain_guard(ov_model: ov.Model) -> None:
    """For a piece after the first: its `state_init_guard` output becomes guard_in + its own guard, guard_in
    a new scalar input (the previous piece's guard when the pieces are joined)."""
    (res,) = [r for r in ov_model.get_results() if GUARD_NAME in r.input_value(0).get_names()]
    local = res.input_value(0)
    local.get_tensor().set_names(set())
    guard_in = ops.parameter(ov.PartialShape([]), ov.Type.f32, name=GUARD_NAME)
    guard_in.output(0).get_tensor().set_names({GUARD_NAME})
    ov_model.add_parameters([guard_in])
    total = ops.add(guard_in, local)
    total.output(0).get_tensor().set_names({GUARD_NAME})
    res.input(0).replace_source_output(total.output(0))
    ov_model.validate_nodes_and_infer_types()


def bind_initial_states(ov_model: ov.Model, state_shapes: dict[str, tuple[int, ...]]) -> None:
    """Prefill-only: every `past_key_values.<n>` input is replaced by its initial value (zeros, as a reset
    state) and every `present.<n>` output is dropped; the graph then runs one whole prompt from scratch."""
    batch = _batch(ov_model)
    for name, dims in state_shapes.items():
        param = ov_model.input(INPUT_PREFIX + name).get_node()
        init = _initial_value(batch, param.get_output_element_type(0), dims)
        for target in list(param.output(0).get_target_inputs()):
            target.replace_source_output(init.output(0))
        ov_model.remove_parameter(param)
    for result in list(ov_model.get_results()):
        if any(n.startswith(OUTPUT_PREFIX) for n in result.input_value(0).get_names()):
            ov_model.remove_result(result)
    ov_model.validate_nodes_and_infer_types()
