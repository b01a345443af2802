"""OpenVINO GenAI's LLMPipeline on an exported toy: text in, text out, and the same greedy tokens as the
PyTorch port (FP32 inference hint, so both sides compute in FP32).

GenAI settings this model needs (documented in the README): `ATTENTION_BACKEND="SDPA"` (its paged
attention expects standard 4-D K/V caches; V4's states are not), non-chat `generate` (chat mode trims
every state along one axis and would corrupt the window and compressor states), `apply_chat_template=False`
for raw text, `ignore_eos` to compare whole runs on random weights.
"""

import openvino as ov
import openvino_genai
import pytest
import torch

from conftest import greedy, prompt
from deepseek_v4_ov.export.pipeline import export

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    folder, model = toy("seed")
    out = tmp_path_factory.mktemp("genai") / "seed-fp32"
    export(folder, out, weight_format="fp32", log=lambda line: None)
    return out, model


def pipeline(folder):
    return openvino_genai.LLMPipeline(str(folder), "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_PRECISION_HINT="f32")


def test_genai_greedy_tokens_equal_pytorch(exported):
    folder, model = exported
    ids = prompt(300, seed=31)
    config = openvino_genai.GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True, do_sample=False)
    result = pipeline(folder).generate(ov.Tensor(ids.numpy()), config)
    assert list(result.tokens[0]) == greedy(model, ids, NEW_TOKENS)[0].tolist()


def test_genai_text_in_text_out(exported):
    folder, model = exported
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    text = "The quick brown fox jumps over the lazy dog. " * 8
    config = openvino_genai.GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True, do_sample=False,
                                             apply_chat_template=False)
    pipe = pipeline(folder)
    out = pipe.generate(text, config)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids[0, 0] == 0  # GenAI and transformers both prepend bos, as the tokenizer config says
    # decode PyTorch's tokens with GenAI's own detokenizer: random weights emit invalid UTF-8 byte runs,
    # which transformers and the OpenVINO detokenizer render with different replacement characters
    expected = pipe.get_tokenizer().decode(greedy(model, ids, NEW_TOKENS)[0].tolist())
    assert isinstance(out, str) and out == expected
    assert pipe.generate(text, config) == out  # a second call starts from fresh state
