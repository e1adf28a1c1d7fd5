"""Which heads stay: keep-masks, choosing heads to remove, masking (reversible) and physical removal.

Legend: L layers, H_l query heads of layer l, G_l KV heads (groups) of layer l, D head dim,
C model dim.

A *keep-mask* is a list of L bool tensors ``(H_l,)``: True for the query heads that stay. Masking
sets each attention's ``head_gate`` to the mask (0 = the head's output is dropped before
``o_proj``); `remove_heads` builds a new, smaller model: the Q rows of removed query heads, the K
and V rows of KV heads whose query heads are all gone, and the ``o_proj`` columns of removed heads
are sliced away. A KV head goes only with the last of its query heads, so a GQA layer can end with
groups of different sizes (``DecoderConfig.group_sizes``). Every layer keeps at least one head.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.nn import Attention, Linear

KeepMask = list[Tensor]  # one bool (H_l,) per layer
Unit = Literal["head", "group"]


def full_mask(model: Decoder | Encoder) -> KeepMask:
    """Every head kept."""
    return [torch.ones(a.n_heads, dtype=torch.bool) for a in model.attention_layers()]


def group_index(attn: Attention) -> Tensor:
    """``(H,)`` the KV head each query head reads."""
    return torch.tensor([attn.kv_head_of(h) for h in range(attn.n_heads)])


def kept_groups(attn: Attention, keep: Tensor) -> Tensor:
    """``(G,)`` bool: KV heads that still serve at least one kept query head."""
    g = torch.zeros(attn.n_kv_heads, dtype=torch.bool)
    g[group_index(attn)[keep]] = True
    return g


def count(mask: KeepMask) -> int:
    return int(sum(int(m.sum()) for m in mask))


def check_mask(model: Decoder | Encoder, keep: KeepMask) -> None:
    layers = model.attention_layers()
    if len(keep) != len(layers):
        raise ConfigError(f"keep-mask has {len(keep)} layers, the model has {len(layers)}")
    for i, (a, m) in enumerate(zip(layers, keep, strict=True)):
        if m.shape != (a.n_heads,) or m.dtype != torch.bool:
            raise ConfigError(
                f"layer {i}: keep-mask must be bool ({a.n_heads},), got {m.dtype} {tuple(m.shape)}"
            )
        if not bool(m.any()):
            raise ConfigError(
                f"layer {i}: every head would be removed; keep at least one per layer"
            )


def apply_mask(model: Decoder | Encoder, keep: KeepMask | None) -> None:
    """Gate each attention's heads by ``keep`` (reversible; None clears every gate)."""
    layers = model.attention_layers()
    if keep is None:
        for a in layers:
            a.head_gate = None
        return
    check_mask(model, keep)
    for a, m in zip(layers, keep, strict=True):
        w = a.qkv_proj.weight
        a.head_gate = None if bool(m.all()) else m.to(device=w.device, dtype=w.dtype)


def select(
    scores: Sequence[Tensor],
    n_remove: int,
    base: KeepMask,
    *,
    unit: Unit = "head",
    groups: Sequence[Tensor] | None = None,
) -> KeepMask:
    """Remove the ``n_remove`` lowest-scoring units still kept in ``base``, never a layer's last.

    ``unit="head"``: ``scores[l]`` is ``(H_l,)`` and one unit is a query head. ``unit="group"``:
    ``scores[l]`` is ``(G_l,)``, ``groups[l] (H_l,)`` maps heads to their KV head, and removing a
    unit removes the whole group. Ties break by layer, then index (deterministic).
    """
    keep = [m.clone() for m in base]
    if unit == "group" and groups is None:
        raise ConfigError("group pruning needs the head -> KV-head map of every layer")
    cands: list[tuple[float, int, int]] = []
    for layer, s in enumerate(scores):
        for j, v in enumerate(s.tolist()):
            alive = (
                bool(keep[layer][j])
                if groups is None or unit == "head"
                else bool(keep[layer][groups[layer] == j].any())
            )
            if alive:
                cands.append((float(v), layer, j))
    cands.sort()
    removed = 0
    for _, layer, j in cands:
        if removed == n_remove:
            break
        heads = torch.zeros_like(keep[layer])
        if groups is None or unit == "head":
            heads[j] = True
        else:
            heads = groups[layer] == j
        if not bool((keep[layer] & ~heads).any()):
            continue  # would empty the layer
        keep[layer] &= ~heads
        removed += 1
    if removed < n_remove:
        raise ConfigError(
            f"cannot remove {n_remove} {unit}s: only {removed} can go with at least one head left per layer"
        )
    return keep


def n_units(model: Decoder | Encoder, unit: Unit) -> int:
    layers = model.attention_layers()
    return sum(a.n_heads if unit == "head" else a.n_kv_heads for a in layers)


def max_removable(model: Decoder | Encoder, unit: Unit) -> int:
    """Units that can go with one head (one group) left in every layer."""
    return n_units(model, unit) - len(model.attention_layers())


def check_fraction(model: Decoder | Encoder, fraction: float, unit: Unit = "head") -> int:
    """The number of units a fraction removes; `ConfigError` outside [0, 1) or if it would empty a layer."""
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"fraction must be in [0, 1), got {fraction!r}")
    total = n_units(model, unit)
    n = round(fraction * total)
    most = max_removable(model, unit)
    if n > most:
        raise ConfigError(
            f"fraction {fraction} removes {n} of {total} {unit}s, which would empty a layer: "
            f"at most {most} ({most / total:.3f}) can go with one {unit} left in each of the "
            f"{len(model.attention_layers())} layers"
        )
    return n


def random_scores(model: Decoder | Encoder, seed: int, unit: Unit = "head") -> list[Tensor]:
    """Uniform random scores (a random pruning order), reproducible with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.rand(a.n_heads if unit == "head" else a.n_kv_heads, generator=g)
        for a in model.attention_layers()
    ]


# ---------------------------------------------------------------------------- physical removal
def _rows(attn: Attention, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Row indices of ``qkv_proj`` that stay and column indices of ``o_proj`` that stay."""
    H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    heads = keep.nonzero().flatten()  # kept query heads
    grp = kept_groups(attn, keep).nonzero().flatten()  # kept KV heads
    ar = torch.arange(D)
    q = (heads[:, None] * D + ar).flatten()
    k = ((H + grp)[:, None] * D + ar).flatten()
    v = ((H + G + grp)[:, None] * D + ar).flatten()
    return torch.cat([q, k, v]), q


def _sliced_linear(lin: nn.Linear, rows: Tensor | None, cols: Tensor | None) -> Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    out = Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if lin.bias is not None:
            b = lin.bias.detach()
            out.bias.copy_(b[rows.to(b.device)] if rows is not None else b)
    return out


def remove_heads(model: Decoder | Encoder, keep: KeepMask) -> Decoder | Encoder:
    """A new model without the heads ``keep`` drops (the source model is left untouched).

    Its outputs equal the masked model's (`apply_mask` with the same ``keep``) up to float
    rounding; it has fewer parameters and FLOPs, and when whole groups go, a smaller KV cache.
    """
    check_mask(model, keep)
    layers = model.attention_layers()
    new = copy.deepcopy(model)
    heads, kv, sizes = [], [], []
    for a_old, a, m in zip(layers, new.attention_layers(), keep, strict=True):
        rows, ocols = _rows(a_old, m)
        a.qkv_proj = _sliced_linear(a_old.qkv_proj, rows, None)
        a.o_proj = _sliced_linear(a_old.o_proj, None, ocols)
        gi = group_index(a_old)[m]  # kept heads' KV heads, ascending
        g_sizes = tuple(int(c) for c in torch.unique_consecutive(gi, return_counts=True)[1])
        a.n_heads, a.n_kv_heads = int(m.sum()), len(g_sizes)
        a.group_sizes = g_sizes
        a.head_gate = None
        heads.append(a.n_heads)
        kv.append(a.n_kv_heads)
        sizes.append(g_sizes)
    cfg = new.config
    if isinstance(new, Decoder):
        uniform = all(len(set(s)) == 1 for s in sizes)
        new.config = dataclasses.replace(
            cfg,
            n_heads=tuple(heads),
            n_kv_heads=tuple(kv),
            group_sizes=None if uniform else tuple(sizes),
        )
    else:
        if any(len(set(s)) > 1 for s in sizes):
            raise ConfigError(
                f"removing these heads leaves KV groups of different sizes {sizes}, which an "
                "encoder config cannot describe; remove whole groups (unit='group') instead"
            )
        changes: dict[str, object] = {"n_heads": tuple(heads)}
        if any(f.name == "n_kv_heads" for f in dataclasses.fields(cfg)):  # GQA encoders
            changes["n_kv_heads"] = tuple(kv)
        new.config = dataclasses.replace(cfg, **changes)
    new.source = ""  # a new model: saving it never counts as overwriting the original
    return new
