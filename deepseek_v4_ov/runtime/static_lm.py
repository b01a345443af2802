"""The static-shape stateful IR (convert/static.py: NPU-style, one token per call, fixed-size caches) behind
`OVCausalLM`'s interface."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openvino as ov

from deepseek_v4_ov.convert.static import max_len_of
from deepseek_v4_ov.runtime.ov_lm import OVCausalLM, read_ir


class StaticCacheLM(OVCausalLM):
    """The static stateful IR behind `OVCausalLM`'s interface: a prompt `[1, S]` is fed one token per
    call (the logits of every position come back, or of the last `keep`), decode is one call per token; `max_len` bounds
    prompt + response."""

    def __init__(self, model: ov.Model | str | Path, device: str = "CPU", config: dict | None = None,
                 core: ov.Core | None = None) -> None:
        core = core or ov.Core()
        model = read_ir(model, core)
        self.max_len = max_len_of(model)
        super().__init__(model, device, config, core)

    def __call__(self, input_ids: np.ndarray, keep: int | None = None) -> np.ndarray:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        if batch != 1:
            raise ValueError(f"the static-shape model runs batch 1, got {batch}")
        if self.past + seq > self.max_len:
            raise ValueError(f"{self.past} + {seq} tokens exceed the static model's capacity max_len={self.max_len}")
        out, start = [], time.perf_counter()
        for t in range(seq):
            self.request.infer({"input_ids": input_ids[:, t : t + 1]})
            out.append(np.array(self.request.get_tensor("logits").data, dtype=np.float32))
        self.last_s = time.perf_counter() - start
        self.past += seq
        return np.concatenate(out[-keep:] if keep else out, 1)
