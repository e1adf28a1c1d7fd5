"""Independent float64 reference for attention: per-head loops, no fused kernels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from headcount import Attention


def reference_attention(
    attn: Attention,
    x: Tensor,
    context: Tensor | None = None,
    *,
    causal: bool = False,
    allowed: Tensor | None = None,
    additive: Tensor | None = None,
    positions: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Float64 multi-head attention, head by head, from the module's weights.

    ``allowed`` is a bool mask broadcastable to (B, H, T, S), True = may attend; ``additive`` is
    added to the scores. Rows with no allowed key give zeros. Returns (y, weights (B, H, T, S)).
    """
    H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    W = attn.qkv_proj.weight.detach().double()
    b = attn.qkv_proj.bias.detach().double() if attn.qkv_proj.bias is not None else None
    x = x.double()
    src = x if context is None else context.double()
    B, T, _ = x.shape
    S = src.shape[1]

    def proj(inp: Tensor, row: int) -> Tensor:
        out = inp @ W[row * D : (row + 1) * D].T
        return out + b[row * D : (row + 1) * D] if b is not None else out

    # contiguous grouping: group g is read by the next group_sizes[g] query heads (H // G each
    # unless the groups differ in size)
    kv_of = [g for g, r in enumerate(attn.group_sizes) for _ in range(r)]
    assert len(kv_of) == H and len(attn.group_sizes) == G
    heads, weights = [], []
    for h in range(H):
        g = kv_of[h]
        q, k, v = proj(x, h), proj(src, H + g), proj(src, H + G + g)  # (B, T|S, D)
        if attn.rope is not None and context is None:
            pos = torch.arange(T) if positions is None else positions
            q, k = _rope64(q, pos, attn.rope.base), _rope64(k, pos, attn.rope.base)
        scores = q @ k.transpose(1, 2) * attn.scale  # (B, T, S)
        ok = torch.ones(B, T, S, dtype=torch.bool)
        if causal:
            ok &= torch.ones(T, S, dtype=torch.bool).tril(S - T)
        if allowed is not None:
            ok &= allowed.expand(B, H, T, S)[:, h]
        if additive is not None:
            scores = scores + additive.double().expand(B, H, T, S)[:, h]
            ok &= ~torch.isneginf(additive.expand(B, H, T, S)[:, h])
        scores = scores.masked_fill(~ok, -math.inf)
        p = torch.softmax(scores, dim=-1)
        p = torch.where(ok.any(-1, keepdim=True), p, torch.zeros_like(p))
        weights.append(p)
        heads.append(p @ v)  # (B, T, D)
    z = torch.cat(heads, dim=-1)  # (B, T, H*D)
    Wo = attn.o_proj.weight.detach().double()
    y = z @ Wo.T
    if attn.o_proj.bias is not None:
        y = y + attn.o_proj.bias.detach().double()
    return y, torch.stack(weights, dim=1)


def _rope64(x: Tensor, pos: Tensor, base: float) -> Tensor:
    """RoPE by complex multiplication: pair (x_i, x_{i+D/2}) is the complex number x_i + j x_{i+D/2}."""
    D = x.shape[-1]
    half = D // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / D)  # (D/2,)
    angle = pos.double()[..., None] * theta  # (T, D/2) or (B, T, D/2)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)
