"""The Gemma 3 tokenizer built from GGUF metadata (SentencePiece-style BPE) against transformers'
tokenizer of the same GGUF: the same vocabulary, merges and added tokens, the same ids, and
decoding that gives the text back."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headcount
from headcount.loaders import Tokenizer
from headcount.loaders.chat import GEMMA3_TEMPLATE
from headcount.loaders.gguf_reader import BufferReader, read_parts
from headcount.loaders.registry import embedded_parts
from headcount.loaders.tokenizer import tokenizer_from_gguf
from tests.models import checkpoints

pytestmark = pytest.mark.model

DIGITS = (
    "Call 555-0199 or +1 (800) 123-4567 before 2024-12-31 23:59; pi=3.14159265, e≈2.71828, "
    "1,000,000 × 42 = 42000000 and 0x1F3A. Roman Ⅻ, fractions ½ ¾, powers x²³, Arabic ١٢٣, wide ４５"
)
WHITESPACE = (
    "  two leading\n\n\nthree newlines\ttab\t\ttwo tabs   three spaces" + " " * 33 + "33 spaces"
    "\r\n \n  \n\t \t mixed" + "\n" * 40 + "forty newlines" + "\t" * 35 + "end   "
)
UNICODE = (
    "naïve café — 日本語のテキスト, 한국어, Ελληνικά, עברית 🙂🚀 👩‍👩‍👧 🇫🇷 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 "
    "zero\u200bwidth, NUL\x00 BEL\x07 and a lone combining e\u0301"
)
SPECIALS = "<start_of_turn>user\nHi <b>there</b><end_of_turn>\n<start_of_turn>model\n"


@lru_cache(maxsize=1)
def _gemma_tokenizer() -> Tokenizer:
    parts, sha = embedded_parts("gemma3")
    fields = BufferReader(read_parts(parts, sha, "gemma3"), "gemma3").fields
    return tokenizer_from_gguf(fields, "gemma3")


def _texts() -> dict[str, str]:
    return {
        "shakespeare": headcount.corpus("shakespeare", play="hamlet")[:30_000],
        "digits": DIGITS,
        "whitespace": WHITESPACE,
        "unicode": UNICODE,
        "specials": SPECIALS,
    }


@pytest.fixture(scope="module")
def hf_tok() -> Any:
    return checkpoints.hf_gemma3_tokenizer()


def test_vocabulary_merges_and_added_tokens_equal_transformers(hf_tok: Any) -> None:
    ours = json.loads(_gemma_tokenizer().backend.to_str())
    ref = json.loads(hf_tok.backend_tokenizer.to_str())
    assert len(ours["model"]["vocab"]) == 262144
    assert ours["model"]["vocab"] == ref["model"]["vocab"]
    assert len(ours["model"]["merges"]) == len(ref["model"]["merges"]) > 500_000
    assert ours["model"]["merges"] == ref["model"]["merges"]
    added = {(t["id"], t["content"], t["special"]) for t in ours["added_tokens"]}
    assert added == {(t["id"], t["content"], t["special"]) for t in ref["added_tokens"]}


@pytest.mark.parametrize("name", ["shakespeare", "digits", "whitespace", "unicode", "specials"])
def test_ids_equal_transformers(hf_tok: Any, name: str) -> None:
    text = _texts()[name]
    tok = _gemma_tokenizer()
    ids = tok.encode(text)
    assert ids == hf_tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == 2 and ids.count(2) == 1  # one BOS, added
    assert tok.decode(ids) == hf_tok.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<start_of_turn>", "").replace(
        "<end_of_turn>", ""
    )


def test_digits_spaces_and_bytes_are_tokenized_as_gemma_does() -> None:
    tok = _gemma_tokenizer()
    assert tok.tokens(tok.encode("In 2024", add_special_tokens=False)) == ["In", " ", *"2024"]
    ids = tok.encode("a   b\n\nc\t\td", add_special_tokens=False)  # runs are single tokens
    assert tok.tokens(ids) == ["a", "   ", "b", "\n\n", "c", "\t\t", "d"]
    assert tok.tokens(tok.encode("\x00", add_special_tokens=False)) == ["\x00"]  # <0x00>
    assert tok.backend.id_to_token(tok.encode("\x00", add_special_tokens=False)[0]) == "<0x00>"


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_round_trip_arbitrary_text(text: str) -> None:
    tok = _gemma_tokenizer()
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


@pytest.mark.parametrize("with_system", [False, True])
def test_chat_ids_equal_transformers_with_the_gemma3_template(
    hf_tok: Any, with_system: bool
) -> None:
    """The GGUF carries no chat template; headcount gives it Gemma 3's, which transformers
    renders with jinja2 to the same text and ids."""
    messages = [
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42."},
        {"role": "user", "content": "  And 1 + 1?  "},
    ]
    if with_system:
        messages.insert(0, {"role": "system", "content": "Be brief."})
    tok = _gemma_tokenizer()
    assert tok.chat_template == GEMMA3_TEMPLATE and hf_tok.chat_template is None
    ref_text = hf_tok.apply_chat_template(
        messages, chat_template=GEMMA3_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    ref_ids = hf_tok.apply_chat_template(
        messages, chat_template=GEMMA3_TEMPLATE, tokenize=True, add_generation_prompt=True
    )
    if isinstance(ref_ids, dict) or hasattr(ref_ids, "input_ids"):
        ref_ids = ref_ids["input_ids"]
    assert tok.apply_chat_template(messages) == ref_text
    assert ref_text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert tok.encode_chat(messages) == list(ref_ids)
    assert tok.chat_stop_ids() == {106}  # <end_of_turn>
