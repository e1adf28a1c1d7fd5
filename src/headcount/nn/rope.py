"""Rotary position embeddings, Llama convention (rotate-half).

Legend: B batch, N heads, T positions, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from headcount.errors import ConfigError, DTypeError, ShapeError


class RoPE(nn.Module):
    """Rotate pairs ``(x[i], x[i + D/2])`` by ``position * base ** (-2i / D)``.

    This is the "rotate-half" layout of HuggingFace Llama, Mistral and Qwen2. ``rotary_dim``
    (default ``head_dim``) rotates only the first dims, as partial-rotary models do.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, rotary_dim: int | None = None) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if head_dim <= 0 or rotary_dim <= 0 or rotary_dim > head_dim or rotary_dim % 2:
            raise ConfigError(
                f"RoPE needs 0 < rotary_dim <= head_dim and rotary_dim even; got head_dim={head_dim}, "
                f"rotary_dim={rotary_dim}"
            )
        if base <= 1:
            raise ConfigError(f"RoPE base must be > 1, got {base}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = float(base)
        inv_freq = 1.0 / (
            self.base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        )
        # A plain attribute, not a buffer: `model.to(torch.bfloat16)` must not round the angles.
        self.inv_freq = inv_freq.float()
        # dtype -> (cos, sin, signed sin) by position; see `table`
        self._tables: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}
        # dtype -> (position, rotation matrix) of the last position asked; see `rotation`
        self._rotations: dict[torch.dtype, tuple[int, Tensor]] = {}

    def table(
        self, n: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """cos, sin and the signed sin ``[-sin_1 | sin_2]`` of positions ``0 .. >= n-1``, each
        ``(>= n, rotary_dim)``: a table that grows on demand (every layer asks for the same
        positions). Entries are ``cos(float32(pos) * inv_freq)`` computed in float32, exactly as
        HuggingFace computes them per call, so results are bit-identical to that.

        Built outside inference mode even when asked inside it: a table first built while
        decoding under ``torch.inference_mode()`` must still serve a forward that autograd
        records (inference tensors cannot be saved for backward)."""
        table = self._tables.get(dtype)
        if table is None or table[0].shape[0] < n or table[0].device != device:
            n = max(n, 2 * table[0].shape[0] if table is not None else 256)
            with torch.inference_mode(False):
                pos = torch.arange(n, device=device, dtype=torch.float32)
                freqs = pos[:, None] * self.inv_freq.to(device)  # (n, rotary_dim/2)
                emb = torch.cat((freqs, freqs), dim=-1)  # (n, rotary_dim)
                cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
                half = self.rotary_dim // 2
                table = (cos, sin, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1))
            self._tables[dtype] = table
        return table

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin of shape ``(T, rotary_dim)`` or ``(B, T, rotary_dim)`` for integer
        positions, looked up in `table`."""
        table = self._lookup(positions, dtype)
        return table[0], table[1]

    def _lookup(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        if (
            positions.dtype.is_floating_point
            or positions.dtype.is_complex
            or positions.dtype == torch.bool
        ):
            raise DTypeError(f"positions must be an integer tensor, got {positions.dtype}")
        if positions.numel() == 0:
            shape = (*positions.shape, self.rotary_dim)
            zero = positions.new_zeros(shape, dtype=dtype)
            return zero, zero, zero
        lo, hi = (int(v) for v in positions.aminmax())
        if lo < 0:  # indexing the table with it would read an entry from its end
            raise ShapeError(f"positions must be >= 0, got {lo}")
        table = self.table(hi + 1, dtype, positions.device)
        if positions.dtype != torch.long:  # uint8 would index as a mask
            positions = positions.long()
        return table[0][positions], table[1][positions], table[2][positions]

    def rotate(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """``x (..., D)`` rotated by ``cos`` and ``signed_sin`` rows of `table` broadcast to it,
        every dim of ``x`` (``rotary_dim`` of them): ``x * cos + swap_halves(x) *
        signed_sin``, which equals rotate-half's ``x * cos + rotate_half(x) * sin``, rounded
        after each op as HuggingFace's is (bfloat16 results equal theirs bit for bit; one
        ``addcmul`` would round the sum once and differ in the last bit). Four ops for any
        number of heads (``roll`` by D/2 swaps the halves: ``[x2 | x1]``)."""
        return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin

    def rotation(self, position: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(D, D)``: the rotation of one position as a matrix, ``x @ R == rotate(x, cos[p],
        signed_sin[p])`` (to rounding): ``R[i, i] = cos_i``, ``R[(i + D/2) % D, i] =
        signed_sin_i``. Kept for the last position asked (every layer of a decode step asks for
        the same one), so a step's RoPE is one matrix product per layer. Needs ``rotary_dim ==
        head_dim``."""
        last = self._rotations.get(dtype)
        if last is not None and last[0] == position and last[1].device == device:
            return last[1]
        cos, _, signed_sin = self.table(position + 1, dtype, device)
        D = self.rotary_dim
        with torch.inference_mode(False):  # like the table: usable where autograd records
            r = torch.diag(cos[position]) + torch.diag(signed_sin[position]).roll(D // 2, 0)
        self._rotations[dtype] = (position, r)
        return r  # (D, D)

    def rotate_at(self, x: Tensor, position: int) -> Tensor:
        """``x (..., D)`` rotated at one absolute ``position`` (the decode step's RoPE, all heads
        at once). float32/float64: one matrix product with `rotation`; bfloat16/float16 (whose
        matrix products are slow on CPUs without half units, and round differently): `rotate`. Needs ``rotary_dim ==
        head_dim``."""
        if x.dtype in (torch.float32, torch.float64):
            r = self.rotation(position, x.dtype, x.device)
            # an explicit 2-D mm: torch.matmul takes its batched path (13 ops) for the heads of a
            # split, whose batch stride is the whole fused projection's row
            return torch.mm(x.reshape(-1, x.shape[-1]), r).view(x.shape)
        cos, _, signed_sin = self.table(position + 1, x.dtype, x.device)
        return self.rotate(x, cos.select(0, position), signed_sin.select(0, position))

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x (B, N, T, D)`` at absolute ``positions`` of shape ``(T,)`` or ``(B, T)``."""
        if x.shape[-1] != self.head_dim:
            raise ShapeError(f"RoPE built for head_dim={self.head_dim}, got last dim {x.shape[-1]}")
        T = x.shape[-2]
        if positions.shape[-1] != T or positions.ndim not in (1, 2):
            raise ShapeError(
                f"positions must be (T,) or (B, T) with T={T}, got {tuple(positions.shape)}"
            )
        cos, _, signed_sin = self._lookup(positions, x.dtype)
        if cos.ndim == 3:  # (B, T, R) -> (B, 1, T, R): one rotation for every head
            cos, signed_sin = cos[:, None], signed_sin[:, None]
        r = self.rotary_dim
        if r == self.head_dim:
            return self.rotate(x, cos, signed_sin)
        return torch.cat((self.rotate(x[..., :r], cos, signed_sin), x[..., r:]), dim=-1)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base:g}"
