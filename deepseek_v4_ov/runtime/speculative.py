"""Greedy speculative decoding on a stateful target IR exported with a drafter (`export --drafter`).

One step: the drafter proposes K tokens after the last committed one (the bonus), and one target call
verifies them. Greedy acceptance: the longest prefix of drafts equal to the target's own argmax, plus the
target's token after it, so the output is token for token plain greedy decoding.

Target states (sliding windows, open compression windows, compressed entries, indexer buffers) cannot be
cut back by position, so rejected drafts are undone by a snapshot: `StateSnapshot` copies every OpenVINO
state of the target while the target has absorbed only committed tokens. After a call whose drafts were
all accepted the target is again at a committed position (the snapshot is retaken before the next call);
after a rejection the snapshot is restored and the committed tokens the target has not absorbed yet are fed
again, filled up with new drafts, in the next call:

    call feed = committed[absorbed:] + drafts[: K + 1 - len(committed[absorbed:])]   (committed[-1]: the bonus)

Every call after the prompt has K + 1 tokens: after a full acceptance one pending token (the bonus) and K
drafts; after a rejection at draft n, n + 2 pending tokens and K - 1 - n drafts (for MTP-1: the bonus and
the correction, no draft). A call whose length differs from the previous call's re-prepares every node of
OpenVINO's CPU plugin, also on another infer request of the same compiled model (benchmarks/speculative.py:
alternating lengths 2 and 3 cost ~2x a call of either length), so a constant length beats verifying more
tokens per call.

The drafter only ever sees committed positions (the target's `drafter_taps` of a committed position t and
the committed token t+1), so it is never rolled back. `Drafter` is what a loop needs of one: `MTPDrafter`
(the MTP block, one draft per step) and `DSparkDrafter` (a DSpark block, K drafts per step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import openvino as ov

from deepseek_v4_ov.convert.stateful import TAPS
from deepseek_v4_ov.runtime.ov_lm import DEFAULT_PREFILL_CHUNK, OVCausalLM


class Drafter(Protocol):
    """Proposes `drafts_per_step` tokens from committed positions only."""

    drafts_per_step: int

    def reset(self) -> None:
        """Start of a sequence."""

    def propose(self, taps: np.ndarray, next_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absorb newly committed positions: the target's taps at positions t `[1, n, ...]` and the committed
        tokens t+1 `[1, n]` (the last is the bonus). Return the drafts for the positions after the bonus
        `[1, K]` (int64) and their confidences `[1, K]` (the drafter's probability of each)."""


class CompiledDrafter:
    """A stateful drafter IR (openvino_drafter_model.xml) compiled with one infer request: what the drafters
    share. `run(taps, input_ids)` feeds it the target's taps and token ids."""

    drafts_per_step: int

    def __init__(self, model: ov.Model | str | Path, core: ov.Core, device: str = "CPU",
                 config: dict | None = None) -> None:
        model = core.read_model(model) if not isinstance(model, ov.Model) else model
        self.request = core.compile_model(model, device, config or {}).create_infer_request()
        self.beam = np.zeros(1, dtype=np.int32)

    def reset(self) -> None:
        self.request.reset_state()

    def run(self, taps: np.ndarray, input_ids: np.ndarray) -> None:
        self.request.infer({"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                            TAPS: np.ascontiguousarray(taps), "beam_idx": self.beam})


class MTPDrafter(CompiledDrafter):
    """The exported MTP block: at t, the target's final streams and token t+1 predict token t+2; its own
    sliding-window state advances with every committed position."""

    drafts_per_step = 1

    def logits(self, taps: np.ndarray, next_ids: np.ndarray) -> np.ndarray:
        """FP32 logits `[1, n, vocab]` of token t+2 for each fed position t."""
        self.run(taps, next_ids)
        return self.request.get_tensor("logits").data

    def propose(self, taps: np.ndarray, next_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last = self.logits(taps, next_ids)[:, -1].astype(np.float64)
        draft = last.argmax(-1)
        p = np.exp(last - last.max(-1, keepdims=True))
        return draft[:, None].astype(np.int64), (p.max(-1) / p.sum(-1))[:, None]


def check_threshold(threshold: float) -> None:
    """A DSpark confidence threshold is a probability below 1 (1 would never verify a draft)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"--confidence-threshold {threshold}: must be in [0, 1)")


class DSparkDrafter(CompiledDrafter):
    """The exported DSpark stages: one call absorbs the taps of the newly committed positions into the
    stages' context rings and drafts K tokens after the bonus (the last of `next_ids`). Drafts past the
    point where the running product of the confidences (the drafter's estimate that every draft so far is
    accepted) falls below `threshold` are not proposed (0, the default: all K, so every verify call has the
    same length, which the CPU plugin runs fastest)."""

    def __init__(self, model: ov.Model | str | Path, core: ov.Core, device: str = "CPU",
                 config: dict | None = None, threshold: float = 0.0, drafts_per_step: int = 5) -> None:
        check_threshold(threshold)
        super().__init__(model, core, device, config)
        self.drafts_per_step = drafts_per_step  # the block size (openvino_config.json's drafter record)
        self.threshold = threshold

    def propose(self, taps: np.ndarray, next_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.run(taps, next_ids[:, -1:])
        drafts = np.array(self.request.get_tensor("draft_ids").data, dtype=np.int64)
        confidence = np.array(self.request.get_tensor("confidence").data, dtype=np.float64)
        keep = int(np.argmin(np.append(np.cumprod(confidence[0]) >= self.threshold, False)))
        return drafts[:, :keep], confidence[:, :keep]


class StateSnapshot:
    """Copies of every OpenVINO state of `lm`'s request (and its token count), saved and restored whole."""

    def __init__(self, lm: OVCausalLM) -> None:
        self.lm = lm
        self.states = lm.request.query_state()
        self.saved: list[np.ndarray] = []
        self.past = 0
        self.seconds = 0.0  # time spent saving and restoring
        self.saves = self.restores = 0

    def save(self) -> None:
        start = time.perf_counter()
        self.saved = [np.array(s.state.data, copy=True) for s in self.states]
        self.past = self.lm.past
        self.seconds += time.perf_counter() - start
        self.saves += 1

    def restore(self) -> None:
        start = time.perf_counter()
        for s, value in zip(self.states, self.saved, strict=True):
            s.state = ov.Tensor(value)
        self.lm.past = self.past
        self.seconds += time.perf_counter() - start
        self.restores += 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.saved)


@dataclass
class SpeculativeStats:
    steps: int = 0  # target calls after the prompt (with drafts, or re-feeding committed tokens only)
    proposed: int = 0
    accepted: int = 0
    accepted_per_step: list[int] = field(default_factory=list)  # of the calls with drafts
    snapshot_s: float = 0.0
    snapshot_saves: int = 0
    snapshot_restores: int = 0
    snapshot_bytes: int = 0  # size of the last snapshot
    drafter_s: float = 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def mean_accepted(self) -> float:
        return float(np.mean(self.accepted_per_step)) if self.accepted_per_step else float("nan")


def check_batch(input_ids: np.ndarray) -> None:
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"speculative decoding runs one sequence (input ids [1, S]); got shape "
                         f"{list(input_ids.shape)} (rows accept different numbers of drafts, so a batch cannot "
                         "share one target call; run the rows one at a time)")


def speculative_greedy(target: OVCausalLM, drafter: Drafter, input_ids: np.ndarray, new_tokens: int,
                       on_tokens=None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> tuple[list[int], SpeculativeStats]:
    """`new_tokens` greedy tokens after `input_ids` `[1, S]` (equal to plain greedy decoding), drafted by
    `drafter` and verified by `target` (a stateful IR with the `drafter_taps` output): the tokens and the
    statistics. `on_tokens(list)` is called with the tokens of each step as they are committed (the first
    call holds the prompt's token); returning True stops (e.g. at EOS). The prompt goes in calls of
    `prefill_chunk` tokens (`OVCausalLM.prefill`); the verify calls return the logits of all their positions."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    check_batch(input_ids)
    if TAPS not in target.outputs:
        raise ValueError(f"the target IR has no `{TAPS}` output: export it with --drafter")
    stats = SpeculativeStats()
    snapshot = StateSnapshot(target)
    target.reset()
    drafter.reset()
    committed = [int(t) for t in input_ids[0]]
    logits, outputs = target.prefill(input_ids, prefill_chunk, collect=(TAPS,))
    taps, base = outputs[TAPS], 0  # taps of positions base.. of the last call (here: the whole prompt)
    committed.append(int(logits[0, -1].argmax()))
    produced, absorbed, drafted, clean = 1, len(input_ids[0]), 0, True
    stop = bool(on_tokens and on_tokens(committed[-1:]))
    width = drafter.drafts_per_step + 1  # tokens per target call
    while produced < new_tokens and not stop:
        pending = committed[absorbed:]
        drafts: list[int] = []
        if len(pending) < width:  # the drafter absorbs positions drafted.. (all committed, bonus last)
            start, end = time.perf_counter(), len(committed) - 1
            proposed, _ = drafter.propose(taps[:, drafted - base: end - base], np.array([committed[drafted + 1:]]))
            drafts = [int(d) for d in proposed[0, : width - len(pending)]]
            stats.drafter_s += time.perf_counter() - start
            drafted = end
        if clean:
            snapshot.save()
        else:
            snapshot.restore()
        feed = pending + drafts
        logits = target(np.array([feed], dtype=np.int64))
        taps, base = target.output(TAPS), absorbed
        picks = logits[0, len(pending) - 1:].argmax(-1)
        n = next((i for i, (d, p) in enumerate(zip(drafts, picks)) if d != p), len(drafts))
        new = drafts[:n] + [int(picks[n])]
        committed += new
        stats.steps += 1
        stats.proposed += len(drafts)
        stats.accepted += n
        if drafts:
            stats.accepted_per_step.append(n)
        clean = n == len(drafts)
        if clean:  # every fed token is committed: the target is at a committed position
            absorbed += len(feed)
        produced += len(new)
        stop = bool(on_tokens and on_tokens(new))
    stats.snapshot_s, stats.snapshot_saves, stats.snapshot_restores = (
        snapshot.seconds, snapshot.saves, snapshot.restores)
    stats.snapshot_bytes = snapshot.nbytes
    return committed[len(input_ids[0]):][:new_tokens], stats
