"""A checkpoint folder's tokenizer, as transformers loads it, and DeepSeek's special tokens.

Loading from a toy folder: transformers 5.5's `AutoTokenizer` always reads config.json first; model_type
`deepseek_v4` is not native there, so it needs `trust_remote_code=True` (as the real release would), else
its generic-config fallback fails on `rope_scaling`. `load_hf_tokenizer` does that; a folder holding only
the tokenizer, or `PreTrainedTokenizerFast.from_pretrained(folder)`, needs nothing.
"""

from __future__ import annotations

from pathlib import Path

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"


def load_hf_tokenizer(folder: Path):
    """The transformers tokenizer of `folder` (a toy folder's config.json needs the bundled code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
