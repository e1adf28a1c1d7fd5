"""Induction sequences (Olsson et al. 2022) and the OV-circuit copying score (Elhage et al. 2021).

Legend: V vocabulary, C model dim, G KV heads, H query heads, D head dim, N sequences,
P = repeats * length positions after the start token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from headcount.errors import ConfigError, ShapeError


def induction_candidates(
    counts: Tensor, *, exclude_top: float = 0.05, min_count: int = 2, exclude: tuple[int, ...] = ()
) -> Tensor:
    """Token ids to draw induction sequences from: the tokens of the corpus with ``counts`` at
    least ``min_count``, without the ``exclude_top`` share of most frequent distinct tokens (and
    without ``exclude``, e.g. special tokens). ``counts (V,)`` holds corpus counts by token id."""
    seen = torch.nonzero(counts > 0).flatten()
    order = seen[torch.argsort(counts[seen], descending=True, stable=True)]
    drop = max(1, round(exclude_top * order.numel()))
    keep = order[drop:]
    keep = keep[counts[keep] >= min_count]
    if exclude:
        keep = keep[~torch.isin(keep, torch.tensor(exclude, dtype=keep.dtype))]
    return keep.sort().values


def induction_batch(
    candidates: Tensor,
    start_id: int,
    *,
    n_seqs: int = 10,
    length: int = 25,
    repeats: int = 4,
    seed: int = 0,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``n_seqs`` sequences of ``length`` distinct random tokens from ``candidates``, each repeated
    ``repeats`` times after ``start_id``.

    Returns ``(tokens (N, 1 + repeats * length), (b, i, j))``: query ``i`` of sequence ``b`` lies
    in a repeat after the first, and ``j = i - length + 1`` is the position right after the
    previous occurrence of its token.
    """
    if repeats < 2 or length < 2 or n_seqs < 1:
        raise ConfigError(
            f"need repeats >= 2, length >= 2, n_seqs >= 1; got {repeats}, {length}, {n_seqs}"
        )
    if candidates.numel() < length:
        raise ConfigError(f"{candidates.numel()} candidate tokens, need at least length={length}")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_seqs):
        pick = candidates[torch.randperm(candidates.numel(), generator=g)[:length]]
        rows.append(torch.cat([torch.tensor([start_id]), pick.repeat(repeats)]))
    tokens = torch.stack(rows)  # (N, 1 + repeats * length)
    i = torch.arange(1 + length, 1 + repeats * length)
    b = torch.arange(n_seqs).repeat_interleave(i.numel())
    i = i.repeat(n_seqs)
    return tokens, (b, i, i - length + 1)


def ov_copying(
    W_E: Tensor,
    W_U: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    *,
    in_scale: Tensor | None = None,
    out_scale: Tensor | None = None,
    EU: Tensor | None = None,
    group_sizes: Sequence[int] | None = None,
) -> Tensor:
    """Copying score of each head's OV circuit ``W_E W_V W_O W_U``: ``sum(lambda) / sum(|lambda|)``
    over its eigenvalues, in [-1, 1]; positive when the head raises the logit of the token it
    attends to.

    ``W_E (V, C)`` embedding, ``W_U (C, V)`` unembedding, ``W_V (G, C, D)``, ``W_O (H, D, C)``
    (query head h reads KV head h // (H // G), or the G contiguous groups of ``group_sizes``
    query heads each when they differ in size). ``in_scale (C,)``, ``out_scale (C,)``: the
    weights of the norm before the attention and of the final norm, folded in when given.
    ``EU`` may pass a precomputed ``W_U' W_E (C, C)`` (with ``out_scale`` folded) to share it
    across layers. The ``V x V`` circuit has the same non-zero eigenvalues as the ``D x D``
    matrix ``W_O (W_U W_E) W_V``, which is what is computed. Returns ``(H,)``.
    """
    G, C, D = W_V.shape
    H = W_O.shape[0]
    if W_O.shape != (H, D, C) or (H % G if group_sizes is None else sum(group_sizes) != H):
        raise ShapeError(f"W_O {tuple(W_O.shape)} does not fit W_V {tuple(W_V.shape)}")
    if group_sizes is not None and len(group_sizes) != G:
        raise ShapeError(f"group_sizes={tuple(group_sizes)} must have one entry per KV head ({G})")
    if EU is None:
        EU = unembed_embed(W_E, W_U, out_scale)
    if EU.shape != (C, C):
        raise ShapeError(f"EU must be ({C}, {C}), got {tuple(EU.shape)}")
    wv = W_V.double()
    if in_scale is not None:
        wv = wv * in_scale.double().view(1, C, 1)
    sizes = H // G if group_sizes is None else torch.tensor(group_sizes, device=wv.device)
    wv = wv.repeat_interleave(sizes, dim=0)  # (H, C, D): small, one per query head
    m = W_O.double() @ EU.double() @ wv  # (H, D, D)
    lam = torch.linalg.eigvals(m)  # (H, D) complex
    return (lam.sum(-1).real / lam.abs().sum(-1).clamp(min=1e-30)).float()


def unembed_embed(W_E: Tensor, W_U: Tensor, out_scale: Tensor | None = None) -> Tensor:
    """``W_U W_E (C, C)`` from ``W_U (C, V)`` and ``W_E (V, C)``, with the final norm's weights
    ``out_scale (C,)`` folded into ``W_U`` when given."""
    if (
        W_E.ndim != 2
        or W_U.ndim != 2
        or W_U.shape[1] != W_E.shape[0]
        or W_U.shape[0] != W_E.shape[1]
    ):
        raise ShapeError(
            f"W_E {tuple(W_E.shape)} and W_U {tuple(W_U.shape)} must be (V, C) and (C, V)"
        )
    wu = W_U.float()
    if out_scale is not None:
        wu = wu * out_scale.float()[:, None]
    return (wu @ W_E.float()).double()  # (C, C): fp32 product, V is large
