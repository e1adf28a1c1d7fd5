"""Chat formats: how a list of messages becomes the prompt text a model was tuned on.

A format is recognised in a checkpoint's Jinja chat template by a marker string (``CHAT_FORMATS``
is the registry), so `headcount run` and `Tokenizer.apply_chat_template` never branch on model
names. A checkpoint that carries no template gets its family's (``FAMILY_TEMPLATES``, keyed by
GGUF ``general.architecture``): the Gemma 3 GGUF has none, Gemma's instruction format is fixed.

Each format renders in Python what its reference template renders in Jinja (the tests render
both); headcount does not evaluate Jinja itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from headcount.errors import ConfigError

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ChatFormat:
    """A chat format: ``marker`` identifies its templates, ``stop`` lists the tokens that end a
    model turn (generation stops there as well as at the end-of-sequence ids)."""

    name: str
    marker: str
    stop: tuple[str, ...]

    def render(
        self, messages: Messages, template: str, bos: str, add_generation_prompt: bool
    ) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class ChatML(ChatFormat):
    """``<|im_start|>role\\ncontent<|im_end|>\\n`` per message (SmolLM2, Qwen), with the
    template's default system message when the first message is not a system one."""

    def render(
        self, messages: Messages, template: str, bos: str, add_generation_prompt: bool
    ) -> str:
        out = []
        mark = "<|im_start|>system\n"
        if messages and messages[0]["role"] != "system" and mark in template:
            start = template.index(mark) + len(mark)
            default = template[start : template.index("<|im_end|>", start)]
            out.append(f"{mark}{default}<|im_end|>\n")
        for m in messages:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)


@dataclass(frozen=True)
class GemmaTurns(ChatFormat):
    """Gemma's ``<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``: the
    assistant role is called ``model``, a system message is prepended to the first user turn
    (followed by a blank line), contents are stripped, and user and model turns must alternate."""

    def render(
        self, messages: Messages, template: str, bos: str, add_generation_prompt: bool
    ) -> str:
        prefix, turns = "", list(messages)
        if turns and turns[0]["role"] == "system":
            prefix, turns = turns[0]["content"] + "\n\n", turns[1:]
        out = [bos]
        for i, m in enumerate(turns):
            if (m["role"] == "user") != (i % 2 == 0):
                raise ConfigError(
                    f"message {i} has role {m['role']!r}: Gemma's turns must alternate "
                    "user/assistant/user/assistant/..."
                )
            role = "model" if m["role"] == "assistant" else m["role"]
            first = prefix if i == 0 else ""
            out.append(f"<start_of_turn>{role}\n{first}{m['content'].strip()}<end_of_turn>\n")
        if add_generation_prompt:
            out.append("<start_of_turn>model\n")
        return "".join(out)


CHAT_FORMATS: tuple[ChatFormat, ...] = (
    ChatML("chatml", marker="<|im_start|>", stop=("<|im_end|>",)),
    GemmaTurns("gemma", marker="<start_of_turn>", stop=("<end_of_turn>",)),
)

# Gemma 3's chat template as Google's instruction-tuned checkpoints ship it
# (tokenizer_config.json of google/gemma-3-*-it); `GemmaTurns` renders it for text contents.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# GGUF ``general.architecture`` -> the template of files that carry none
FAMILY_TEMPLATES: dict[str, str] = {"gemma3": GEMMA3_TEMPLATE}


def chat_format(template: str | None) -> ChatFormat | None:
    """The format whose marker ``template`` contains (None: no template or an unknown one)."""
    if not template:
        return None
    return next((f for f in CHAT_FORMATS if f.marker in template), None)
