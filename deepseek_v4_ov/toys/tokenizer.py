"""A small byte-level BPE tokenizer of the toys' own, built locally and deterministically.

The toys have random weights and no published tokenizer, so `write_toy` gives each one this tokenizer to
let the demo run text in, text out (through transformers and through OpenVINO GenAI).

Layout of the vocabulary (exactly `vocab_size` entries, ids 0..vocab_size-1):

* 0 `<｜begin▁of▁sentence｜>` and 1 `<｜end▁of▁sentence｜>`: DeepSeek's names, matching the toys'
  `bos_token_id` 0 and `eos_token_id` 1; registered as special tokens.
* 2..257: the 256 byte symbols of the GPT-2 byte-level alphabet in byte order, so every string encodes.
* then the BPE merges learned from `CORPUS` (embedded below) by a small Python trainer: pair counts over the
  pre-tokenised words, highest count first, ties broken by the smaller (left, right) string pair, stopping
  at the vocabulary size or when no pair occurs twice. It is pure Python on fixed input, so two builds give
  byte-identical tokenizer.json files (the Rust trainer of `tokenizers` is not relied on for that).
* the rest, if the corpus runs out of merges (the `mid` preset's 129,280 entries): unreachable placeholder
  tokens `<ph_N>`. They are plain ASCII in the byte-level alphabet, so decoding one (a random model may
  sample it) gives the text `<ph_N>` in both transformers and OpenVINO; no merge produces them, so
  encoding never does.

Encoding adds `<｜begin▁of▁sentence｜>` in front (a TemplateProcessing post-processor, as DeepSeek's
tokenizer_config `add_bos_token: true`), never the end token; `add_special_tokens=False` turns it off.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from deepseek_v4_ov.checkpoint.tokenizer import BOS_TOKEN, EOS_TOKEN

SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)
PLACEHOLDER = "<ph_{}>"
MIN_VOCAB = len(SPECIAL_TOKENS) + 256
MIN_PAIR_COUNT = 2

# A plain prompt format: the toys are not chat models, this only gives GenAI's chat mode something to use.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

CORPUS = """\
The river ran past the old mill and under the stone bridge, where the children of the village liked to
stand and watch the water. In the spring it was fast and brown, and in the summer it was slow and clear,
and you could see the small fish turning in the light. An old man lived in the mill. He had been a
miller once, but the wheel had stopped turning many years ago, and now he mended clocks and radios for
anyone who brought them to his door. He said that a clock was only a river that someone had taught to
count, and the children did not understand him, but they liked the way he said it.

Every morning he opened the shutters, made a pot of tea, and sat at the long table by the window with
his tools laid out in a row: the small screwdrivers, the tweezers, the brass brushes, the glass with a
lens in it that he wore in one eye. He worked slowly. When a part was broken he made a new one, filing a
piece of metal until it fitted, and when he was done he wound the clock and listened to it for a long
time before he gave it back. People said that his clocks kept better time than new ones from the shop in
town, and perhaps that was true.

A model of language is a machine for guessing the next word. It reads the words that came before, turns
each one into a list of numbers, mixes those numbers together in many layers, and at the end it gives a
score to every word it knows. The word with the highest score is its guess. If you feed the guess back in
and ask again, it writes a sentence, and then a paragraph, one small step at a time. A model with random
weights guesses badly, of course; it writes nonsense, but it writes the nonsense quickly and in the right
shape, and that is enough to test the machinery.

To test a program well, you should know what the right answer is before you run it. Write the answer
down, run the program, and compare. If the numbers agree to the last digit, the test passes; if they do
not, look at the first place where they differ, because the first difference is usually the cause and the
others are only its echo. Keep the tests small and fast, so that you run them often, and keep them
deterministic, so that a failure today is still a failure tomorrow.

The weather changed in the afternoon. Clouds came in from the west, the wind turned cold, and by evening
it was raining hard on the roof of the mill. The old man lit the lamp and kept working. Somewhere in the
house a clock struck seven, then another one, a little later, and then a third, and he smiled, because
he knew which one was slow and which one was fast, and he would fix them both in the morning.

Numbers matter too: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 32, 64, 100, 128, 256, 512, 1024, 2048,
4096 and 65536. The year 2024 came after 2023. It cost 3.50 dollars, or 7 for 20 dollars. Call at 9:30.
Questions end with a mark? Yes! Lists use commas, semicolons; and colons: like this. "Quotes" and
'apostrophes' aren't rare, and it's easy to forget them. Some words come from other languages: café,
naïve, façade, déjà vu, résumé, Straße, über, año, smörgåsbord, 東京, 日本語, こんにちは, Привет, мир.

def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

She walked to the market on Saturday with a basket on her arm. She bought bread, apples, cheese and a
bunch of flowers, and on the way home she stopped at the bridge to watch the river. The water was high
after the rain. A boat went past with two men in it, and one of them waved, and she waved back. Then she
went on, up the hill and through the gate, and into the house, where the kettle was already warm.
"""


def _byte_alphabet() -> list[str]:
    """The 256 byte symbols of the GPT-2 byte-level alphabet, in byte order (as `tokenizers` maps bytes)."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel.alphabet() is a set; rebuild byte order with the GPT-2 rule (printable bytes map to
    # themselves, the others to 256 + n in byte order).
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    if set(symbols) != set(alphabet):
        raise RuntimeError("byte-level alphabet of `tokenizers` differs from the GPT-2 table")
    return symbols


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def train_merges(corpus: str, max_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE merges over `corpus` (byte-level symbols), at most `max_merges`."""
    words = Counter(piece for piece, _ in _pre_tokenizer().pre_tokenize_str(corpus))
    # Sorted so that nothing depends on dict order; each word is a list of symbols.
    vocab = [(list(word), count) for word, count in sorted(words.items())]
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in vocab:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < MIN_PAIR_COUNT:
            break
        best = min(pair for pair, n in pairs.items() if n == best_count)
        merges.append(best)
        joined = best[0] + best[1]
        for symbols, _ in vocab:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    symbols[i : i + 2] = [joined]
                i += 1
    return merges


def build_tokenizer(vocab_size: int, corpus: str = CORPUS):
    """The `tokenizers.Tokenizer` with exactly `vocab_size` entries (see the module docstring), its merges
    learned from `corpus` (the trained toys pass Python standard-library sources, `training/train_toys.py`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} < {MIN_VOCAB} (2 special tokens + 256 bytes)")
    tokens = [*SPECIAL_TOKENS, *_byte_alphabet()]
    merges = train_merges(corpus, vocab_size - len(tokens))
    for left, right in merges:
        tokens.append(left + right)
    n = 0
    while len(tokens) < vocab_size:
        tokens.append(PLACEHOLDER.format(n))
        n += 1
    if len(set(tokens)) != len(tokens):
        raise RuntimeError("duplicate token strings in the toy vocabulary")
    vocab = {token: i for i, token in enumerate(tokens)}

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, 0)],
    )
    return tok


def build_hf_tokenizer(vocab_size: int, model_max_length: int | None = None, corpus: str = CORPUS):
    """The tokenizer wrapped for transformers (`PreTrainedTokenizerFast`), with the chat template."""
    from transformers import PreTrainedTokenizerFast

    extra: dict[str, Any] = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(vocab_size, corpus),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        **extra,
    )


def write_toy_tokenizer(folder: Path, vocab_size: int, model_max_length: int | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json (and what else transformers writes) into `folder`."""
    hf_tok = build_hf_tokenizer(vocab_size, model_max_length)
    hf_tok.save_pretrained(str(folder))
    # transformers 5 records its own class name `TokenizersBackend`; the generic `PreTrainedTokenizerFast`
    # (an alias of it in 5.x) loads in transformers 4.x too. Keys sorted so repeated builds are identical.
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
