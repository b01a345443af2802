"""The OpenVINO tokenizer and detokenizer written beside an exported IR, checked against transformers."""

from __future__ import annotations

from pathlib import Path

from deepseek_v4_ov.checkpoint.tokenizer import load_hf_tokenizer

OV_TOKENIZER_XML = "openvino_tokenizer.xml"
OV_DETOKENIZER_XML = "openvino_detokenizer.xml"


def convert_tokenizer(folder_src: Path, folder_dst: Path | None = None, check: bool = True) -> tuple[Path, Path]:
    """OpenVINO tokenizer and detokenizer for the HF tokenizer in `folder_src`, saved to `folder_dst`
    (default: the same folder) as openvino_tokenizer.xml/.bin and openvino_detokenizer.xml/.bin.

    Options: the tokenizer model is converted with its post-processor, so it adds `<｜begin▁of▁sentence｜>`
    like `hf_tok(text)`; OpenVINO GenAI's `Tokenizer.encode(..., add_special_tokens=False)` switches that
    off at run time (the converted model carries the switch). The detokenizer is converted with
    `skip_special_tokens=True`, i.e. like `hf_tok.decode(ids, skip_special_tokens=True)`, and GenAI can
    switch that at run time too. `clean_up_tokenization_spaces` is False on both sides.
    With `check`, the converted pair is compared with transformers on `PARITY_TEXTS`.
    """
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer as ov_convert

    folder_src = Path(folder_src)
    folder_dst = Path(folder_dst) if folder_dst is not None else folder_src
    folder_dst.mkdir(parents=True, exist_ok=True)
    hf_tok = load_hf_tokenizer(folder_src)
    ov_tok, ov_detok = ov_convert(hf_tok, with_detokenizer=True, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
    tok_xml, detok_xml = folder_dst / OV_TOKENIZER_XML, folder_dst / OV_DETOKENIZER_XML
    ov.save_model(ov_tok, str(tok_xml))
    ov.save_model(ov_detok, str(detok_xml))
    if check:
        problems = check_ov_parity(folder_src, folder_dst)
        if problems:
            raise RuntimeError("OpenVINO tokenizer differs from transformers:\n" + "\n".join(problems))
    return tok_xml, detok_xml


PARITY_TEXTS = (
    "The river ran past the old mill.",
    "A model of language is a machine for guessing the next word.",
    "  leading spaces, trailing spaces  ",
    "Numbers: 3.14159, 2048 and 65536!",
    "naïve café, Straße, 東京 and こんにちは; Привет, мир. 🙂",
    "unseen words: zyxwvut qqq",
    "line one\nline two\n\ttabbed",
)


def check_ov_parity(folder_src: Path, folder_ov: Path, texts: tuple[str, ...] = PARITY_TEXTS) -> list[str]:
    """Differences between the transformers tokenizer in `folder_src` and the OpenVINO pair in `folder_ov`
    on `texts`: the encoded ids (with `<｜begin▁of▁sentence｜>`) and the text decoded back from them, which
    must also equal the input. An empty list means they agree."""
    import numpy as np
    import openvino as ov

    hf_tok = load_hf_tokenizer(folder_src)
    core = ov.Core()
    ov_tok = core.compile_model(str(Path(folder_ov) / OV_TOKENIZER_XML), "CPU")
    ov_detok = core.compile_model(str(Path(folder_ov) / OV_DETOKENIZER_XML), "CPU")
    problems = []
    for text in texts:
        want = hf_tok(text)["input_ids"]
        got = ov_tok([text])["input_ids"][0].tolist()
        if got != want:
            problems.append(f"encode {text!r}: transformers {want} vs OpenVINO {got}")
        back = ov_detok(np.array([got], dtype=np.int64))["string_output"][0]
        hf_back = hf_tok.decode(want, skip_special_tokens=True)
        if back != hf_back or hf_back != text:
            problems.append(f"decode {text!r}: transformers {hf_back!r} vs OpenVINO {back!r}")
    return problems
