"""Head-parallel (tensor-parallel) decoding: each rank holds a share of every layer's heads.

Legend: N ranks, B batch, T new positions, C model dim, F MLP width, L layers, H query heads of a
layer, G its KV heads, D head dim; H_r, G_r: the heads rank r holds.

Attention (Megatron's split, by heads): rank r keeps a contiguous block of query heads and the KV
heads they read, so ``qkv_proj`` is column-parallel (its Q, K and V rows of those heads) and
``o_proj`` row-parallel (their columns); each rank's output is a partial sum over its heads and one
all-reduce of ``(B, T, C)`` per layer completes it. Each rank's KV cache holds its G_r KV heads.

How heads are split (`plan_layer`): ``"groups"`` deals whole KV groups to ranks (no KV head held
twice; needs G >= N); ``"heads"`` gives ranks query-head counts that differ by at most one and a
group cut by a rank boundary has its KV head on both ranks (replicated K/V rows and cache);
``"auto"`` (the default) keeps groups whole unless that leaves a rank more query heads than the
even split would. SmolLM2 (9 query heads in 3 groups of 3): N = 3 gives one group per rank;
N = 2 gives ranks 4 and 5 query heads, the middle group's KV head on both.

Why the attention does not use ``ColwiseParallel``/``RowwiseParallel``: those shard a weight in
equal contiguous chunks (``Shard(0)``). The fused ``qkv_proj`` rows are laid out [Q | K | V], so an
equal chunk mixes Q of some heads with K of others; reordering the rows per rank fixes that only
when every rank gets equally many Q and KV rows, which neither a pruned layer (groups of
different sizes) nor 3 groups on 2 ranks allow. The attention is therefore a smaller `Attention`
per rank with exactly its rows (`ShardedAttention`) and an explicit all-reduce. The MLP has no such
constraint once its fused [gate | up] rows are reordered so that each rank's equal chunk is
[gate_r | up_r]: it uses ``ColwiseParallel`` on ``gate_up`` and ``RowwiseParallel`` on ``down`` (one
all-reduce). Embeddings, norms and the output projection stay replicated.

Communication per layer and forward: 2 all-reduces of ``B * T * C`` elements (attention, MLP); a
ring all-reduce sends ``2 (N - 1) / N * B * T * C`` elements per rank each time.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from headcount.distributed.process import World
from headcount.errors import ConfigError
from headcount.models import Decoder
from headcount.nn import Attention

Split = Literal["auto", "groups", "heads"]


@dataclass(frozen=True)
class LayerShard:
    """What one rank holds of one layer: query heads ``heads`` and KV heads ``groups`` (global
    indices, contiguous), ``group_sizes``: its query heads per KV head it holds."""

    heads: range
    groups: range
    group_sizes: tuple[int, ...]


def _bounds(group_sizes: tuple[int, ...]) -> list[int]:
    out = [0]
    for s in group_sizes:
        out.append(out[-1] + s)
    return out  # (G + 1,): first query head of each group, then H


def _group_cuts(group_sizes: tuple[int, ...], n: int) -> list[int] | None:
    """Cuts (indices into the group bounds) of ``n`` contiguous non-empty runs of whole groups
    with the smallest largest run of query heads; None when there are fewer groups than ranks."""
    G = len(group_sizes)
    if n > G:
        return None
    b = _bounds(group_sizes)
    # best[k][g]: smallest max load of groups 0..g-1 in k runs, with the cut that achieves it
    inf = float("inf")
    best = [[inf] * (G + 1) for _ in range(n + 1)]
    cut = [[0] * (G + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for k in range(1, n + 1):
        for g in range(k, G + 1):
            for p in range(k - 1, g):
                v = max(best[k - 1][p], b[g] - b[p])
                if v < best[k][g]:
                    best[k][g], cut[k][g] = v, p
    cuts = [G]
    for k in range(n, 0, -1):
        cuts.append(cut[k][cuts[-1]])
    return cuts[::-1]  # (n + 1,) group indices


def plan_layer(
    group_sizes: tuple[int, ...], n: int, rank: int, split: Split = "auto"
) -> LayerShard:
    """Rank ``rank``'s share of a layer whose KV groups have ``group_sizes`` query heads, over
    ``n`` ranks (see the module docstring for ``split``). Raises `ConfigError` when the layer has
    fewer query heads (or, with ``"groups"``, fewer groups) than ranks."""
    H = sum(group_sizes)
    if n > H:
        raise ConfigError(f"a layer with {H} query heads cannot be split over {n} ranks")
    b = _bounds(group_sizes)
    cuts = _group_cuts(group_sizes, n)
    even = -(-H // n)  # ceil(H / n): the largest share of the even split
    if split == "groups" and cuts is None:
        raise ConfigError(f"{len(group_sizes)} KV groups cannot be dealt whole to {n} ranks")
    whole = cuts is not None and (
        split == "groups"
        or (split == "auto" and max(b[c1] - b[c0] for c0, c1 in itertools.pairwise(cuts)) <= even)
    )
    if whole:
        assert cuts is not None
        heads = range(b[cuts[rank]], b[cuts[rank + 1]])
    else:
        heads = range(H * rank // n, H * (rank + 1) // n)
    g0 = max(g for g in range(len(group_sizes)) if b[g] <= heads.start)
    g1 = min(g for g in range(1, len(group_sizes) + 1) if b[g] >= heads.stop)
    sizes = tuple(min(b[g + 1], heads.stop) - max(b[g], heads.start) for g in range(g0, g1))
    return LayerShard(heads, range(g0, g1), sizes)


class ShardedAttention(Attention):
    """One rank's heads of an `Attention` (`LayerShard`): an `Attention` of H_r query and G_r KV
    heads whose output, a partial sum over its heads, is all-reduced over the group; the output
    bias is added once, after the sum. ``heads`` / ``groups``: the global indices it holds.
    Weights hooks and ``return_weights`` see this rank's heads ``(B, H_r, T, S)``."""

    def __init__(self, full: Attention, shard: LayerShard, group: Any = None) -> None:
        w = full.qkv_proj.weight
        super().__init__(
            full.d_model,
            len(shard.heads),
            len(shard.groups),
            full.head_dim,
            bias=full.qkv_proj.bias is not None,
            dropout=full.dropout,
            rope=full.rope,
            scale=full.scale,
            o_bias=False,
            group_sizes=shard.group_sizes,
            window=full.window,
            q_norm=full.q_norm,
            k_norm=full.k_norm,
            device=w.device,
            dtype=w.dtype,
        )
        H, G, D = full.n_heads, full.n_kv_heads, full.head_dim
        hs, gs = shard.heads, shard.groups
        rows = torch.cat(
            [
                torch.arange(hs.start * D, hs.stop * D),  # Q rows of the rank's heads
                torch.arange((H + gs.start) * D, (H + gs.stop) * D),  # K rows of its KV heads
                torch.arange((H + G + gs.start) * D, (H + G + gs.stop) * D),  # V rows
            ]
        )
        with torch.no_grad():
            self.qkv_proj.weight.copy_(w[rows])
            if full.qkv_proj.bias is not None:
                self.qkv_proj.bias.copy_(full.qkv_proj.bias[rows])
            self.o_proj.weight.copy_(full.o_proj.weight[:, hs.start * D : hs.stop * D])
        ob = full.o_proj.bias
        self.out_bias = None if ob is None else nn.Parameter(ob.detach().clone())
        if full.head_gate is not None:
            self.head_gate = full.head_gate[hs.start : hs.stop].clone()
        self.backend = full.backend
        self.heads, self.groups, self.group = hs, gs, group

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        y, weights = out if isinstance(out, tuple) else (out, None)
        y = dist_fn.all_reduce(y, group=self.group or dist.group.WORLD)  # (B, T, C), autograd-aware
        if self.out_bias is not None:
            y = y + self.out_bias
        return (y, weights) if isinstance(out, tuple) else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, kv_heads={self.groups}"


def _shard_mlp(mlp: nn.Module, mesh: Any, n: int) -> None:
    """``ColwiseParallel`` on the fused ``gate_up`` (rows reordered to [gate_r | up_r] per rank)
    and ``RowwiseParallel`` on ``down``: one all-reduce."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    gate_up = getattr(mlp, "gate_up", None)
    if not isinstance(gate_up, nn.Linear) or not isinstance(getattr(mlp, "down", None), nn.Linear):
        raise ConfigError(f"cannot shard {type(mlp).__name__}: expected gate_up and down Linears")
    F = gate_up.out_features // 2
    if F % n:
        raise ConfigError(f"the MLP width d_ff={F} does not divide over {n} ranks")
    f = F // n
    order = torch.cat(
        [
            torch.cat([torch.arange(r * f, (r + 1) * f), torch.arange(F + r * f, F + (r + 1) * f)])
            for r in range(n)
        ]
    )
    with torch.no_grad():
        gate_up.weight.copy_(gate_up.weight[order])
        if gate_up.bias is not None:
            gate_up.bias.copy_(gate_up.bias[order])
    parallelize_module(mlp, mesh, {"gate_up": ColwiseParallel(), "down": RowwiseParallel()})


def shard_heads(model: Decoder, world: World, *, split: Split = "auto") -> Decoder:
    """Shard ``model`` (the same weights on every rank) over ``world``'s ranks, in place: each
    layer's attention becomes this rank's `ShardedAttention`, the MLP is column/row-parallel.

    Every rank then runs the same forward (same ids) and gets the full logits; ``new_cache()``
    holds only this rank's KV heads (``model.config`` describes this rank's heads per layer).
    The sharded model is for inference and analysis; save the model before sharding. Returns
    ``model``. Raises `DistributedError` when the ranks' models differ.
    """
    if not isinstance(model, Decoder):
        raise ConfigError(f"head-parallel sharding needs a Decoder, got {type(model).__name__}")
    if not world.distributed:
        return model
    if getattr(model, "head_shards", None) is not None:
        raise ConfigError("this model is sharded already")
    fingerprint = [float(p.detach().double().sum()) for p in model.parameters()]
    world.check_same("model", {"config": model.config.to_dict(), "weights": fingerprint})
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(world.device.type, (world.size,))
    shards = []
    for layer, full in zip(model.layers, model.attention_layers(), strict=True):
        shard = plan_layer(full.group_sizes, world.size, world.rank, split)
        layer.attn = ShardedAttention(full, shard, mesh.get_group())
        shards.append(shard)
        _shard_mlp(cast(nn.Module, layer.mlp), mesh, world.size)
    cfg = model.config
    model.config = dataclasses.replace(
        cfg,
        n_heads=tuple(len(s.heads) for s in shards),
        n_kv_heads=tuple(len(s.groups) for s in shards),
        group_sizes=tuple(s.group_sizes for s in shards),
    )
    model.head_shards = shards  # type: ignore[assignment]
    return model


def analyze_sharded(model: Decoder, text: str, world: World, **kwargs: Any) -> Any:
    """`headcount.heads.analyze` on a model `shard_heads` split: every rank runs the same passes
    and scores its own heads; the tables are gathered into whole-model ``(L, H_max)`` tables with
    the global head numbers, and the roles assigned on them. Every rank returns the result;
    ``patterns`` (thumbnails) are left empty. ``kwargs`` go to ``analyze``."""
    from headcount.heads import analyze
    from headcount.heads.roles import assign_roles

    shards: list[LayerShard] | None = getattr(model, "head_shards", None)
    if shards is None:
        raise ConfigError("the model is not sharded: call shard_heads first")
    local = analyze(model, text, world=World(), **kwargs)  # same passes on every rank
    parts = world.gather((local.scores, local.syntax, local.kv_groups))
    all_heads = world.gather([s.heads for s in shards])  # [rank][layer] global query heads
    all_groups = world.gather([s.groups for s in shards])  # [rank][layer] global KV heads
    total = [
        sum(len(all_heads[r][layer]) for r in range(world.size)) for layer in range(len(shards))
    ]

    def merge(tables: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        out = {}
        for name in tables[0]:
            t = torch.full((len(total), max(total)), float("nan"), dtype=torch.float64)
            for r, tab in enumerate(tables):
                for layer, hs in enumerate(all_heads[r]):
                    t[layer, hs.start : hs.stop] = tab[name][layer, : len(hs)]
            out[name] = t
        return out

    local.scores = merge([p[0] for p in parts])
    local.syntax = merge([p[1] for p in parts]) if local.syntax else {}
    local.kv_groups = [
        [all_groups[r][layer].start + g for r in range(world.size) for g in parts[r][2][layer]]
        for layer in range(len(total))
    ]
    local.heads_per_layer = total
    local.roles = assign_roles(
        local.scores, total, local.syntax, local.syntax_counts, local.syntax_baseline
    )
    local.patterns = []
    local.meta["head_parallel"] = world.size
    return local
