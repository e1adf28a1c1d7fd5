"""Grouped attention kernels, free of module state.

Legend: B batch, H query heads, G KV heads, R = H // G query heads per group, T query positions,
S key positions, D head dim. Query head h reads KV head h // R (contiguous grouping, as in Llama).

Groups may also have different sizes (``group_sizes``, left by pruning query heads): the query
heads of a group stay contiguous, and the kernels run once per run of equal-sized groups.

Neither kernel copies K or V per query head: the R query heads of a group are folded into the
query rows, ``(B, G, R*T, D)`` against ``(B, G, S, D)``, or SDPA's ``enable_gqa`` is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from headcount.errors import ShapeError

# Fold the group into query rows when there are at most this many rows per group; above it
# (prefill) SDPA's own GQA path with is_causal is faster and needs no (T, S) mask.
FOLD_MAX_ROWS = 64


def causal_mask(T: int, S: int, device: torch.device | None = None) -> Tensor:
    """Bool ``(T, S)``, True where query t (at absolute position S - T + t) may see key s."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class GroupRun(NamedTuple):
    """Query heads ``h0 : h0 + n * R`` read KV heads ``g0 : g0 + n``, ``R`` query heads each."""

    h0: int
    g0: int
    n: int
    R: int


def group_runs(group_sizes: Sequence[int]) -> tuple[GroupRun, ...]:
    """Split contiguous groups into runs of equal size: ``(2, 2, 3, 1)`` gives runs of
    ``(n=2, R=2)``, ``(n=1, R=3)``, ``(n=1, R=1)``. Uniform groups are one run."""
    runs: list[GroupRun] = []
    h = 0
    for g, r in enumerate(group_sizes):
        if runs and r == runs[-1].R:
            runs[-1] = runs[-1]._replace(n=runs[-1].n + 1)
        else:
            runs.append(GroupRun(h, g, 1, r))
        h += r
    return tuple(runs)


def _runs_or_none(group_sizes: Sequence[int] | None, H: int, G: int) -> tuple[GroupRun, ...] | None:
    """The runs of uneven ``group_sizes``; None when groups are uniform (``H // G`` each)."""
    if group_sizes is None:
        return None
    if len(group_sizes) != G or sum(group_sizes) != H:
        raise ShapeError(
            f"group_sizes={tuple(group_sizes)} do not fit {H} query heads and {G} KV heads"
        )
    runs = group_runs(group_sizes)
    return None if len(runs) == 1 else runs


def _head_slice(mask: Tensor | None, H: int, h0: int, h1: int) -> Tensor | None:
    """Query heads ``h0 : h1`` of a mask broadcastable to ``(B, H, T, S)`` (a view)."""
    if mask is None:
        return None
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (b, h, t, s)
    return mask[:, h0:h1] if mask.shape[1] == H else mask


def _fold_mask(mask: Tensor | None, G: int, R: int, T: int) -> Tensor | None:
    """Reshape a mask broadcastable to ``(B, H, T, S)`` into ``(B|1, G|1, R*T|1, S)``."""
    if mask is None:
        return None
    b, h, t, s = mask.shape
    if h == 1 and t == 1:
        return mask  # broadcasts over groups and rows as it is
    mask = mask.expand(b, G * R, T, s)  # (b, H, T, S), a view
    return mask.reshape(b, G, R * T, s)  # copies the mask only, never K or V


def _head_dim(mask: Tensor) -> int:
    return int(mask.shape[-3]) if mask.ndim >= 3 else 1


@functools.lru_cache(maxsize=256)
def _slots(group_sizes: tuple[int, ...], device: torch.device) -> Tensor:
    """``(H,)``: the row of each query head among ``G * max(group_sizes)`` rows, every group
    given ``max(group_sizes)`` rows (cached: a decode step asks for it once per layer).
    Built outside inference mode even when first asked inside it: the cached index must also
    serve a forward that autograd records (inference tensors cannot be saved for backward)."""
    Rm = max(group_sizes)
    with torch.inference_mode(False):
        return torch.cat([g * Rm + torch.arange(r) for g, r in enumerate(group_sizes)]).to(device)


def _padded_fold(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    group_sizes: Sequence[int],
    scale: float,
    dropout_p: float,
) -> Tensor:
    """Uneven groups in one SDPA call (decode): each group's query heads are placed in
    ``Rm = max(group_sizes)`` query-row slots of their KV head, the spare slots hold zero queries
    whose outputs are dropped. Copies q (and the output) only, never K or V."""
    B, _, T, D = q.shape
    G, Rm = len(group_sizes), max(group_sizes)
    slots = _slots(tuple(group_sizes), q.device)  # (H,): the slot of each query head
    qp = q.new_zeros(B, G * Rm, T, D).index_copy_(1, slots, q)  # (B, G*Rm, T, D)
    y = F.scaled_dot_product_attention(
        qp.view(B, G, Rm * T, D),
        k,
        v,
        attn_mask=_fold_mask(mask, G, Rm, T),
        dropout_p=dropout_p,
        scale=scale,
    )  # (B, G, Rm*T, D)
    return y.view(B, G * Rm, T, D).index_select(1, slots)  # (B, H, T, D)


def _per_run(
    kernel: Callable[..., Any],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    runs: Sequence[GroupRun],
    is_causal: bool,
    scale: float,
    dropout_p: float,
) -> list[Any]:
    """``kernel`` on each run of equal-sized groups: query heads ``h0 : h0 + n*R`` against KV
    heads ``g0 : g0 + n`` (views), with the mask's matching heads."""
    H = q.shape[1]
    return [
        kernel(
            q[:, r.h0 : r.h0 + r.n * r.R],  # (B, n*R, T, D)
            k[:, r.g0 : r.g0 + r.n],  # (B, n, S, D): a view
            v[:, r.g0 : r.g0 + r.n],
            _head_slice(mask, H, r.h0, r.h0 + r.n * r.R),
            is_causal=is_causal,
            scale=scale,
            dropout_p=dropout_p,
        )
        for r in runs
    ]


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    is_causal: bool,
    scale: float,
    dropout_p: float = 0.0,
    group_sizes: Sequence[int] | None = None,
) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` with ``q (B, H, T, D)``, ``k, v (B, G, S, D)``.

    ``mask`` broadcasts to ``(B, H, T, S)``: bool (True = may attend) or additive float.
    ``group_sizes`` (G entries summing to H): query heads per KV head when groups differ in
    size (None: ``H // G`` each). Returns ``(B, H, T, D)``.
    """
    B, H, T, D = q.shape
    G = k.shape[1]
    runs = _runs_or_none(group_sizes, H, G)
    if runs is not None and group_sizes is not None:
        Rm = max(group_sizes)
        if not is_causal and Rm * T <= FOLD_MAX_ROWS and (mask is None or _head_dim(mask) == 1):
            return _padded_fold(q, k, v, mask, group_sizes, scale, dropout_p)
        parts = _per_run(sdpa_attention, q, k, v, mask, runs, is_causal, scale, dropout_p)
        return torch.cat(parts, dim=1)  # (B, H, T, D)
    if G == H:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    R = H // G
    if not is_causal and R * T <= FOLD_MAX_ROWS:
        qf = q.reshape(B, G, R * T, D)  # (B, G, R*T, D): copies q only
        y = F.scaled_dot_product_attention(
            qf, k, v, attn_mask=_fold_mask(mask, G, R, T), dropout_p=dropout_p, scale=scale
        )  # (B, G, R*T, D)
        return y.view(B, H, T, D)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=True,
    )


def eager_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    is_causal: bool,
    scale: float,
    dropout_p: float = 0.0,
    group_sizes: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Like `sdpa_attention`, and also returns the weights ``(B, H, T, S)``.

    Scores and softmax are computed in float32 at least, then cast back to ``q.dtype``.
    """
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    runs = _runs_or_none(group_sizes, H, G)
    if runs is not None:
        parts = _per_run(eager_attention, q, k, v, mask, runs, is_causal, scale, dropout_p)
        y = torch.cat([p[0] for p in parts], dim=1)  # (B, H, T, D)
        return y, torch.cat([p[1] for p in parts], dim=1)  # (B, H, T, S)
    R = H // G
    qf = q.reshape(B, G, R * T, D)  # (B, G, R*T, D)
    scores = torch.matmul(qf, k.transpose(-1, -2)).view(B, H, T, S)  # (B, H, T, S)
    work = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(work) * scale
    if is_causal:
        scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(work)
    weights = torch.softmax(scores, dim=-1).to(q.dtype)  # (B, H, T, S)
    p = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    y = torch.matmul(p.view(B, G, R * T, S), v)  # (B, G, R*T, D)
    return y.view(B, H, T, D), weights
