"""Running an exported IR directly through `openvino.Core`: prefill, decode, greedy, with timings.

The stateful IR keeps every cache tensor as an OpenVINO state, so a sequence is: `reset()`, one call with
the prompt, then one call per new token. Inputs are fed by name as optimum-intel and GenAI do:
`input_ids`, `attention_mask` (past + current length), `position_ids`, `beam_idx`; whichever the IR has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
"""Exact FP32 execution; the CPU plugin otherwise picks bf16 on CPUs that support it."""


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


class OVCausalLM:
    """A compiled IR (stateful or prefill-only) with the calls the parity suite and benchmarks need."""

    def __init__(self, model: ov.Model | str | Path, device: str = "CPU", config: dict | None = None,
                 core: ov.Core | None = None) -> None:
        core = core or ov.Core()
        model = read_ir(model, core)
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

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed new tokens `[B, S]`; return FP32 logits `[B, S, vocab]` (stateful: continues the sequence)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        total = self.past + seq if self.stateful else seq
        feed = {"input_ids": input_ids}
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
            last = self(nxt if self.stateful else seq)[:, -1]
            self.timings.decode_s.append(self.last_s)
        return prompt_logits, np.concatenate(tokens, 1) if tokens else np.zeros((input_ids.shape[0], 0), np.int64)
