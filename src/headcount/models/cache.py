"""The KV caches of a whole model: one `KVCache` per layer, sized by that layer's KV heads
(a sliding-window layer's is a ring of its window)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from headcount.errors import ShapeError
from headcount.nn import KVCache


class ModelCache:
    """Per-layer caches ``(B, G_l, S_max, D)`` that advance together; index it by layer."""

    def __init__(self, layers: list[KVCache]) -> None:
        if not layers:
            raise ShapeError("a model cache needs at least one layer")
        self.layers = layers

    @classmethod
    def for_layers(
        cls,
        n_kv_heads: tuple[int, ...],
        head_dim: int,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        windows: tuple[int | None, ...] | None = None,
    ) -> ModelCache:
        """One cache per layer; ``windows[l]`` makes layer l's a ring of that many positions."""
        windows = windows or (None,) * len(n_kv_heads)
        if len(windows) != len(n_kv_heads):
            raise ShapeError(f"{len(windows)} windows for {len(n_kv_heads)} layers")
        return cls(
            [
                KVCache(batch_size, max_len, g, head_dim, dtype=dtype, device=device, window=w)
                for g, w in zip(n_kv_heads, windows, strict=True)
            ]
        )

    def __getitem__(self, layer: int) -> KVCache:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[KVCache]:
        return iter(self.layers)

    @property
    def length(self) -> int:
        """Positions cached so far (the same in every layer)."""
        return self.layers[0].length

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers)

    def reset(self) -> None:
        for c in self.layers:
            c.reset()

    def __repr__(self) -> str:
        return (
            f"ModelCache(layers={len(self)}, batch_size={self.batch_size}, max_len={self.max_len}, "
            f"length={self.length}, nbytes={self.nbytes:,})"
        )
