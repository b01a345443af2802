"""Text generation on an exported folder (`deepseek-v4-ov generate`): plain decoding (greedy or sampled) or
greedy speculative decoding with the folder's drafter (`runtime/speculative.py`).

    gen = Generator("out/v4-ov", drafter="mtp")          # drafter None: plain decoding
    result = gen.generate(gen.encode("def main():"), max_new_tokens=64)
    result.text, result.tokens_per_s, result.to_json()

The prompt goes in calls of `prefill_chunk` tokens (`OVCausalLM.prefill`; default `DEFAULT_PREFILL_CHUNK`, 0:
one call), each running the head on its last position only.

Timings: `ttft_s` is the prompt's calls plus the choice of the first token; `tokens_per_s` counts the tokens
after the first over the time after it (decode only); `tokens_per_cpu_s` the same tokens over the CPU time
this process used meanwhile (all its threads: a figure that other processes' load moves less). Decoding stops at the folder's EOS token
(generation_config.json) unless `stop_at_eos=False`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from deepseek_v4_ov.runtime.ov_lm import DEFAULT_PREFILL_CHUNK, F32_CONFIG, OVCausalLM, check_chunk
from deepseek_v4_ov.runtime.speculative import DSparkDrafter, MTPDrafter, SpeculativeStats, speculative_greedy

DRAFTERS = {"mtp": MTPDrafter, "dspark": DSparkDrafter}  # openvino_config.json's drafter kind -> its runtime
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Sampling:
    """Plain decoding's token choice: greedy (`do_sample=False`), or sampling with temperature, top-k (0: all)
    and top-p (1: all), seeded."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be > 0")
        if self.top_k < 0:
            raise ValueError(f"--top-k {self.top_k}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p {self.top_p}: must be in (0, 1]")

    def options(self) -> list[str]:
        """The sampling options set, as CLI flags (`--do-sample` first)."""
        return [flag for flag, on in (("--do-sample", self.do_sample), ("--temperature", self.temperature != 1.0),
                                      ("--top-k", self.top_k != 0), ("--top-p", self.top_p != 1.0)) if on]

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """The next token from one row of logits `[vocab]`."""
        if not self.do_sample:
            return int(logits.argmax())
        z = logits.astype(np.float64) / self.temperature
        if self.top_k:
            z[z < np.sort(z)[-min(self.top_k, z.size)]] = -np.inf
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1:
            order = np.argsort(-p, kind="stable")
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), self.top_p)) + 1]
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        return int(rng.choice(p.size, p=p))


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    tokens: list[int]
    ttft_s: float
    decode_s: float
    decode_cpu_s: float
    drafter: str | None = None
    stats: SpeculativeStats | None = None
    text: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return (len(self.tokens) - 1) / self.decode_s if len(self.tokens) > 1 and self.decode_s > 0 else float("nan")

    @property
    def tokens_per_cpu_s(self) -> float:
        return (len(self.tokens) - 1) / self.decode_cpu_s if len(self.tokens) > 1 and self.decode_cpu_s > 0 else (
            float("nan"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": self.tokens, "text": self.text, "prompt_tokens": len(self.prompt_ids),
                               "new_tokens": len(self.tokens), "ttft_s": self.ttft_s, "decode_s": self.decode_s,
                               "tokens_per_s": self.tokens_per_s, "decode_cpu_s": self.decode_cpu_s,
                               "tokens_per_cpu_s": self.tokens_per_cpu_s, "drafter": self.drafter}
        if self.stats is not None:
            s = self.stats
            key = "mtp_acceptance" if self.drafter == "mtp" else f"{self.drafter}_acceptance"
            out[key] = s.acceptance
            out[f"{self.drafter}_mean_accepted"] = s.mean_accepted
            out["speculative"] = {"steps": s.steps, "proposed": s.proposed, "accepted": s.accepted,
                                  "drafter_s": s.drafter_s, "snapshot_s": s.snapshot_s,
                                  "snapshot_saves": s.snapshot_saves, "snapshot_restores": s.snapshot_restores,
                                  "snapshot_bytes": s.snapshot_bytes}
        return out


def check_request(sampling: Sampling, drafter: str | None, max_new_tokens: int) -> None:
    """What a generation request cannot combine: speculative decoding is greedy only; temperature, top-k
    and top-p need --do-sample."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: must be >= 1")
    if drafter is not None and sampling.options():
        raise ValueError(f"--{drafter}: speculative decoding is greedy only; drop {', '.join(sampling.options())}")
    if not sampling.do_sample and sampling.options():
        raise ValueError(f"{', '.join(sampling.options())} apply to sampling: pass --do-sample")


def check_prompt(prompt_ids: list[int], vocab: int) -> None:
    bad = [i for i in prompt_ids if not 0 <= i < vocab]
    if not prompt_ids or bad:
        raise ValueError(f"prompt ids: {'empty' if not prompt_ids else f'{bad[:5]} outside [0, {vocab})'}")


def parse_ids(text: str) -> list[int]:
    """`--prompt-ids`: integers separated by commas and/or spaces."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"--prompt-ids {text!r}: not a list of integers ({err})") from err
    if not ids:
        raise ValueError("--prompt-ids: no ids given")
    return ids


class Generator:
    """A compiled exported folder (target, and the drafter when `drafter` is given) with its tokenizer."""

    def __init__(self, folder: str | Path, drafter: str | None = None, device: str = "CPU",
                 config: dict | None = None, threshold: float = 0.0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        folder = Path(folder)
        check_chunk(prefill_chunk)
        record, self.vocab = self.check_folder(folder, drafter)
        self.folder, self.drafter_kind, self.prefill_chunk = folder, drafter, prefill_chunk
        config = F32_CONFIG if config is None else config
        core = ov.Core()
        self.target = OVCausalLM(folder, device, config, core)
        options = {"threshold": threshold, "drafts_per_step": record["drafts_per_step"]} if drafter == "dspark" else {}
        self.drafter = DRAFTERS[drafter](folder / record["ir"], core, device, config, **options) if drafter else None
        self.eos = self._eos(folder)
        self._tokenizer = None

    @staticmethod
    def check_folder(folder: Path, drafter: str | None) -> tuple[dict[str, Any] | None, int]:
        """Before any work: `folder` is a stateful export with the `drafter` asked for. Returns
        openvino_config.json's drafter record and the vocabulary size."""
        if not (folder / "openvino_model.xml").is_file():
            raise ValueError(f"{folder}: no openvino_model.xml (not an exported folder; see `deepseek-v4-ov export`)")
        configs = []
        for name in ("openvino_config.json", "config.json"):
            try:
                configs.append(json.loads((folder / name).read_text()))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{folder / name}: unreadable ({err})") from err
        ov_config, config = configs
        if ov_config.get("ir") != "stateful":
            raise ValueError(f"{folder}: a {ov_config.get('ir')} IR; generate needs the stateful export")
        record = ov_config.get("drafter")
        if drafter is not None and (record is None or record.get("kind") != drafter):
            has = f"its drafter is {record['kind']}" if record else "it has no drafter"
            raise ValueError(f"{folder}: no {drafter} drafter ({has}); export it with --drafter {drafter}")
        if drafter is not None and drafter not in DRAFTERS:
            raise ValueError(f"{folder}: the {drafter} drafter has no runtime in this version (known: "
                             f"{', '.join(DRAFTERS)})")
        return record, int(config["vocab_size"])

    @staticmethod
    def _eos(folder: Path) -> set[int]:
        path = folder / "generation_config.json"
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer

            if not (self.folder / "tokenizer.json").is_file() and not (self.folder / "tokenizer.model").is_file():
                raise ValueError(f"{self.folder}: no tokenizer; pass --prompt-ids")
            self._tokenizer = load_hf_tokenizer(self.folder)
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling | None = None,
                 stop_at_eos: bool = True, progress: Callable[[str], None] | None = None) -> GenerationResult:
        """`max_new_tokens` tokens after `prompt_ids` (fewer at EOS); speculative when the generator has a
        drafter (greedy only: `sampling` must be greedy)."""
        sampling = sampling or Sampling()
        check_request(sampling, self.drafter_kind, max_new_tokens)
        check_prompt(prompt_ids, self.vocab)
        ids = np.array([prompt_ids], dtype=np.int64)
        tokens: list[int] = []
        clock = {"start": time.perf_counter(), "first": 0.0}
        clock["shown"] = clock["start"]

        def commit(new: list[int]) -> bool:
            now = time.perf_counter()
            if not clock["first"]:
                clock["first"], clock["cpu"] = now, time.process_time()
            tokens.extend(new)
            if progress and len(tokens) > 1 and now - clock["shown"] >= PROGRESS_EVERY_S:
                clock["shown"] = now
                rate = (len(tokens) - 1) / (now - clock["first"])
                progress(f"  {min(len(tokens), max_new_tokens)}/{max_new_tokens} tokens, {rate:.1f} tokens/s")
            return stop_at_eos and any(t in self.eos for t in new)

        stats = None
        if self.drafter is not None:
            _, stats = speculative_greedy(self.target, self.drafter, ids, max_new_tokens, commit, self.prefill_chunk)
        else:
            rng = np.random.default_rng(sampling.seed)
            self.target.reset()
            logits = self.target.prefill(ids, self.prefill_chunk)[0][0, -1]
            while not commit([sampling.pick(logits, rng)]) and len(tokens) < max_new_tokens:
                logits = self.target(np.array([tokens[-1:]], dtype=np.int64))[0, -1]
        end, cpu_end = time.perf_counter(), time.process_time()
        tokens = tokens[:max_new_tokens]
        if stop_at_eos:
            stop = next((k for k, t in enumerate(tokens) if t in self.eos), None)
            tokens = tokens if stop is None else tokens[: stop + 1]
        return GenerationResult(list(prompt_ids), tokens, clock["first"] - clock["start"], end - clock["first"],
                                cpu_end - clock["cpu"], self.drafter_kind, stats)


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
