"""MHA -> GQA -> MQA conversion: a new model whose layers share each KV head among more query heads.

Legend: L layers, H query heads, G old KV heads, G' new KV heads, R' = H / G' query heads per new
KV head, D head dim, C model dim.

New KV head j serves the contiguous query heads ``j R' .. (j + 1) R' - 1`` (the grouping of
Llama and Mistral). It is built from the old KV heads those query heads read, each weighted by
how many of them read it (``w_i``; for MHA -> GQA every covered head once). Methods:

* ``mean``: the ``w``-weighted mean of the old heads' K and V rows and biases (Ainslie et al.
  2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints").
* ``first``: the K and V rows of the old KV head of the group's first query head.
* ``random``: fresh rows drawn from N(0, sigma^2), sigma the standard deviation of the layer's
  old K (resp. V) weights (biases likewise), from a generator seeded with ``seed``.
* ``fit``: data-aware, see `headcount.convert.fit` — one shared K and V projection per group by
  weighted reduced-rank regression on calibration activations, with per-head adapters folded
  into the query heads and ``o_proj`` (which ``fit`` therefore changes too).

A layer whose KV-head count does not change is copied exactly, whatever the method.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from headcount.convert import fit as F
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.nn import Attention, Linear
from headcount.prune.objectives import windows

Method = Literal["mean", "first", "random", "fit"]
METHODS: tuple[str, ...] = ("mean", "first", "random", "fit")
Calibration = str | Sequence[int] | Tensor


def convert(
    model: Decoder | Encoder,
    n_kv_heads: int | Sequence[int],
    method: Method = "mean",
    *,
    calibration: Calibration | None = None,
    seed: int = 0,
    window: int = 512,
) -> Decoder | Encoder:
    """A new model with ``n_kv_heads`` KV heads in every layer (an int) or per layer (a sequence).

    Each count must divide the layer's query heads. ``method``: ``mean``, ``first``, ``random``
    or ``fit`` (see the module docstring); ``fit`` needs ``calibration`` text or token ids, run
    through ``model`` in windows of ``window`` tokens to collect each layer's attention inputs.
    The source model is left untouched; a layer already at its count is copied exactly.
    """
    layers = model.attention_layers()
    targets = _targets(layers, n_kv_heads)
    if method not in METHODS:
        raise ConfigError(f"unknown conversion method {method!r}; choose from {', '.join(METHODS)}")
    changed = [i for i, (a, g) in enumerate(zip(layers, targets, strict=True)) if g != a.n_kv_heads]
    for i in changed:
        if not layers[i].uniform_groups:
            raise ConfigError(
                f"layer {i}: its KV groups differ in size (group_sizes={layers[i].group_sizes}, "
                "left by head pruning); convert before pruning, or keep this layer's "
                f"n_kv_heads={layers[i].n_kv_heads}"
            )
    moments: dict[int, Moments] = {}
    if method == "fit" and changed:
        if calibration is None:
            raise ConfigError("method 'fit' needs calibration text or token ids")
        moments = input_moments(model, calibration, {i: targets[i] for i in changed}, window)
    new = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for i in changed:
        _convert_layer(
            layers[i], new.attention_layers()[i], targets[i], method, moments.get(i), gen
        )
    kv = tuple(a.n_kv_heads for a in new.attention_layers())
    if isinstance(new, Decoder):
        sizes = tuple(a.group_sizes for a in new.attention_layers())
        uniform = all(len(set(s)) == 1 for s in sizes)
        new.config = dataclasses.replace(
            new.config, n_kv_heads=kv, group_sizes=None if uniform else sizes
        )
    else:
        new.config = dataclasses.replace(new.config, n_kv_heads=kv)
    new.source = ""  # a new model: saving it never counts as overwriting the original
    return new


def _targets(layers: list[Attention], n_kv_heads: int | Sequence[int]) -> list[int]:
    if isinstance(n_kv_heads, int) and not isinstance(n_kv_heads, bool):
        targets = [n_kv_heads] * len(layers)
    elif isinstance(n_kv_heads, Sequence) and not isinstance(n_kv_heads, str):
        targets = list(n_kv_heads)
        if len(targets) != len(layers):
            raise ConfigError(
                f"n_kv_heads has {len(targets)} entries but the model has {len(layers)} layers"
            )
    else:
        raise ConfigError(f"n_kv_heads must be an int or one int per layer, got {n_kv_heads!r}")
    for i, (a, g) in enumerate(zip(layers, targets, strict=True)):
        if not isinstance(g, int) or isinstance(g, bool) or g <= 0:
            raise ConfigError(f"layer {i}: n_kv_heads must be a positive integer, got {g!r}")
        if g == a.n_kv_heads:
            continue  # unchanged (even with uneven groups): the layer is copied as is
        if g > a.n_heads:
            raise ConfigError(
                f"layer {i}: n_kv_heads={g} exceeds the layer's n_heads={a.n_heads} query heads"
            )
        if a.n_heads % g:
            raise ConfigError(
                f"layer {i}: n_kv_heads={g} does not divide the layer's n_heads={a.n_heads}; "
                f"choose one of {[d for d in range(1, a.n_heads + 1) if a.n_heads % d == 0]}"
            )
    return targets


def cover(attn: Attention, n_kv_heads: int) -> list[list[tuple[int, int]]]:
    """For each new KV head, ``(old KV head, how many of its query heads read it)``, in order."""
    R = attn.n_heads // n_kv_heads
    out = []
    for j in range(n_kv_heads):
        counts: dict[int, int] = {}
        for h in range(j * R, (j + 1) * R):
            g = attn.kv_head_of(h)
            counts[g] = counts.get(g, 0) + 1
        out.append(sorted(counts.items()))
    return out


# ------------------------------------------------------------------------------- calibration
@dataclass
class Moments:
    """Calibration statistics of one layer's attention input ``x1 = [x, 1]`` ``(C1,)``.

    ``S = E[x1 x1^T]`` over every position (the query metric); ``by_group[j]``: the same with
    each position weighted by the attention it receives from new group j's query heads (mean 1
    over positions), for fitting that group's keys and values.
    """

    S: Tensor  # (C1, C1)
    by_group: list[Tensor]  # G' x (C1, C1)


def input_moments(
    model: Decoder | Encoder,
    calibration: Calibration,
    targets: Mapping[int, int],
    window: int = 512,
) -> dict[int, Moments]:
    """`Moments` of each layer ``i`` in ``targets`` (converted to ``targets[i]`` KV heads), over
    ``calibration`` text or ids cut into windows of ``window`` tokens run through ``model``."""
    if isinstance(calibration, str):
        ids = torch.tensor(model.tokenizer.encode(calibration), dtype=torch.long)
    else:
        ids = torch.as_tensor(calibration, dtype=torch.long).flatten()
    rows = windows(ids, min(window, model.max_len))  # (N, W)
    attn = model.attention_layers()
    inputs: dict[int, Tensor] = {}
    sums: dict[int, list[Tensor]] = {}
    count = [0]

    def keep_input(i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def f(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[i] = args[0].detach()

        return f

    def reduce(i: int) -> Callable[[Tensor], None]:
        R2 = attn[i].n_heads // targets[i]

        def f(weights: Tensor) -> None:  # (B, H, T, S)
            x = inputs.pop(i).cpu().double()  # (B, T, C)
            x1 = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1).flatten(0, 1)  # (B*T, C1)
            received = weights.detach().cpu().double().sum(2)  # (B, H, S): attention received
            per_group = received.unflatten(1, (targets[i], R2)).mean(2)  # (B, G', S)
            new = [x1.T @ x1] + [
                (x1 * per_group[:, j].reshape(-1, 1)).T @ x1 for j in range(targets[i])
            ]
            sums[i] = new if i not in sums else [a + b for a, b in zip(sums[i], new, strict=True)]
            if i == next(iter(targets)):
                count[0] += x1.shape[0]

        return f

    hooks = [attn[i].register_forward_pre_hook(keep_input(i)) for i in targets]
    saved = {i: attn[i].weights_hook for i in targets}
    for i in targets:
        attn[i].weights_hook = reduce(i)
    weight = next(model.parameters())
    try:
        with torch.inference_mode():
            for r in range(0, rows.shape[0], 4):
                model(rows[r : r + 4].to(weight.device))
    finally:
        for h in hooks:
            h.remove()
        for i, hook in saved.items():
            attn[i].weights_hook = hook
    return {i: Moments(s[0] / count[0], [t / count[0] for t in s[1:]]) for i, s in sums.items()}


# ------------------------------------------------------------------------------- one layer
def _convert_layer(
    old: Attention,
    new: Attention,
    G2: int,
    method: str,
    moments: Moments | None,
    gen: torch.Generator,
) -> None:
    """Rebuild ``new`` (a copy of ``old``) with ``G2`` KV heads."""
    H, G, D = old.n_heads, old.n_kv_heads, old.head_dim
    W = old.qkv_proj.weight.detach()
    b = old.qkv_proj.bias.detach() if old.qkv_proj.bias is not None else None

    def rows(start: int, n: int) -> Tensor:  # (C1, n*D) affine of heads start..start+n-1
        return F.as_affine(
            W[start * D : (start + n) * D], None if b is None else b[start * D : (start + n) * D]
        )

    Aq = [rows(h, 1) for h in range(H)]
    Ak = [rows(H + g, 1) for g in range(G)]
    Av = [rows(H + G + g, 1) for g in range(G)]
    Wo = old.o_proj.weight.detach().cpu().double()  # (C, H*D)
    groups = cover(old, G2)
    if method == "fit":
        assert moments is not None
        Ak2, Av2, Aq, Wo = _fit(old, groups, Aq, Ak, Av, Wo, moments)
    else:
        Ak2, Av2 = [], []
        for j, members in enumerate(groups):
            if method == "mean":
                n = sum(c for _, c in members)
                Ak2.append(_sum(c * Ak[g] for g, c in members) / n)
                Av2.append(_sum(c * Av[g] for g, c in members) / n)
            elif method == "first":
                g0 = old.kv_head_of(j * (H // G2))
                Ak2.append(Ak[g0])
                Av2.append(Av[g0])
        if method == "random":
            Ak2 = _random(torch.stack(Ak), G2, gen)
            Av2 = _random(torch.stack(Av), G2, gen)
    A = torch.cat([*Aq, *Ak2, *Av2], dim=1)  # (C1, (H + 2 G2) D)
    dtype, device = W.dtype, W.device
    qkv = Linear(old.d_model, A.shape[1], bias=b is not None, device=device, dtype=dtype)
    with torch.no_grad():
        qkv.weight.copy_(A[:-1].T)
        if qkv.bias is not None:
            qkv.bias.copy_(A[-1])
        new.o_proj.weight.copy_(Wo)
    new.qkv_proj = qkv
    new.n_kv_heads = G2
    new.group_sizes = (H // G2,) * G2


def _random(A: Tensor, G2: int, gen: torch.Generator) -> list[Tensor]:
    """``G2`` fresh ``(C1, D)`` projections at the scale of the old ones ``A (G, C1, D)``."""
    w_std = float(A[:, :-1].std())
    b_std = float(A[:, -1].std()) if A[:, -1].numel() > 1 else 0.0
    out = []
    for _ in range(G2):
        w = torch.randn(A.shape[1] - 1, A.shape[2], generator=gen, dtype=torch.float64) * w_std
        bias = torch.randn(1, A.shape[2], generator=gen, dtype=torch.float64) * b_std
        out.append(torch.cat([w, bias]))
    return out


def _fit(
    old: Attention,
    groups: list[list[tuple[int, int]]],
    Aq: list[Tensor],
    Ak: list[Tensor],
    Av: list[Tensor],
    Wo: Tensor,
    moments: Moments,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
    """Shared K/V per new group (`headcount.convert.fit`) and the adapters folded into Q and O."""
    H, D = old.n_heads, old.head_dim
    R2 = H // len(groups)
    rope = old.rope is not None
    if rope and old.rope.rotary_dim != D:  # type: ignore[union-attr]
        raise ConfigError("method 'fit' needs RoPE on the whole head (rotary_dim == head_dim)")
    Mq = [a.T @ moments.S @ a for a in Aq]  # (D, D) query second moment of each query head
    Wo_h = [Wo[:, h * D : (h + 1) * D].T for h in range(H)]  # (D, C) o_proj rows of head h
    Aq, Wo = list(Aq), Wo.clone()
    Ak2, Av2 = [], []
    for j, members in enumerate(groups):
        heads = range(j * R2, (j + 1) * R2)
        olds = [g for g, _ in members]
        w = [float(c) for _, c in members]
        reads = {g: [h for h in heads if old.kv_head_of(h) == g] for g in olds}
        S = moments.by_group[j]
        S_keys = S if rope else F.centred(S)
        if rope:
            energy = [_sum(F.plane_energy(Mq[h]) for h in reads[g]) for g in olds]
            k, Tk = F.shared_rope([Ak[g] for g in olds], energy, S_keys, w)
        else:
            Mk = [_sum(Mq[h] for h in reads[g]) for g in olds]
            k, Tk = F.shared([Ak[g] for g in olds], Mk, S_keys, w)
        Mv = [_sum(Wo_h[h] @ Wo_h[h].T for h in reads[g]) for g in olds]
        v, Tv = F.shared([Av[g] for g in olds], Mv, S, w)
        Ak2.append(k)
        Av2.append(v)
        for t_k, t_v, g in zip(Tk, Tv, olds, strict=True):
            for h in reads[g]:
                Aq[h] = Aq[h] @ t_k.T  # q_h <- T q_h
                Wo[:, h * D : (h + 1) * D] = (t_v @ Wo_h[h]).T  # W_O^h <- T W_O^h
    return Ak2, Av2, Aq, Wo


def _sum(ts: Iterable[Tensor]) -> Tensor:
    return torch.stack(list(ts)).sum(0)
