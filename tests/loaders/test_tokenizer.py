"""The SmolLM2 tokenizer built from GGUF metadata behaves like llama.cpp's (digits one by one)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.loaders import Tokenizer, embedded_path
from headcount.loaders.gguf_reader import _open, read_fields
from headcount.loaders.tokenizer import PRE_TOKENIZERS, IncrementalDecoder, tokenizer_from_gguf
from tests.loaders.bpe_reference import ReferenceBPE

pytestmark = pytest.mark.model

DIGITS = (
    "Call 555-0199 or +1 (800) 123-4567 before 2024-12-31 23:59; pi=3.14159265, e≈2.71828, "
    "1,000,000 × 42 = 42000000 and 0x1F3A. Roman Ⅻ, fractions ½ ¾, powers x²³, Arabic ١٢٣, wide ４５"
)
TEXTS = [
    DIGITS,
    "HAMLET. To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "  leading spaces\n\n\ttabs   and trailing   \r\n",
    "naïve café — 日本語のテキスト 🙂 I'm you're we'll they'd",
    "def f(x):\n    return x**2 + 10  # comment\n",
]


@lru_cache(maxsize=1)
def _gguf() -> tuple[Tokenizer, dict]:
    path = Path(embedded_path("smollm2"))
    fields = read_fields(_open(path), path)
    return tokenizer_from_gguf(fields, str(path)), fields


@lru_cache(maxsize=1)
def _reference() -> ReferenceBPE:
    _, f = _gguf()
    assert f["tokenizer.ggml.pre"] == "smollm"
    return ReferenceBPE(
        f["tokenizer.ggml.tokens"], f["tokenizer.ggml.merges"], PRE_TOKENIZERS["smollm"]
    )


def test_digits_are_split_one_by_one() -> None:
    tok, _ = _gguf()
    assert tok.encode("2024") == [34, 32, 34, 36]  # '2' '0' '2' '4'
    ids = tok.encode("In 1999 and 31415926")
    assert tok.tokens(ids) == ["In", " ", "1", "9", "9", "9", " and", " ", *"31415926"]


@pytest.mark.parametrize("text", TEXTS, ids=["digits", "hamlet", "spaces", "unicode", "code"])
def test_ids_match_the_llama_cpp_reference(text: str) -> None:
    tok, _ = _gguf()
    assert tok.encode(text) == _reference().encode(text)


# SmolLM2's vocabulary has no symbol for six control bytes and for the UTF-8 lead bytes
# F1/F2 (code points U+40000..U+BFFFF, planes 4-11, all unassigned): like llama.cpp, the BPE
# drops them. Every other character round-trips.
UNREPRESENTABLE = "\x04\x06\x13\x14\x16\x1d"
CHARS = st.characters(codec="utf-8", exclude_characters=UNREPRESENTABLE).filter(
    lambda c: not 0x40000 <= ord(c) < 0xC0000
)


@settings(max_examples=200, deadline=None)
@given(st.text(CHARS, max_size=120))
def test_round_trip_arbitrary_text(text: str) -> None:
    tok, _ = _gguf()
    assert tok.decode(tok.encode(text)) == text


def test_bytes_missing_from_the_vocabulary() -> None:
    from tests.loaders.bpe_reference import bytes_to_unicode

    tok, _ = _gguf()
    vocab = tok.backend.get_vocab()
    missing = sorted(b for b, c in bytes_to_unicode().items() if c not in vocab)
    assert missing == sorted(
        [*map(ord, UNREPRESENTABLE), 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)]
    )


def test_special_tokens_and_ids() -> None:
    tok, _ = _gguf()
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (1, 2, 49152)
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHi"
    assert not tok.add_bos and tok.encode("Hi")[0] != 1  # SmolLM2 adds no BOS


def test_incremental_decoder_never_splits_characters() -> None:
    tok, _ = _gguf()
    text = "Zoë says 🙂 日本 ok"
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_incremental_decoder_holds_back_stop_strings() -> None:
    tok, _ = _gguf()
    ids = tok.encode("one two three four five")
    dec = IncrementalDecoder(tok, stop=["thr", "fiv"])
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == "one two "
    assert dec.stopped
    dec = IncrementalDecoder(tok, stop=["xyz"])
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "one two three four five"
