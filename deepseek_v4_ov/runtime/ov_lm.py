"""Running an exported IR directly through `openvino.Core`: prefill, decode, greedy, with timings.

The stateful IR keeps every cache tensor as an OpenVINO state, so a sequence is: `reset()`, the prompt
(`prefill`: in calls of `chunk` tokens), then one call per new token. Inputs are fed by name as optimum-intel
and GenAI do: `input_ids`, `attention_mask` (past + current length), `position_ids`, `beam_idx`; whichever
the IR has.

Logits where needed: the IR returns logits for every position of a call (what optimum-intel's forward
returns, and what perplexity, parity and speculative verification need). A prompt call for generation needs
only the last position's, and the head (vocabulary x hidden) is the largest single matmul of the model, so
`OVCausalLM` adds, when it loads the IR, an input `logits_to_keep` and a Slice of the head's input to the
last `logits_to_keep` positions (`keep_last_logits`: what OpenVINO GenAI's `LLMPipeline` does to every
stateful LLM with its "slice before matmul" transformation, which keeps only the last position). The file
is unchanged, so optimum-intel and GenAI load it as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
"""Exact FP32 execution; the CPU plugin otherwise picks bf16 on CPUs that support it."""
LOGITS_TO_KEEP = "logits_to_keep"  # the input keep_last_logits adds (transformers' name for the same thing)
DEFAULT_PREFILL_CHUNK = 256
"""Tokens per prompt call (`--prefill-chunk`; 0: the whole prompt in one call). A constant size keeps the
calls' shapes equal (the CPU plugin re-prepares its graph when they change), bounds the activations and the
indexer's scores whatever the prompt's length, and is the benchmark's choice (`benchmarks/layer_types.py
--chunks`, docs/benchmarks.md "Runtime at V4-Flash widths")."""


@dataclass
class Timings:
    compile_s: float = 0.0
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)

    def decode_ms_per_token(self) -> float:
        return 1e3 * float(np.mean(self.decode_s)) if self.decode_s else float("nan")


def read_ir(model: ov.Model | str | Path, core: ov.Core) -> ov.Model:
    """`model` itself, or the IR read from a file or an exported folder (its openvino_model.xml)."""
    if isinstance(model, ov.Model):
        return model
    path = Path(model)
    return core.read_model(path / "openvino_model.xml" if path.is_dir() else path)


def head_matmul(model: ov.Model) -> ov.Node:
    """The head: the MatMul whose output is the `logits` output (how every exported target IR ends; GenAI's
    `find_llm_matmul` looks for the same node as the producer of the model's first output)."""
    names = [port.get_any_name() for port in model.outputs]
    if "logits" not in names:
        raise ValueError(f"the IR has no `logits` output (outputs: {', '.join(names)})")
    node = model.output("logits").get_node().input_value(0).get_node()
    if node.get_type_name() != "MatMul" or node.get_input_partial_shape(0).rank.get_length() != 3:
        raise ValueError(f"the IR's `logits` come from a {node.get_type_name()} ({node.get_friendly_name()}), not the "
                         "head's MatMul of [batch, positions, hidden]: cannot compute logits for the last positions only")
    return node


def keep_last_logits(model: ov.Model, last: int | None = None) -> None:
    """Slice the head's input to the call's last N positions, so the head runs on those only and `logits` is
    `[B, N, vocab]`: N = `last`, or (None) a new input `logits_to_keep` `[1]` (i64, N in [1, positions of the
    call]). Everything before the head (the states, `drafter_taps`) is computed as before. In place."""
    matmul = head_matmul(model)
    if last is None:
        keep = ops.parameter(ov.PartialShape([1]), ov.Type.i64, name=LOGITS_TO_KEEP)
        keep.output(0).get_tensor().set_names({LOGITS_TO_KEEP})
        model.add_parameters([keep])
        start = ops.negative(keep)
    else:
        start = ops.constant(np.array([-last]))
    end = ops.constant(np.array([np.iinfo(np.int64).max]))
    sliced = ops.slice(matmul.input_value(0), start, end, ops.constant(np.array([1])), ops.constant(np.array([1])))
    matmul.input(0).replace_source_output(sliced.output(0))
    model.validate_nodes_and_infer_types()


def check_chunk(chunk: int) -> None:
    if chunk < 0:
        raise ValueError(f"--prefill-chunk {chunk}: must be >= 0 (0: the whole prompt in one call)")


class OVCausalLM:
    """A compiled IR (stateful or prefill-only) with the calls the parity suite and benchmarks need. An IR
    whose calls can have several positions gets the `logits_to_keep` input (`keep_last_logits`; an
    `ov.Model` passed in is copied first, not changed)."""

    def __init__(self, model: ov.Model | str | Path, device: str = "CPU", config: dict | None = None,
                 core: ov.Core | None = None) -> None:
        core = core or ov.Core()
        given = isinstance(model, ov.Model)
        model = read_ir(model, core)
        if model.input("input_ids").get_partial_shape()[1].is_dynamic:
            model = model.clone() if given else model
            keep_last_logits(model)
        self.inputs = {port.get_any_name() for port in model.inputs}
        self.outputs = {port.get_any_name() for port in model.outputs}
        self.stateful = bool(model.get_sinks())
        self.timings = Timings()
        start = time.perf_counter()
        self.compiled = core.compile_model(model, device, config or {})
        self.timings.compile_s = time.perf_counter() - start
        self.request = self.compiled.create_infer_request()
        self.past = 0
        self.last_s = 0.0
        self.device = device
        self.precision = self._precision()

    def _precision(self) -> str:
        """The compiled model's inference precision, as the plugin reports it."""
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except RuntimeError:  # not every plugin exposes it
            return "default"
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def reset(self) -> None:
        self.request.reset_state()
        self.past = 0

    def __call__(self, input_ids: np.ndarray, keep: int | None = None) -> np.ndarray:
        """Feed new tokens `[B, S]`; return FP32 logits `[B, S, vocab]`, or with `keep` those of the last `keep`
        positions only `[B, keep, vocab]` (the head runs on those only). Stateful: continues the sequence."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        if keep is not None and not 1 <= keep <= seq:
            raise ValueError(f"keep {keep}: must be in [1, {seq}] (the positions of the call)")
        total = self.past + seq if self.stateful else seq
        feed = {"input_ids": input_ids}
        if LOGITS_TO_KEEP in self.inputs:
            feed[LOGITS_TO_KEEP] = np.array([seq if keep is None else keep], dtype=np.int64)
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((batch, total), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(total - seq, total, dtype=np.int64)[None].repeat(batch, 0)
        if "beam_idx" in self.inputs:
            feed["beam_idx"] = np.arange(batch, dtype=np.int32)
        start = time.perf_counter()
        self.request.infer(feed)
        self.last_s = time.perf_counter() - start
        if self.stateful:
            self.past = total
        return self.output("logits")

    def prefill(self, input_ids: np.ndarray, chunk: int = DEFAULT_PREFILL_CHUNK,
                collect: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Feed a prompt `[B, S]` (after `reset()`, or more tokens of the sequence) in calls of `chunk` tokens
        (0: one call; the last call takes what is left) and return the last position's FP32 logits
        `[B, 1, vocab]` (every call runs the head on its last position only) and, for each output named in
        `collect`, its values for every fed position (the calls' values joined along axis 1). Equal to one
        call up to summation order (tests/test_prefill.py); the time of all calls is `last_s`."""
        check_chunk(chunk)
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if not input_ids.shape[1]:
            raise ValueError("prefill: no prompt tokens")
        if not self.stateful and chunk and chunk < input_ids.shape[1]:
            raise ValueError(f"--prefill-chunk {chunk}: a prefill-only IR has no state to carry between calls; "
                             "use 0 (one call)")
        step = chunk or input_ids.shape[1]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in collect}
        seconds = 0.0
        for start in range(0, input_ids.shape[1], step):
            logits = self(input_ids[:, start:start + step], keep=1)
            seconds += self.last_s
            for name, values in parts.items():
                values.append(self.output(name))
        self.last_s = seconds
        return logits, {name: np.concatenate(values, 1) for name, values in parts.items()}

    def output(self, name: str) -> np.ndarray:
        """A copy of the output `name` of the last call (FP32)."""
        return np.array(self.request.get_tensor(name).data, dtype=np.float32)

    def greedy(self, input_ids: np.ndarray, new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Prompt logits `[B, S, V]` and `new_tokens` greedy tokens `[B, N]` (no EOS stop).

        The prefill-only IR recomputes the whole sequence for every token (its only option)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        self.reset()
        prompt_logits = self(input_ids)
        self.timings.prefill_s.append(self.last_s)
        tokens, last, seq = [], prompt_logits[:, -1], input_ids
        for _ in range(new_tokens):
            nxt = last.argmax(-1)[:, None].astype(np.int64)
            tokens.append(nxt)
            seq = np.concatenate([seq, nxt], 1)
            last = self(nxt if self.stateful else seq, keep=1)[:, -1]
            self.timings.decode_s.append(self.last_s)
        return prompt_logits, np.concatenate(tokens, 1) if tokens else np.zeros((input_ids.shape[0], 0), np.int64)
