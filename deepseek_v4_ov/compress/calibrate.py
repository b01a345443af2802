"""Data-aware 4-bit compression, streamed piece by piece: `export --dataset D [--num-samples N] [--awq]
[--scale-estimation]` (optimum-cli's names) runs NNCF's data-aware algorithms (AWQ, scale estimation) on
each piece of the export with that piece's own activations on the calibration samples.

    dataset   `corpus`: the trained toys' own training corpus (the standard-library files that
              deepseek_v4_ov/toys/data/corpus.json lists as training files, read from this interpreter's standard library;
              never the held-out text the parity suite measures on); or a file: `.txt` (one text) or `.jsonl`
              (one JSON object with a "text" field per line), for real models. Encoded with SRC's tokenizer.
    samples   `num_samples` windows of SAMPLE_TOKENS tokens, evenly spaced over the encoded text (one NNCF
              dataset item each: one prefill from an empty cache; NNCF resets a stateful piece's states
              before every item)

Streaming (`Calibration`): the target's pieces are converted in order (embed, layers, head). Each is bound in
FP32, compressed by NNCF with the samples' inputs of that piece as its dataset, then compiled (FP32 hint) and
run on the samples: its outputs (`streams`, `positions`, `state_init_guard`, ...) are the next piece's inputs
of the same names. So piece k is calibrated on what the compressed pieces before it produce, as the IR runs.
Held in memory: the samples' activations at one piece boundary (`num_samples` x SAMPLE_TOKENS x hc_mult x
hidden f32: 2 GB for 128 x 256 tokens at V4-Flash's width) and one piece in FP32: its routed experts are
bound whole, not chunk by chunk as in the data-free export (`compress/weights.py`), because NNCF runs the
piece to collect the experts' inputs (one layer of V4-Flash: 25.8 GB). The drafter's pieces are compressed
data-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov

BUILTIN = "corpus"
SAMPLE_TOKENS = 256  # past the toys' sliding window (64) and one ratio-128 compression boundary
DEFAULT_SAMPLES = 32
CHARS_PER_TOKEN = 16  # characters encoded per wanted token: far above any tokenizer's ratio (the toys' ~2)
TEXT_SUFFIXES = (".txt", ".jsonl")


def check_dataset(dataset: str) -> None:
    """Raise ValueError naming `--dataset` when the calibration input cannot be used (SRC's tokenizer is
    checked with SRC)."""
    if dataset == BUILTIN:
        return
    path = Path(dataset)
    if not path.is_file():
        raise ValueError(f"--dataset {dataset}: no such file (give {BUILTIN!r}, the toys' training corpus, or a "
                         f"{'/'.join(TEXT_SUFFIXES)} file)")
    if path.suffix not in TEXT_SUFFIXES:
        raise ValueError(f"--dataset {dataset}: a {'/'.join(TEXT_SUFFIXES)} file, not {path.suffix or 'no suffix'}")


def _text(dataset: str) -> str:
    if dataset == BUILTIN:
        from deepseek_v4_ov.toys.trained import training_text

        return training_text()
    path = Path(dataset)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--dataset {dataset}: not UTF-8 text ({err})") from err
    if path.suffix == ".txt":
        return raw
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"--dataset {dataset}: line {n} is not a JSON object with a \"text\" field") from err
    return "\n".join(texts)


def samples(dataset: str, src: Path, count: int) -> list[np.ndarray]:
    """`count` windows `[1, SAMPLE_TOKENS]` (int64) of `dataset`'s text encoded with SRC's tokenizer: the
    text cut into `count` equal parts, each window the first tokens of its part (at most CHARS_PER_TOKEN x
    SAMPLE_TOKENS characters of it encoded); ValueError naming `--dataset` when a part is too short."""
    from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer

    text, tokenizer = _text(dataset), load_hf_tokenizer(src)
    step = len(text) // count
    out = []
    for i in range(count):
        part = text[i * step : min((i + 1) * step, i * step + CHARS_PER_TOKEN * SAMPLE_TOKENS)]
        ids = tokenizer(part, verbose=False, add_special_tokens=False)["input_ids"][:SAMPLE_TOKENS]
        if len(ids) < SAMPLE_TOKENS:
            raise ValueError(f"--dataset {dataset}: {len(text):,} characters are too few for --num-samples "
                             f"{count} windows of {SAMPLE_TOKENS} tokens (part {i + 1} gives {len(ids)} tokens)")
        out.append(np.array([ids], dtype=np.int64))
    return out


class Calibration:
    """The samples' values at the current piece boundary, by port name; `compress` one piece, then `advance`."""

    def __init__(self, windows: list[np.ndarray]) -> None:
        self.links = [{"input_ids": ids, "attention_mask": np.ones_like(ids),
                       "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                       "beam_idx": np.zeros(1, dtype=np.int32)} for ids in windows]

    def _inputs(self, ov_model: ov.Model) -> list[dict[str, np.ndarray]]:
        names = [port.get_any_name() for port in ov_model.inputs]
        missing = [n for n in names if n not in self.links[0]]
        if missing:
            raise ValueError(f"calibration: the piece reads {missing}, which no earlier piece produced")
        return [{n: link[n] for n in names} for link in self.links]

    def compress(self, ov_model: ov.Model, compression) -> None:
        """Compress the FP32-bound piece `ov_model` in place with its inputs on the samples as NNCF's dataset,
        then run the compressed piece on them (`advance`)."""
        from deepseek_v4_ov.compress.policy import compress_with

        compress_with(ov_model, compression, dataset=self._inputs(ov_model))
        self.advance(ov_model)

    def advance(self, ov_model: ov.Model) -> None:
        """Run `ov_model` (FP32 hint, a fresh state per sample) and keep its outputs as the next inputs; not
        the head (the last piece: its logits feed nothing)."""
        if any("logits" in port.get_names() for port in ov_model.outputs):
            return

        compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # exact FP32
        for link, inputs in zip(self.links, self._inputs(ov_model)):
            out = compiled.create_infer_request().infer(inputs)
            for port, value in out.items():
                link[port.get_any_name()] = np.array(value)
