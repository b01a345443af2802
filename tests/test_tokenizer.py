"""The toys' own byte-level BPE tokenizer: determinism, vocabulary bounds, special ids, round trips, offline
loading from a toy folder, and OpenVINO tokenizer/detokenizer parity with transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepseek_v4_ov.checkpoint.tokenizer import BOS_TOKEN, EOS_TOKEN
from deepseek_v4_ov.export.tokenizer import (
    OV_DETOKENIZER_XML,
    OV_TOKENIZER_XML,
    PARITY_TEXTS,
    check_ov_parity,
    convert_tokenizer,
)
from deepseek_v4_ov.toys.tokenizer import build_tokenizer, write_toy_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = (*PARITY_TEXTS, "", " ", "a", "\x00\x7f control bytes \x1b[0m", "emoji 👩‍🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t512"
    write_toy_tokenizer(path, 512)
    return path


@pytest.fixture(scope="module")
def hf_tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def ov_folder(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_ov")
    convert_tokenizer(folder, out)  # runs the PARITY_TEXTS check itself
    return out


def test_two_builds_are_identical(tmp_path, folder):
    write_toy_tokenizer(tmp_path / "again", 512)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


@pytest.mark.parametrize("vocab_size", [258, 512, 1000, 129280])
def test_vocabulary_is_exactly_vocab_size(vocab_size):
    tok = build_tokenizer(vocab_size)
    vocab = tok.get_vocab(with_added_tokens=True)
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    assert sorted(vocab.values()) == list(range(vocab_size))
    assert vocab[BOS_TOKEN] == 0 and vocab[EOS_TOKEN] == 1


def test_too_small_vocabulary_is_refused():
    with pytest.raises(ValueError):
        build_tokenizer(257)


def test_special_ids_and_round_trip(hf_tok):
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 1)
    assert len(hf_tok) == 512
    for text in TEXTS:
        ids = hf_tok(text)["input_ids"]
        assert ids[0] == 0 and 1 not in ids and max(ids) < 512
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
        assert hf_tok.decode(ids, skip_special_tokens=True) == text
        assert hf_tok.decode(ids) == BOS_TOKEN + text
    # The learned merges compress the corpus's language: well under one token per byte.
    sentence = "The old man mended the clocks and watched the river."
    assert len(hf_tok(sentence, add_special_tokens=False)["input_ids"]) < len(sentence) / 2


def test_chat_template(hf_tok):
    text = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                      tokenize=False)
    assert text == f"{BOS_TOKEN}User: hi\n\nAssistant:"


def test_toy_folder_loads_offline_in_a_fresh_process(toy):
    """AutoTokenizer reads the toy's config.json (model_type deepseek_v4), hence trust_remote_code;
    PreTrainedTokenizerFast reads only the tokenizer files."""
    folder, model = toy("seed")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    code = (
        "import sys; from transformers import AutoTokenizer, PreTrainedTokenizerFast\n"
        "for t in (AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True),\n"
        "          PreTrainedTokenizerFast.from_pretrained(sys.argv[1])):\n"
        "    ids = t('Hello, river!')['input_ids']\n"
        "    print(len(t), t.bos_token_id, t.eos_token_id, ids[0], t.decode(ids, skip_special_tokens=True))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    want = f"{model.config.vocab_size} 0 1 0 Hello, river!"
    assert result.stdout.splitlines() == [want, want]


def test_openvino_parity(folder, ov_folder, hf_tok):
    import openvino as ov

    assert check_ov_parity(folder, ov_folder, TEXTS) == []
    core = ov.Core()
    ov_tok = core.compile_model(str(ov_folder / OV_TOKENIZER_XML), "CPU")
    ov_detok = core.compile_model(str(ov_folder / OV_DETOKENIZER_XML), "CPU")
    # A batch of different lengths: padded with pad id 1, the attention mask marks the real tokens.
    out = ov_tok(list(TEXTS[:3]))
    for row, mask, text in zip(out["input_ids"], out["attention_mask"], TEXTS[:3]):
        assert row[mask.astype(bool)].tolist() == hf_tok(text)["input_ids"]
    # Any ids a random model may emit, special ones included, decode the same way on both sides.
    ids = np.random.default_rng(0).integers(0, 512, size=(4, 40))
    got = ov_detok(ids)["string_output"]
    assert list(got) == [hf_tok.decode(row.tolist(), skip_special_tokens=True) for row in ids]


def test_openvino_genai_tokenizer(folder, ov_folder, hf_tok):
    import openvino_genai

    tok = openvino_genai.Tokenizer(str(ov_folder))
    assert (tok.get_bos_token_id(), tok.get_eos_token_id(), tok.get_pad_token_id()) == (0, 1, 1)
    for text in TEXTS[:5]:
        assert tok.encode(text).input_ids.data.tolist()[0] == hf_tok(text)["input_ids"]
        plain = tok.encode(text, add_special_tokens=False).input_ids.data.tolist()[0]
        assert plain == hf_tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(plain) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chat == f"{BOS_TOKEN}User: hi\n\nAssistant:"
