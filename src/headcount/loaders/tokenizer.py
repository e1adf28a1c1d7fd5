"""Tokenizers built with the `tokenizers` library: from GGUF metadata or a ``tokenizer.json``.

GGUF ``tokenizer.ggml.model`` picks the builder (`GGUF_TOKENIZERS`):

* ``gpt2``, byte-level BPE, matches llama.cpp, not transformers' GGUF conversion: the ``smollm``
  pre-tokenizer first isolates every digit (regex ``\\p{N}``), then applies the GPT-2 byte-level
  split, then BPE with the file's merges. transformers' conversion skips the digit split and so
  disagrees with llama.cpp on text with numbers.
* ``llama``, SentencePiece-style BPE (Gemma): spaces become ``▁``, no pre-tokenizer split, byte
  fallback to ``<0xNN>`` tokens. Without merges in the file they are recovered from the
  vocabulary, best first in file order (for Gemma 3 that is also the order of its scores on every
  normal token); Gemma's tokens of 2-31 spaces, which the file spells with spaces, are respelled
  with ``▁`` so that runs of spaces merge first. This is transformers' GGUF conversion, and the
  tests check the ids against it.

Control tokens (``<bos>``, ``<start_of_turn>``) are special; GGUF user-defined tokens are matched
whole in the text (Gemma's ``\\n\\n``, tabs, HTML tags) but are not special, so decoding with
``skip_special_tokens`` keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from headcount.errors import CheckpointError
from headcount.loaders.chat import FAMILY_TEMPLATES, ChatFormat, chat_format
from headcount.loaders.fields import as_bool, as_str, shown, token_id

# llama.cpp's pre-tokenizer regexes per GGUF ``tokenizer.ggml.pre`` (llama-vocab.cpp); each runs
# in order, splitting every piece further. The last one is GPT-2's byte-level split.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "smollm": (r"\p{N}", GPT2_SPLIT),
    "starcoder": (r"\p{N}", GPT2_SPLIT),
    "refact": (r"\p{N}", GPT2_SPLIT),
    "gpt-2": (GPT2_SPLIT,),
    "default": (GPT2_SPLIT,),
}


class Tokenizer:
    """Text <-> token ids. ``encode(text) -> list[int]``, ``decode(ids) -> str``,
    ``tokens(ids) -> list[str]`` (one display string per id, for tables and figures)."""

    def __init__(
        self,
        backend: Any,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
        source: str = "",
    ) -> None:
        self.backend = backend  # a tokenizers.Tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.source = source

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) are parsed.
        ``add_special_tokens`` adds what the model expects around a text (BERT's [CLS] ... [SEP],
        a BOS where the checkpoint asks for one)."""
        ids = list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return str(
            self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        )

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """One display string per id: each token decoded on its own (byte-level pieces that are
        part of a multi-byte character show as U+FFFD)."""
        return [self.backend.decode([int(i)], skip_special_tokens=False) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        found = self.backend.token_to_id(token)
        return None if found is None else int(found)

    @property
    def chat(self) -> ChatFormat | None:
        """The chat format of ``chat_template`` (None: no template, or one headcount does not
        know)."""
        return chat_format(self.chat_template)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of ``messages`` (``[{"role": "user", "content": ...}]``) in the
        checkpoint's chat format: ChatML for SmolLM2, Gemma's turns for Gemma 3 (which writes
        the BOS token itself; encode it with `encode_chat`)."""
        chat = self.chat
        if chat is None or self.chat_template is None:
            raise CheckpointError(f"{self.source}: this tokenizer has no known chat template")
        bos = "" if self.bos_token_id is None else self.backend.id_to_token(self.bos_token_id)
        return chat.render(messages, self.chat_template, bos, add_generation_prompt)

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `apply_chat_template`: the template's own special tokens, nothing added."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), False)

    def chat_stop_ids(self) -> set[int]:
        """Ids of the tokens that end a turn in the chat format (``<end_of_turn>``, ...)."""
        chat = self.chat
        found = [self.token_to_id(t) for t in (chat.stop if chat else ())]
        return {i for i in found if i is not None}

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def tokenizer_from_gguf(fields: Mapping[str, Any], path: str) -> Tokenizer:
    """A tokenizer from GGUF ``tokenizer.ggml.*`` metadata, as llama.cpp builds it: byte-level
    BPE (``gpt2``) or SentencePiece-style BPE (``llama``).

    ``fields`` maps metadata keys to decoded values (strings, numbers, lists). A file without
    ``tokenizer.chat_template`` gets its architecture's template, if it has one (Gemma 3).
    """
    from tokenizers import AddedToken

    kind = fields.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in fields:
        raise CheckpointError(
            f"{path}: no tokenizer in the GGUF metadata (tokenizer.ggml.model/tokens missing)"
        )
    if not isinstance(kind, str) or kind not in GGUF_TOKENIZERS:
        raise CheckpointError(
            f"{path}: tokenizer model {shown(kind)} is not supported; supported: "
            + ", ".join(f"{k!r} ({v.__doc__ or ''})".strip() for k, v in GGUF_TOKENIZERS.items())
        )
    tokens = fields["tokenizer.ggml.tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens must be a list of strings")
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(types, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in types
    ):
        raise CheckpointError(f"{path}: tokenizer.ggml.token_type must be a list of integers")
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{path}: the GGUF vocabulary has duplicate tokens")
    if len(types) != len(tokens):
        raise CheckpointError(
            f"{path}: {len(types)} token types for {len(tokens)} tokens in the GGUF metadata"
        )
    backend, spelled = GGUF_TOKENIZERS[kind](fields, tokens, path)
    # control tokens are special; user-defined ones are matched whole but decoded as text
    # (a token the builder respelled lives in the model's vocabulary instead)
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == 3
        ]
    )
    backend.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, s, k in zip(tokens, spelled, types, strict=True)
            if k == _USER_DEFINED and t == s
        ]
    )

    def _id(key: str) -> int | None:
        return token_id(fields.get(key), f"{path}: {key}", len(tokens))

    template = fields.get("tokenizer.chat_template")
    if template is not None:
        template = as_str(template, f"{path}: tokenizer.chat_template")
    else:
        template = FAMILY_TEMPLATES.get(str(fields.get("general.architecture")))
    return Tokenizer(
        backend,
        bos_token_id=_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=_id("tokenizer.ggml.eos_token_id"),
        pad_token_id=_id("tokenizer.ggml.padding_token_id"),
        add_bos=as_bool(
            fields.get("tokenizer.ggml.add_bos_token", False),
            f"{path}: tokenizer.ggml.add_bos_token",
        ),
        chat_template=template,
        source=path,
    )


def _byte_level_bpe(
    fields: Mapping[str, Any], tokens: list[str], path: str
) -> tuple[Any, list[str]]:
    """byte-level BPE"""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    pre = str(fields.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{path}: pre-tokenizer {pre!r} is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _merges(fields.get("tokenizer.ggml.merges", []), vocab, path)
    backend = _build(
        path,
        lambda: Backend(
            models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
        ),
    )
    splits: list[Any] = [
        pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre][:-1]
    ]
    # The last regex is GPT-2's, which ByteLevel applies itself before mapping bytes to symbols.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend, tokens


def _sentencepiece_bpe(
    fields: Mapping[str, Any], tokens: list[str], path: str
) -> tuple[Any, list[str]]:
    """SentencePiece BPE"""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers

    # Gemma stores its whitespace-run tokens with spaces; the model sees spaces as "▁"
    spelled = [SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
    if len(set(spelled)) != len(spelled):
        raise CheckpointError(f"{path}: respelling spaces as {SPACE!r} duplicates tokens")
    vocab = {t: i for i, t in enumerate(spelled)}
    if "tokenizer.ggml.merges" in fields:
        merges = _merges(fields["tokenizer.ggml.merges"], vocab, path)
    else:
        merges = merges_from_vocab(spelled)
    unk = token_id(
        fields.get("tokenizer.ggml.unknown_token_id"),
        f"{path}: tokenizer.ggml.unknown_token_id",
        len(spelled),
    )
    backend = _build(
        path,
        lambda: Backend(
            models.BPE(
                vocab=vocab,
                merges=merges,
                unk_token=None if unk is None else spelled[unk],
                fuse_unk=True,
                byte_fallback=True,
            )
        ),
    )
    steps: list[Any] = [normalizers.Replace(" ", SPACE)]
    where = f"{path}: tokenizer.ggml.add_space_prefix"
    if as_bool(fields.get("tokenizer.ggml.add_space_prefix", False), where):
        steps.insert(0, normalizers.Prepend(SPACE))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return backend, spelled


def _merges(value: Any, vocab: Mapping[str, int], path: str) -> list[tuple[str, str]]:
    """``tokenizer.ggml.merges`` (``"left right"`` strings) as pairs, each of two tokens of the
    vocabulary whose concatenation is one too (the tokenizers library refuses any other)."""
    where = f"{path}: tokenizer.ggml.merges"
    if not isinstance(value, list):
        raise CheckpointError(f"{where} must be a list of strings, got {shown(value)}")
    merges = []
    for k, m in enumerate(value):
        parts = m.split(" ", 1) if isinstance(m, str) else []
        if len(parts) != 2:
            raise CheckpointError(
                f"{where}[{k}] must be two tokens separated by a space, got {shown(m)}"
            )
        left, right = parts
        for t in (left, right, left + right):
            if t not in vocab:
                raise CheckpointError(
                    f"{where}[{k}] = {m!r} names {t!r}, which is not in the vocabulary"
                )
        merges.append((left, right))
    return merges


def _build(path: str, make: Callable[[], Any]) -> Any:
    """Call ``make`` (a tokenizers constructor); its errors (bare ``Exception``s) name the file."""
    try:
        return make()
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot build the tokenizer ({exc})") from exc


def merges_from_vocab(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary listed best first: every split of a token into two
    tokens, tokens in list order, longer left parts first (transformers' ``generate_merges``)."""
    vocab = set(tokens)
    merges = []
    for t in tokens:
        for k in range(len(t) - 1, 0, -1):
            left, right = t[:k], t[k:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


SPACE = "\u2581"  # "▁", SentencePiece's visible space
_USER_DEFINED = 4  # GGUF token type (gguf.TokenType.USER_DEFINED); 3 is CONTROL
GGUF_TOKENIZERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}


def tokenizer_from_file(path: Path, config: Mapping[str, Any] | None = None) -> Tokenizer:
    """Load ``tokenizer.json``; padding and truncation stored in it are switched off (headcount
    pads and truncates explicitly). ``config`` (config.json) supplies the special token ids."""
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
        raise CheckpointError(f"{path}: not a readable tokenizer.json ({exc})") from exc
    backend.no_padding()
    backend.no_truncation()
    config = config or {}
    template = None
    tok_cfg = path.with_name("tokenizer_config.json")
    if tok_cfg.is_file():
        import json

        try:
            template = json.loads(tok_cfg.read_text()).get("chat_template")
        except (ValueError, AttributeError):
            template = None
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return Tokenizer(
        backend,
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=config.get("pad_token_id"),
        chat_template=template if isinstance(template, str) else None,
        source=str(path),
    )


class IncrementalDecoder:
    """Turn a stream of token ids into text pieces without splitting multi-byte characters.

    With ``stop`` strings, text that might begin a stop string is held back until it is clear,
    and nothing from a stop string on is ever emitted (``stopped`` turns True).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one id; return the new text that is complete so far (may be empty)."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or self.stopped:
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        return self._emit(text, final=False)

    def flush(self) -> str:
        """The rest of the text (held-back characters included), unless a stop string was hit."""
        return "" if self.stopped else self._emit(self.tokenizer.decode(self.ids), final=True)

    def _emit(self, text: str, final: bool) -> str:
        end = len(text)
        for s in self.stop:
            at = text.find(s, max(self.emitted - len(s) + 1, 0))
            if at >= 0 and at < end:
                end, self.stopped = at, True
        if not self.stopped and not final:  # hold back a suffix that may start a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.emitted), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        piece = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece
