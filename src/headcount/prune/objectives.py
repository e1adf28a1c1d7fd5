"""What "a head matters" is measured against: a loss over text, in batches.

Legend: B batch, T positions, C model dim, V vocabulary, N sentences.

* `LanguageModeling` (decoders): mean next-token cross-entropy over windows of the text.
* `Contrastive` (encoders): in-batch contrastive loss between embeddings of consecutive lines of
  the text (Henderson et al. 2017's MultipleNegativesRankingLoss, scale 20: the objective that
  trained all-MiniLM-L6-v2 on sentence pairs). It needs no labels, and unlike "distance to the
  unpruned model's embeddings" its gradient at the unpruned model is not zero, so Michel's
  gradient score is defined. The evaluation metric for encoders is separate (`embedding_cosine`).

Every objective yields `Batch`es and computes a scalar loss for a model on one batch, with
gradients when asked. ``per_example`` losses let importance take E_x |dL/dxi| per example.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from headcount.errors import ConfigError, ShapeError
from headcount.models import Decoder, Encoder


@dataclass(frozen=True)
class Batch:
    ids: Tensor  # (B, T) token ids
    mask: Tensor | None = None  # (B, T) True for real tokens (encoders: padding)
    pairs: int = 0  # Contrastive: rows [0, pairs) are anchors, [pairs, 2*pairs) their positives


class Objective(Protocol):
    name: str

    def batches(self) -> Iterator[Batch]: ...

    def loss(self, model: Decoder | Encoder, batch: Batch) -> Tensor: ...

    @property
    def n_tokens(self) -> int: ...


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 when it already is (finite-difference tests need it)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def windows(ids: Sequence[int] | Tensor, window: int) -> Tensor:
    """Non-overlapping windows ``(N, window)`` of a token sequence (a short tail is dropped,
    unless the whole text is shorter than one window, then it is the one row)."""
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if t.numel() < 2:
        raise ShapeError(f"need at least 2 tokens, got {t.numel()}")
    if window < 2:
        raise ConfigError(f"window must be >= 2, got {window}")
    n = t.numel() // window
    if n == 0:
        return t[None]  # (1, T)
    return t[: n * window].view(n, window)  # (N, window)


class LanguageModeling:
    """Next-token cross-entropy of a `Decoder` over ``ids`` cut into windows of ``window`` tokens,
    ``batch_size`` windows at a time (one window = one example for E_x)."""

    name = "next-token cross-entropy"

    def __init__(self, ids: Sequence[int] | Tensor, window: int = 256, batch_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = windows(ids, window)  # (N, W)
        self.batch_size = batch_size

    @property
    def n_tokens(self) -> int:
        return int(self.rows.numel())

    def batches(self) -> Iterator[Batch]:
        for s in range(0, self.rows.shape[0], self.batch_size):
            yield Batch(self.rows[s : s + self.batch_size])

    def loss(self, model: Decoder | Encoder, batch: Batch) -> Tensor:
        if not isinstance(model, Decoder):
            raise ConfigError(f"next-token loss needs a Decoder, got {type(model).__name__}")
        device = model.embed.weight.device
        ids = batch.ids.to(device)
        logits = model(ids).logits[:, :-1]  # (B, T-1, V)
        return F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), ids[:, 1:].flatten())


def sentence_pairs(
    text: str, min_words: int = 4, max_pairs: int | None = None
) -> list[tuple[str, str]]:
    """Consecutive non-empty lines of ``text`` with at least ``min_words`` words, as (line, next)."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if len(ln.split()) >= min_words]
    pairs = list(itertools.pairwise(lines))
    return pairs if max_pairs is None else pairs[:max_pairs]


def _encode_padded(model: Encoder, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    limit = min(model.max_seq_length, model.max_len)
    enc = []
    for s in texts:
        ids = model.tokenizer.encode(s)
        enc.append(ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]])
    T = max(len(e) for e in enc)
    ids_t = torch.full((len(enc), T), model.config.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(enc), T, dtype=torch.bool)
    for r, e in enumerate(enc):
        ids_t[r, : len(e)] = torch.tensor(e)
        mask[r, : len(e)] = True
    return ids_t, mask  # (N, T) each


def pooled(model: Encoder, ids: Tensor, mask: Tensor) -> Tensor:
    """Mean-pooled, L2-normalised sentence embeddings ``(N, C)``, differentiable (no inference mode)."""
    device = model.embeddings.tokens.weight.device
    ids, mask = ids.to(device), mask.to(device)
    h = model(ids, attention_mask=mask).hidden_states  # (N, T, C)
    m = mask[..., None].to(h.dtype)  # (N, T, 1)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


class Contrastive:
    """In-batch contrastive loss of an `Encoder` on (line, next line) pairs, ``batch_size`` pairs
    a batch: cross-entropy of ``scale * cos(anchor_i, positive_j)`` with the target j = i."""

    name = "contrastive (consecutive lines, in-batch negatives)"

    def __init__(
        self,
        model: Encoder,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 16,
        scale: float = 20.0,
    ):
        if len(pairs) < 2:
            raise ShapeError(
                f"the contrastive loss needs at least 2 sentence pairs, got {len(pairs)}"
            )
        if batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 for in-batch negatives, got {batch_size}")
        self.scale = scale
        self._batches: list[Batch] = []
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            if len(chunk) < 2:
                break
            ids, mask = _encode_padded(model, [a for a, _ in chunk] + [b for _, b in chunk])
            self._batches.append(Batch(ids, mask, pairs=len(chunk)))

    @classmethod
    def from_batches(cls, batches: Sequence[Batch], scale: float = 20.0) -> Contrastive:
        """Pre-tokenised batches: rows ``[0, P)`` anchors, ``[P, 2P)`` their positives."""
        obj = cls.__new__(cls)
        obj.scale, obj._batches = scale, list(batches)
        return obj

    @property
    def n_tokens(self) -> int:
        return int(sum(int(b.mask.sum()) for b in self._batches if b.mask is not None))

    def batches(self) -> Iterator[Batch]:
        yield from self._batches

    def loss(self, model: Decoder | Encoder, batch: Batch) -> Tensor:
        if not isinstance(model, Encoder) or batch.mask is None:
            raise ConfigError(f"the contrastive loss needs an Encoder, got {type(model).__name__}")
        e = pooled(model, batch.ids, batch.mask)  # (2P, C)
        P = batch.pairs
        sims = self.scale * e[:P] @ e[P:].T  # (P, P)
        return F.cross_entropy(at_least_fp32(sims), torch.arange(P, device=sims.device))


class EmbeddingDistillation:
    """1 - cosine between an `Encoder`'s sentence embeddings and those of the model it was built
    with (the unpruned teacher, computed once here). Zero, with a zero gradient, at the teacher
    itself, so it cannot drive Michel's gradient score; it is the objective for learned gates and
    recovery of encoders, whose job is to keep the embeddings."""

    name = "1 - cosine to the unpruned model's sentence embeddings"

    def __init__(self, model: Encoder, sentences: Sequence[str], batch_size: int = 32):
        if not sentences:
            raise ShapeError("the embedding objective needs at least one sentence")
        self._batches: list[tuple[Batch, Tensor]] = []
        with torch.no_grad():
            for s in range(0, len(sentences), batch_size):
                ids, mask = _encode_padded(model, sentences[s : s + batch_size])
                self._batches.append((Batch(ids, mask), pooled(model, ids, mask).detach()))

    @property
    def n_tokens(self) -> int:
        return int(sum(int(b.mask.sum()) for b, _ in self._batches if b.mask is not None))

    def batches(self) -> Iterator[Batch]:
        for b, _ in self._batches:
            yield b

    def loss(self, model: Decoder | Encoder, batch: Batch) -> Tensor:
        if not isinstance(model, Encoder) or batch.mask is None:
            raise ConfigError(
                f"the embedding objective needs an Encoder, got {type(model).__name__}"
            )
        ref = next(t for b, t in self._batches if b is batch)
        return (
            1.0 - (pooled(model, batch.ids, batch.mask) * ref.to(batch.ids.device)).sum(-1).mean()
        )


def evaluate(objective: Objective, model: Decoder | Encoder) -> float:
    """Mean loss of ``model`` over every batch of ``objective`` (no gradients)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for b in objective.batches():
            total += float(objective.loss(model, b)) * b.ids.shape[0]
            n += b.ids.shape[0]
    return total / max(n, 1)


def embedding_cosine(model: Encoder, reference: Tensor, sentences: Sequence[str]) -> float:
    """Mean cosine between ``model``'s embeddings of ``sentences`` and ``reference (N, C)``."""
    emb = model.embed(list(sentences))  # (N, C), normalised
    if emb.shape != reference.shape:
        raise ShapeError(f"reference embeddings {tuple(reference.shape)} vs {tuple(emb.shape)}")
    return float((emb * F.normalize(reference, dim=-1)).sum(-1).mean())


def nats_to_ppl(nll: float) -> float:
    return math.exp(nll)
