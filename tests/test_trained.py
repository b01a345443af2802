"""The trained toys (`deepseek_v4_ov/toys/data`, written by `training/train_toys.py`): shipped in the release layout, really trained,
and the parity suite / GenAI on them.

Held-out text is `deepseek_v4_ov/toys/data/heldout.txt`: standard-library files never trained on. Tolerances:
- "really trained": perplexity on held-out source at most 1/5 of a unigram model fitted on that very text
  (the unigram's best possible score there). Measured 9.79 vs 139.7 (14x) on 4x256 tokens; a model that
  learned nothing beyond token frequencies would sit near 1x, so 5x cannot pass by accident.
- FP32 IR vs PyTorch: perplexity within 0.1% (the issue's bound; measured 0.000%: both compute in FP32) and
  every greedy token equal (logits within 1e-4, as in test_parity).
- INT8: perplexity within +1%; INT4 (g32): within +10% (the issue's bounds; measured +0.05% / +2.65% on 8x256).
- A greedy disagreement between an IR and PyTorch must sit where PyTorch's own top-1/top-2 gap is smaller than
  twice the largest logit change that format caused on the prompts: a larger gap flipping would be a bug,
  not rounding.
- MTP (trained-full): top-1 accuracy on token t+2 at least twice the rate of always guessing the most
  frequent token (measured 0.31 vs ~0.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino_genai
import pytest
import torch

from deepseek_v4_ov.eval import parity
from deepseek_v4_ov.eval import text_eval
from deepseek_v4_ov.cli import main as cli_main
from deepseek_v4_ov.checkpoint.release import load_model
from deepseek_v4_ov.export.pipeline import export
from deepseek_v4_ov.checkpoint.release import decode_release, encode_release, storage_format
from deepseek_v4_ov.export.tokenizer import check_ov_parity
from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer
import train_toys as train
from deepseek_v4_ov.toys.presets import PRESETS
from deepseek_v4_ov.toys.trained import (
    FOLDERS,
    DATA,
    build_model,
    heldout_windows,
    unigram_perplexity,
    write_trained_toy,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained") / "trained"
    write_trained_toy(folder, "trained", "fp8")
    return folder


@pytest.fixture(scope="module")
def trained_ir(trained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained-ir") / "fp32"
    export(trained_dir, out, weight_format="fp32", log=lambda line: None)
    return out


# ------------------------------------------------------------------------------------------------------
# Shipping: release layout, sizes, corpus split, QAT rounding == stored rounding
# ------------------------------------------------------------------------------------------------------
def test_shipped_files_fit_the_size_budget():
    sizes = {p.relative_to(DATA).as_posix(): p.stat().st_size for p in DATA.rglob("*") if p.is_file()}
    assert max(sizes.values()) < 10e6, sizes  # no generated blob over 10 MB
    assert sum(sizes.values()) < 5e6, sum(sizes.values())  # "a few MB in the repository"


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_trained_presets_are_stored_as_the_release_stores_them(name, tmp_path):
    assert cli_main(["toy", str(tmp_path / "fp8"), "--preset", name, "--format", "fp8"]) == 0
    assert storage_format(tmp_path / "fp8") == "fp8"
    header = json.loads((tmp_path / "fp8" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "layers.0.ffn.experts.0.w1.scale" in header and "layers.0.attn.wq_a.scale" in header
    fp8 = load_model(tmp_path / "fp8").float().eval()
    model, stored = build_model(name)
    assert stored["layers.0.ffn.experts.0.w1.weight"].dtype == torch.int8  # e2m1 codes, two per byte
    assert stored["layers.0.attn.wq_a.weight"].dtype == torch.float8_e4m3fn
    assert stored["layers.0.attn.wq_a.scale"].dtype == torch.float8_e8m0fnu
    ids = heldout_windows(load_hf_tokenizer(tmp_path / "fp8"), 1, 140)[0]
    with torch.no_grad():
        assert torch.equal(fp8(ids).logits, model(ids).logits)  # same tensors through the release reader
    assert PRESETS[name]["vocab_size"] == len(load_hf_tokenizer(tmp_path / "fp8"))


def test_parity_cli_names_a_bad_prompt_length(tmp_path, capsys):
    assert cli_main(["parity", "--workdir", str(tmp_path), "--prompt-length", "1"]) == 2
    assert "--prompt-length 1" in capsys.readouterr().err


def test_toy_cli_refuses_a_seed_for_trained_presets(tmp_path, capsys):
    assert cli_main(["toy", str(tmp_path / "x"), "--preset", "trained", "--seed", "3"]) == 2
    assert "--seed 3" in capsys.readouterr().err


def test_qat_rounding_is_the_stored_rounding():
    """The fake quantiser used during training gives exactly `official.encode_release`'s values."""
    g = torch.Generator().manual_seed(0)
    for name, shape in (("layers.1.ffn.experts.3.w2.weight", (128, 64)), ("layers.0.attn.wq_b.weight", (130, 200)),
                        ("embed.weight", (64, 32))):
        w = torch.randn(shape, generator=g) * torch.logspace(-3, 1, shape[1])  # columns of many magnitudes
        assert torch.equal(train.fake_release(name, w), decode_release(name, encode_release(name, w)).float()), name


def test_corpus_split_is_deterministic_and_disjoint():
    corpus = json.loads((DATA / "corpus.json").read_text())
    assert not set(corpus["train_files"]) & set(corpus["heldout_files"])
    assert all(train.is_held_out(f) for f in corpus["heldout_files"])
    assert not any(train.is_held_out(f) for f in corpus["train_files"])
    assert set(corpus["heldout_sample_files"]) <= set(corpus["heldout_files"])
    text = (DATA / "heldout.txt").read_text()
    assert all(f"Lib/{f} " in text for f in corpus["heldout_sample_files"])


# ------------------------------------------------------------------------------------------------------
# Really trained; MTP
# ------------------------------------------------------------------------------------------------------
def test_trained_beats_a_unigram_fitted_on_the_held_out_text(trained_dir):
    model = load_model(trained_dir).float().eval()
    windows = heldout_windows(load_hf_tokenizer(trained_dir), 4, 256)
    with torch.no_grad():
        ppl = text_eval.perplexity([model(w).logits.numpy() for w in windows], windows)
    unigram = unigram_perplexity([t for w in windows for t in w[0].tolist()])
    assert ppl * 5 < unigram, (ppl, unigram)


def test_mtp_block_predicts_two_ahead():
    model, _ = build_model("trained-full")
    from transformers import PreTrainedTokenizerFast

    from deepseek_v4_ov.toys.trained import TOKENIZER_JSON

    windows = heldout_windows(PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_JSON)), 4, 256)
    acc = text_eval.mtp_accuracy(model, windows)
    tokens = [t for w in windows for t in w[0, 2:].tolist()]
    most_frequent = max(np.bincount(tokens)) / len(tokens)
    assert acc["mtp_top1_t+2"] > 2 * most_frequent, (acc, most_frequent)
    assert text_eval.mtp_accuracy(build_model("trained")[0], windows) is None  # no MTP block


# ------------------------------------------------------------------------------------------------------
# Parity on held-out text (CPU stateful and the static NPU-style model)
# ------------------------------------------------------------------------------------------------------
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def trained_parity(trained_ir, tmp_path_factory):
    """Stateful fp32/int8/int4 on CPU and the static NPU-style model in fp32 (its compressed formats are in
    the opt-in acceptance run, for time), on 2 held-out prompts of 160 tokens (past the window and a
    ratio-128 boundary). The fp32 IR exported for the GenAI tests is reused."""
    import shutil

    work = tmp_path_factory.mktemp("trained-parity")
    shutil.copytree(trained_ir, work / "fp32-stateful")
    kw = dict(prompts=2, new_tokens=NEW_TOKENS, prompt_source="heldout", prompt_length=160, log=lambda line: None)
    cells, meta = parity.run(None, work, ["CPU"], ("fp32", "int8", "int4"), **kw)
    cells += parity.run(None, work, [parity.STATIC], ("fp32",), **kw)[0]
    return {(c.weight_format, c.device): c for c in cells}, meta


@pytest.mark.parametrize("device", ["CPU", parity.STATIC])
def test_fp32_perplexity_and_tokens_equal_pytorch(trained_parity, device):
    cell = trained_parity[0][("fp32", device)]
    assert cell.status == "ok", cell.error
    assert abs(cell.ppl_delta) <= 1e-3 and cell.max_abs <= 1e-4
    assert cell.agreeing_prefix == [NEW_TOKENS] * 2 and cell.disagree_margin == [None, None]


@pytest.mark.parametrize("fmt,bound,device", [("int8", 0.01, "CPU"), ("int4", 0.10, "CPU")])
def test_compressed_perplexity_within_bounds_and_flips_only_near_ties(trained_parity, fmt, bound, device):
    cell = trained_parity[0][(fmt, device)]
    assert cell.status == "ok", cell.error
    assert cell.ppl_delta <= bound, cell.ppl
    assert cell.mean_abs > 0  # really compressed
    for margin in cell.disagree_margin:
        assert margin is None or margin < 2 * cell.max_abs, (cell.disagree_margin, cell.max_abs)


def test_report_has_heldout_perplexity(trained_parity, tmp_path):
    cells, meta = trained_parity
    assert meta["prompt_source"] == "heldout" and meta["pytorch_ppl"] < 20
    _, md = parity.write_reports(list(cells.values()), meta, tmp_path / "r.json")
    text = md.read_text()
    assert "PyTorch perplexity" in text and "| KL mean | KL p99 | same top1 | ppl | dppl |" in text and "margin@diff" in text


# ------------------------------------------------------------------------------------------------------
# Tokenizer, GenAI chat, loading without spurious warnings
# ------------------------------------------------------------------------------------------------------
CODE_TEXTS = ("def f(x):\n    return x + 1\n", "class A(object):\n    \"\"\"Doc.\"\"\"\n\n    pass\n",
              "if __name__ == '__main__':\n\tmain()  # tab", "s = f'{a!r:>10}' + \"ü\" * 3")


def test_trained_tokenizer_converts_to_openvino(trained_ir, trained_dir):
    assert check_ov_parity(trained_dir, trained_ir, CODE_TEXTS) == []


def _pipe(folder):
    return openvino_genai.LLMPipeline(str(folder), "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_PRECISION_HINT="f32")


USER_TURNS = (
    "What does this do?\ndef read_config(path):\n    with open(path) as f:\n        data = json.load(f)\n"
    "    if 'name' not in data:\n        raise ValueError('no name')\n    return data\n",
    "And this one?\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n",
    "Now this:\nfor key, value in sorted(table.items()):\n    print(key, value)\n",
)


def test_genai_chat_equals_a_fresh_pipeline(trained_ir):
    """Multi-turn chat (generate with a ChatHistory, and start_chat) gives what a fresh pipeline gives for the
    same history, across the 64-token window and the ratio-128 boundaries; also when the history is edited
    (the cached tokens no longer a prefix)."""
    config = openvino_genai.GenerationConfig(max_new_tokens=24, do_sample=False)
    chat, history = _pipe(trained_ir), openvino_genai.ChatHistory()
    legacy = _pipe(trained_ir)
    legacy.start_chat()
    for user in USER_TURNS:
        history.append({"role": "user", "content": user})
        answer = chat.generate(history, config).texts[0]
        assert answer == _pipe(trained_ir).generate(history, config).texts[0]
        assert legacy.generate(user, config) == answer
        history.append({"role": "assistant", "content": answer})
    legacy.finish_chat()
    tokenizer = chat.get_tokenizer()
    prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True)
    assert tokenizer.encode(prompt, add_special_tokens=False).input_ids.shape[1] > 256  # past 2 ratio-128 windows
    edited = openvino_genai.ChatHistory()
    edited.append({"role": "user", "content": USER_TURNS[0]})
    edited.append({"role": "assistant", "content": "x = 1"})
    edited.append({"role": "user", "content": USER_TURNS[1]})
    assert chat.generate(edited, config).texts[0] == _pipe(trained_ir).generate(edited, config).texts[0]


def test_loading_prints_no_spurious_warnings(trained_ir):
    code = ("import sys; from deepseek_v4_ov.runtime.ov_load import load_ov_causal_lm; "
            f"m = load_ov_causal_lm({str(trained_ir)!r}); print('loaded', m.config.model_type)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.strip() == "loaded deepseek_v4", output


# ------------------------------------------------------------------------------------------------------
# Opt-in: the acceptance run of issues #13/#22 (8 held-out prompts of 512 tokens, 32 new tokens), ~10 min on 2
# cores; `benchmarks/quality.py` prints the same figures for every variant
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    work = tmp_path_factory.mktemp("acceptance")
    cells, meta = parity.run(None, work, ["CPU", parity.STATIC], ("fp32", "int8", "int4", "mxfp4"), prompts=8,
                             new_tokens=32, prompt_source="heldout", prompt_length=512)
    return {(c.weight_format, c.device): c for c in cells}


@pytest.mark.slow
def test_acceptance_perplexity(acceptance):
    for device in ("CPU", parity.STATIC):
        assert abs(acceptance[("fp32", device)].ppl_delta) <= 1e-3
        assert acceptance[("fp32", device)].agreeing_prefix == [32] * 8
        assert acceptance[("int8", device)].ppl_delta <= 0.01
        assert acceptance[("int4", device)].ppl_delta <= 0.05  # issue #22: the default INT4 within +5%
        assert acceptance[("mxfp4", device)].ppl_delta <= 0.01  # FP4 experts kept exactly, FP8 linears in INT8


@pytest.mark.slow
def test_acceptance_int8_same_top1(acceptance):
    """Issue #22: INT8 keeps the top-1 token at >= 98% of 4,096 held-out positions (the greedy prefix, which
    one flip at a near-tie ends, is reported, not asserted)."""
    assert acceptance[("int8", "CPU")].same_top1 >= 0.98
