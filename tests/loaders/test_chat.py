"""Chat formats render what their reference Jinja templates render (jinja2, as transformers
sets it up), and tokenizers pick their format from the template they carry."""

from __future__ import annotations

from typing import Any

import pytest

from headcount.errors import CheckpointError, ConfigError
from headcount.loaders.chat import CHAT_FORMATS, GEMMA3_TEMPLATE, chat_format
from headcount.loaders.tokenizer import Tokenizer, tokenizer_from_gguf

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "  Capital of France?\n"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! \n"},
        {"role": "user", "content": "Count: 1 2 3"},
    ],
]


class _TemplateError(Exception):
    pass


def _jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render ``template`` as transformers' ``apply_chat_template`` does (sandboxed jinja2,
    trim_blocks and lstrip_blocks, a ``raise_exception`` global)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> Any:
        raise _TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, bos_token="<bos>", add_generation_prompt=add_generation_prompt
    )


def _gemma_like() -> Tokenizer:
    """A SentencePiece-style GGUF tokenizer with Gemma's special tokens and no template."""
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tokens = [*specials, "\n", "  ", *bytes_, "▁", "a", "b", "▁a", "ab", "▁ab"]
    types = [3] * 6 + [4, 4] + [6] * 256 + [1] * 6
    fields = {
        "general.architecture": "gemma3",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    return tokenizer_from_gguf(fields, "gemma-like")


@pytest.mark.parametrize("generation", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "turns"])
def test_gemma_turns_equal_the_gemma3_jinja_template(
    messages: list[dict[str, str]], generation: bool
) -> None:
    gemma = chat_format(GEMMA3_TEMPLATE)
    assert gemma is not None and gemma.name == "gemma" and gemma.stop == ("<end_of_turn>",)
    ours = gemma.render(messages, GEMMA3_TEMPLATE, "<bos>", generation)
    assert ours == _jinja(GEMMA3_TEMPLATE, messages, generation)


def test_gemma_turns_must_alternate_as_in_the_template() -> None:
    gemma = chat_format(GEMMA3_TEMPLATE)
    assert gemma is not None
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(_TemplateError, match="must alternate"):
        _jinja(GEMMA3_TEMPLATE, bad, True)
    with pytest.raises(ConfigError, match="must alternate"):
        gemma.render(bad, GEMMA3_TEMPLATE, "<bos>", True)


def test_a_gemma_gguf_without_a_template_gets_gemmas_and_encodes_one_bos() -> None:
    tok = _gemma_like()
    assert tok.chat_template == GEMMA3_TEMPLATE and tok.chat is not None
    assert tok.chat.name == "gemma" and tok.chat_stop_ids() == {5}
    ids = tok.encode_chat([{"role": "user", "content": "ab a"}])
    # <bos> <start_of_turn> "user" (bytes) \n "ab" "▁a" <end_of_turn> \n <start_of_turn> ...
    assert ids[:2] == [2, 4] and ids.count(2) == 1
    assert tok.decode(ids) == "<bos><start_of_turn>user\nab a<end_of_turn>\n<start_of_turn>model\n"
    assert tok.tokens(ids[7:10]) == ["ab", " a", "<end_of_turn>"]


def test_formats_are_found_by_marker_not_by_model_name() -> None:
    assert [f.name for f in CHAT_FORMATS] == ["chatml", "gemma"]
    assert (
        chat_format("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}").name == "chatml"
    )  # type: ignore[union-attr]
    assert chat_format("{{ messages[0].content }}") is None and chat_format(None) is None
    tok = _gemma_like()
    tok.chat_template = "{{ messages[0].content }}"
    with pytest.raises(CheckpointError, match="no known chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
