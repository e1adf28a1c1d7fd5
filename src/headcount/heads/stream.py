"""Streaming accumulation: reduce each layer's attention weights to scores during the forward pass.

Legend: B batch, H query heads, T query positions, S key positions, L layers.

`capture_weights` sets the ``weights_hook`` of every attention layer for the duration of a
``with`` block; the hook is called with the eager weights ``(B, H, T, S)`` of one layer, which
`ScoreAccumulator.update` reduces to ``(H,)`` sums at once. Only one layer's weights are alive at
any time, so peak memory does not grow with the number of layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from headcount.distributed.process import World
from headcount.errors import ShapeError
from headcount.heads.scorers import SCORERS, ChunkContext
from headcount.nn.attention import Attention


@contextmanager
def capture_weights(
    layers: Sequence[Attention], fn: Callable[[int, Tensor], None]
) -> Iterator[None]:
    """Call ``fn(layer_index, weights (B, H, T, S))`` on every forward of each layer in the block.

    Previous hooks are restored on exit, even after an error.
    """
    old = [layer.weights_hook for layer in layers]

    def make(index: int) -> Callable[[Tensor], None]:
        return lambda w: fn(index, w.detach())

    try:
        for i, layer in enumerate(layers):
            layer.weights_hook = make(i)
        yield
    finally:
        for layer, hook in zip(layers, old, strict=True):
            layer.weights_hook = hook


class ScoreAccumulator:
    """Running sums of named scores, one ``(H_l,)`` vector per layer (layers may differ in H).

    Set `context` to the current chunk's `ChunkContext` before its forward pass; `update` is the
    per-layer callback for `capture_weights`.
    """

    def __init__(self, heads_per_layer: Sequence[int], names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in SCORERS]
        if unknown:
            raise KeyError(f"unknown scorer(s) {unknown}; known: {', '.join(SCORERS)}")
        self.heads_per_layer = list(heads_per_layer)
        self.names = list(names)
        self.sums = {
            n: [torch.zeros(h, dtype=torch.float64) for h in heads_per_layer] for n in names
        }
        self.counts = {
            n: [torch.zeros(h, dtype=torch.float64) for h in heads_per_layer] for n in names
        }
        self.context: ChunkContext | None = None

    @torch.no_grad()
    def update(self, layer: int, weights: Tensor) -> None:
        """Reduce one layer's ``weights (B, H, T, T)`` for the current context."""
        if self.context is None:
            raise RuntimeError("ScoreAccumulator.context must be set before the forward pass")
        if weights.shape[1] != self.heads_per_layer[layer]:
            raise ShapeError(
                f"layer {layer} has {self.heads_per_layer[layer]} heads, weights have {weights.shape[1]}"
            )
        w = weights.float()
        for n in self.names:
            s, c = SCORERS[n](w, self.context)
            self.sums[n][layer] += s.cpu()
            self.counts[n][layer] += c

    def all_sum(self, world: World) -> None:
        """Add the sums and counts of every rank (one all_reduce; nothing in one process).
        Means are taken after this, so unequal shards weigh as in one process."""
        world.all_sum([t for n in self.names for t in (*self.sums[n], *self.counts[n])])

    def means(self) -> dict[str, Tensor]:
        """``{name: (L, H_max)}`` float64 means; NaN where a head does not exist or saw nothing."""
        L, Hm = len(self.heads_per_layer), max(self.heads_per_layer, default=0)
        out = {}
        for n in self.names:
            m = torch.full((L, Hm), math.nan, dtype=torch.float64)
            for layer, (s, c) in enumerate(zip(self.sums[n], self.counts[n], strict=True)):
                m[layer, : s.numel()] = torch.where(c > 0, s / c.clamp(min=1), math.nan)
            out[n] = m
        return out
