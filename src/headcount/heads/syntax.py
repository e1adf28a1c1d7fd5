"""Syntactic heads (Voita et al. 2019) from a CoNLL-U treebank, with subword-to-word alignment.

Legend: H query heads, T token positions of one sentence (start token first), W words,
Q scored queries, E event kinds (relation x direction).

For each dependency arc of a sentence, the query is the *last* subword of the later word (in a
causal model it is the first token that has seen the whole word), the head's attention is summed
over each earlier word's subwords (the start token is no word: attention on it is left out), and
the arc counts as a hit when the word with the most attention is the other end of the arc. ``dep>gov`` events: the dependent comes after its
governor and attends to it; ``gov>dep`` events: the governor comes after its dependent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from headcount.heads.errors import ConlluError

DIRECTIONS = ("dep>gov", "gov>dep")


@dataclass(frozen=True)
class Sentence:
    """One parsed sentence: its surface ``text``, each word's character span, governor (1-based
    word index, 0 = root) and base relation (the part before ':' of the UD deprel)."""

    text: str
    spans: tuple[tuple[int, int], ...]
    heads: tuple[int, ...]
    relations: tuple[str, ...]
    sent_id: str


def read_conllu(source: str | Path, name: str | None = None) -> list[Sentence]:
    """Parse CoNLL-U (a path, or the text itself when it contains a newline) into `Sentence`s;
    errors about a text name it ``name`` (say, the file it was read from).

    Multiword tokens ("don't" = do + n't) give their surface form to the text and their span to
    each of their words; empty nodes (ids like 3.1) are skipped. Raises `ConlluError` naming the
    sentence when the file does not parse or a word lacks a head or relation.
    """
    import conllu

    if isinstance(source, Path) or "\n" not in source:
        path = Path(source)
        try:
            data = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConlluError(f"{path} is not UTF-8 text: {exc}") from exc
        where = str(path)
    else:
        data, where = source, name or "CoNLL-U text"
    try:
        parsed = conllu.parse(data)
    except Exception as exc:  # conllu raises ParseException and plain ValueErrors
        raise ConlluError(f"{where} does not parse as CoNLL-U: {exc}") from exc
    sentences = [_sentence(tl, k, where) for k, tl in enumerate(parsed, 1)]
    sentences = [s for s in sentences if s.spans]
    if not sentences:
        raise ConlluError(f"{where} holds no sentence with words")
    return sentences


def _sentence(tokens: object, k: int, where: str) -> Sentence:
    sent_id = str(getattr(tokens, "metadata", {}).get("sent_id", k))
    pieces: list[str] = []
    spans: dict[int, tuple[int, int]] = {}
    heads: dict[int, int] = {}
    rels: dict[int, str] = {}
    pos = 0
    covered: set[int] = set()
    for tok in tokens:  # type: ignore[attr-defined]
        tid = tok.get("id")
        form = tok.get("form")
        if isinstance(tid, tuple) and len(tid) == 3 and tid[1] == ".":
            continue  # empty node of an enhanced graph
        if not isinstance(form, str) or form == "":
            raise ConlluError(f"{where}: sentence {sent_id} has a token without a form: {tid!r}")
        misc = tok.get("misc") or {}
        space = "" if misc.get("SpaceAfter") == "No" else " "
        if isinstance(tid, tuple) and len(tid) == 3 and tid[1] == "-":
            start, end = int(tid[0]), int(tid[2])
            for w in range(start, end + 1):
                spans[w] = (pos, pos + len(form))
                covered.add(w)
            pieces.append(form + space)
            pos += len(form) + len(space)
            continue
        if not isinstance(tid, int):
            raise ConlluError(f"{where}: sentence {sent_id} has an invalid token id {tid!r}")
        head, rel = tok.get("head"), tok.get("deprel")
        if not isinstance(head, int) or not isinstance(rel, str) or rel in ("", "_"):
            raise ConlluError(
                f"{where}: sentence {sent_id}, word {tid} ({form!r}) has no HEAD/DEPREL "
                f"(got head={head!r}, deprel={rel!r})"
            )
        heads[tid], rels[tid] = head, rel.split(":")[0]
        if tid not in covered:
            spans[tid] = (pos, pos + len(form))
            pieces.append(form + space)
            pos += len(form) + len(space)
    n = len(heads)
    if sorted(heads) != list(range(1, n + 1)) or any(h < 0 or h > n for h in heads.values()):
        raise ConlluError(f"{where}: sentence {sent_id} has word ids or heads out of order/range")
    return Sentence(
        text="".join(pieces).rstrip(" "),
        spans=tuple(spans[w] for w in range(1, n + 1)),
        heads=tuple(heads[w] for w in range(1, n + 1)),
        relations=tuple(rels[w] for w in range(1, n + 1)),
        sent_id=sent_id,
    )


def align(
    sentence: Sentence,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    offsets: Callable[[str], list[tuple[int, int]]] | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Tokenise ``sentence.text`` and map each word to its token positions.

    Returns ``(ids, word_tokens)``: ``word_tokens[w]`` lists the positions in ``ids`` whose text
    overlaps word ``w`` (leading spaces of a token do not count). The token spans come from
    decoding the tokens one prefix at a time; where the tokens do not decode back to the text (an
    uncased WordPiece tokenizer lowercases it and spaces its punctuation), from ``offsets(text)``,
    each token's ``(start, end)`` in the text as the tokenizer normalised it (HF tokenizers'
    offsets). Raises `ConlluError` when neither works or a word gets no token.
    """
    text = sentence.text
    ids = list(encode(text))
    decoded = decode(ids)
    if decoded == text:
        ends = [len(decode(ids[: k + 1])) for k in range(len(ids))]
        spans = list(zip([0, *ends[:-1]], ends, strict=True))
    elif offsets is not None:
        spans = [(int(a), int(b)) for a, b in offsets(text)]
        if len(spans) != len(ids):
            raise ConlluError(
                f"sentence {sentence.sent_id}: {len(spans)} token offsets for {len(ids)} tokens"
            )
    else:
        raise ConlluError(
            f"sentence {sentence.sent_id}: the tokens decode to {decoded!r}, not the text "
            f"{text!r}, and the tokenizer gives no offsets; cannot align subwords to words"
        )
    word_tokens: list[list[int]] = [[] for _ in sentence.spans]
    for k, (a, b) in enumerate(spans):
        while a < b and text[a].isspace():
            a += 1
        for w, (ws, we) in enumerate(sentence.spans):
            if a < we and b > ws:
                word_tokens[w].append(k)
    for w, toks in enumerate(word_tokens):
        if not toks:
            raise ConlluError(f"sentence {sentence.sent_id}: word {w + 1} got no token")
    return ids, word_tokens


@dataclass(frozen=True)
class SentenceContext:
    """What the syntactic scorer needs for one sentence, positions shifted by ``offset`` (1 when
    a start token is prepended).

    ``members (T, W)``: 1 where a token belongs to a word. ``queries (Q,)`` token positions,
    ``visible (Q, W)`` words whose first token is at or before the query, ``targets (Q,)`` the
    expected word, ``kinds (Q,)`` event kind indices into `SyntaxAccumulator.kinds`.
    """

    members: Tensor
    queries: Tensor
    visible: Tensor
    targets: Tensor
    kinds: Tensor
    baseline_hits: Tensor  # (Q,) bool: the target is the word right before the query word


def sentence_context(
    sentence: Sentence,
    word_tokens: Sequence[Sequence[int]],
    n_tokens: int,
    kinds: dict[str, int],
    offset: int = 1,
) -> SentenceContext:
    """Build the scoring context of one aligned sentence; unseen relation kinds are added to
    ``kinds``. ``n_tokens`` counts every position of the model input (start token included)."""
    W = len(word_tokens)
    members = torch.zeros(n_tokens, W)
    for w, toks in enumerate(word_tokens):
        members[[t + offset for t in toks], w] = 1.0
    first = torch.tensor([min(t) + offset for t in word_tokens])
    last = [max(t) + offset for t in word_tokens]
    q, tgt, kind, base = [], [], [], []
    for d, (g, rel) in enumerate(zip(sentence.heads, sentence.relations, strict=True)):
        if g == 0:
            continue
        g -= 1
        if last[d] == last[g]:
            continue  # both words share their last token: nothing to tell apart
        later, earlier, direction = (d, g, "dep>gov") if d > g else (g, d, "gov>dep")
        key = f"{rel}:{direction}"
        kinds.setdefault(key, len(kinds))
        q.append(last[later])
        tgt.append(earlier)
        kind.append(kinds[key])
        base.append(earlier == later - 1)
    queries = torch.tensor(q, dtype=torch.long)
    visible = first[None, :] <= queries[:, None]  # (Q, W)
    return SentenceContext(
        members=members,
        queries=queries,
        visible=visible,
        targets=torch.tensor(tgt, dtype=torch.long),
        kinds=torch.tensor(kind, dtype=torch.long),
        baseline_hits=torch.tensor(base, dtype=torch.bool),
    )


def syntactic_hits(weights: Tensor, ctx: SentenceContext, n_kinds: int) -> tuple[Tensor, Tensor]:
    """``weights (1, H, T, T)`` of one sentence -> ``(hits (H, E), counts (E,))``: per event
    kind, how often the word with the most attention from the query is the arc's other end."""
    H = weights.shape[1]
    if ctx.queries.numel() == 0:
        return torch.zeros(H, n_kinds), torch.zeros(n_kinds)
    rows = weights[0][:, ctx.queries].float()  # (H, Q, T)
    per_word = rows @ ctx.members  # (H, Q, W)
    per_word = per_word.masked_fill(~ctx.visible[None], -1.0)
    top, best = per_word.max(-1)  # (H, Q)
    hit = ((best == ctx.targets[None]) & (top > 0)).float()  # (H, Q)
    hits = torch.zeros(H, n_kinds).index_add_(1, ctx.kinds, hit)
    counts = torch.zeros(n_kinds).index_add_(0, ctx.kinds, torch.ones(ctx.kinds.numel()))
    return hits, counts
