"""A preallocated key/value cache that holds KV heads, never copies expanded to query heads.

A sliding-window layer's cache (``window=W``) is a ring of ``min(W, S_max)`` slots: position
``p`` is written to slot ``p % W``, and ``length`` keeps counting absolute positions, so RoPE
and the band mask stay right while the memory stays flat beyond W.

Legend: B batch, G KV heads, S cached positions, S_max capacity, W window, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from headcount.errors import CacheOverflowError, ConfigError, DTypeError, ShapeError


class KVCache(nn.Module):
    """Static per-layer cache: ``k`` and ``v`` of shape ``(B, G, S_max, D)``, written in place.

    ``append(k, v)`` writes the new positions after the ``length`` already held and returns
    views ``(B, G, length, D)`` of everything cached; nothing is concatenated or expanded.

    ``window=W`` (a sliding-window layer): the buffers hold ``min(W, S_max)`` slots, position
    ``p`` lives in slot ``p % W``; ``length`` still counts every position appended and may
    reach ``max_len``. ``append`` then returns the slots in slot order and `positions` gives
    the absolute position each one holds.
    """

    k: Tensor
    v: Tensor

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("max_len", max_len),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
            *((("window", window),) if window is not None else ()),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"KVCache {name} must be a positive integer, got {value!r}")
        if not (dtype.is_floating_point):
            raise DTypeError(f"KVCache dtype must be a floating-point dtype, got {dtype}")
        self.window = window
        self._max_len = max_len
        slots = max_len if window is None else min(window, max_len)
        shape = (batch_size, n_kv_heads, slots, head_dim)  # (B, G, S_max or min(W, S_max), D)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        """The most positions this cache accepts (absolute; a windowed cache keeps the last W)."""
        return self._max_len

    @property
    def slots(self) -> int:
        """Positions the buffers hold: ``max_len``, or ``min(window, max_len)`` for a window."""
        return self.k.shape[2]

    @property
    def held(self) -> int:
        """Positions currently stored: ``length``, at most ``slots``."""
        return min(self.length, self.slots)

    def positions(self, device: torch.device | None = None) -> Tensor:
        """``(held,)``: the absolute position stored in each of the first ``held`` slots."""
        n, p = self.held, self.length
        slot = torch.arange(n, device=device)
        if self.window is None or p <= self.slots:
            return slot
        return p - 1 - torch.remainder(p - 1 - slot, self.slots)

    def recent(self, n: int) -> tuple[Tensor, Tensor]:
        """The last ``min(n, held)`` keys and values in position order, ``(B, G, n, D)`` each
        (views for a plain cache, copies for a ring that has wrapped)."""
        n = min(n, self.held)
        start = self.length - n
        if self.window is None or self.length <= self.slots:
            return self.k[:, :, start : self.length], self.v[:, :, start : self.length]
        idx = torch.arange(start, self.length, device=self.k.device) % self.slots
        return self.k.index_select(2, idx), self.v.index_select(2, idx)

    @property
    def head_dim(self) -> int:
        return self.k.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated K and V buffers."""
        return self.k.nbytes + self.v.nbytes

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept and overwritten later)."""
        self.length = 0

    def check_compatible(
        self, batch_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        """Raise a clear error if keys of this shape and dtype cannot go into this cache."""
        if n_kv_heads != self.n_kv_heads or head_dim != self.head_dim:
            raise ShapeError(
                f"cache holds n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim} but the "
                f"attention produces n_kv_heads={n_kv_heads}, head_dim={head_dim}"
            )
        if batch_size != self.batch_size:
            raise ShapeError(
                f"cache batch_size={self.batch_size} but the input has batch {batch_size}"
            )
        if dtype != self.dtype:
            raise DTypeError(f"cache dtype is {self.dtype} but the keys are {dtype}")

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v (B, G, T, D)`` at positions ``length .. length+T-1``.

        Returns views ``(B, G, length, D)`` of all cached keys and values (a windowed cache:
        its ``held`` slots in slot order, see `positions`). Raises
        `CacheOverflowError` (leaving the cache unchanged) if they do not fit.
        """
        if k.shape != v.shape or k.ndim != 4:
            raise ShapeError(
                f"k and v must both be (B, G, T, D); got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        B, G, T, D = k.shape
        kb, vb = self.k, self.v
        if kb.shape[0] != B or kb.shape[1] != G or kb.shape[3] != D or kb.dtype != k.dtype:
            self.check_compatible(B, G, D, k.dtype)  # raises, naming what differs
        end = self.length + T
        if end > self._max_len:
            raise CacheOverflowError(
                f"KV cache overflow: {self.length} cached + {T} new = {end} positions "
                f"> max_len={self.max_len}; create the cache with a larger max_len"
            )
        if self.window is None:
            kb.narrow(2, self.length, T).copy_(k)
            vb.narrow(2, self.length, T).copy_(v)
            self.length = end
            return kb.narrow(2, 0, end), vb.narrow(2, 0, end)
        keep = min(T, self.slots)  # older new positions would be overwritten at once
        if keep == 1:  # one position (a decode step): a slice, no index tensor
            slot = (end - 1) % self.slots
            self.k[:, :, slot : slot + 1].copy_(k[:, :, T - 1 :])
            self.v[:, :, slot : slot + 1].copy_(v[:, :, T - 1 :])
        else:
            idx = torch.arange(end - keep, end, device=self.k.device) % self.slots
            self.k.index_copy_(2, idx, k[:, :, T - keep :])
            self.v.index_copy_(2, idx, v[:, :, T - keep :])
        self.length = end
        return self.k[:, :, : self.held], self.v[:, :, : self.held]

    def append_position(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """`append` of one position, ``k, v (B, G, D)`` (a decode step): the same result and
        errors, in fewer ops (one strided copy per buffer, no index tensor for a ring)."""
        if k.shape != v.shape or k.ndim != 3:
            raise ShapeError(
                f"k and v must both be (B, G, D); got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        B, G, D = k.shape
        taken = self.take_position(B, G, D, k.dtype)
        if taken is None:
            return self.append(k.unsqueeze(2), v.unsqueeze(2))  # raises, naming the problem
        slot, held = taken
        kb, vb = self._buffers["k"], self._buffers["v"]  # plain dict: no nn.Module lookup
        assert kb is not None and vb is not None
        kb.select(2, slot).copy_(k)  # shapes and dtype checked: the copies cannot fail
        vb.select(2, slot).copy_(v)
        return kb.narrow(2, 0, held), vb.narrow(2, 0, held)

    def take_position(self, B: int, G: int, D: int, dtype: torch.dtype) -> tuple[int, int] | None:
        """Claim the next position for a kernel that writes it itself (one decode step of
        ``(B, G, D)`` keys and values, ``headcount::decode_attention``): returns ``(slot,
        held)`` (the slot to write, the slots to attend to afterwards) and counts the position,
        or None, changing nothing, when it does not fit or the shapes differ (`append_position`
        then raises, naming the problem)."""
        kb = self._buffers["k"]  # plain dict: no nn.Module lookup
        assert kb is not None
        length = self.length
        if (
            length >= self._max_len
            or kb.shape[0] != B
            or kb.shape[1] != G
            or kb.shape[3] != D
            or kb.dtype != dtype
        ):
            return None
        slots = kb.shape[2]  # a plain cache never wraps: length < slots
        end = length + 1
        # object.__setattr__: the value nn.Module.__setattr__ would store, ~10x cheaper
        object.__setattr__(self, "length", end)
        return length % slots, (end if end < slots else slots)

    def extra_repr(self) -> str:
        return (
            f"batch_size={self.batch_size}, max_len={self.max_len}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, dtype={self.dtype}, length={self.length}"
            + ("" if self.window is None else f", window={self.window}")
        )
