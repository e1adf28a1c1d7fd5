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
        self._tables: dict[
            torch.dtype, tuple[Tensor, Tensor]
        ] = {}  # dtype -> (cos, sin) by position

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin of shape ``(T, rotary_dim)`` or ``(B, T, rotary_dim)`` for integer positions.

        Looked up in a table that grows on demand (every layer of a model asks for the same
        positions). Table entries are computed as ``cos(float32(pos) * inv_freq)`` in float32,
        exactly as HuggingFace computes them per call, so results are bit-identical to that.
        """
        if (
            positions.dtype.is_floating_point
            or positions.dtype.is_complex
            or positions.dtype == torch.bool
        ):
            raise DTypeError(f"positions must be an integer tensor, got {positions.dtype}")
        if positions.numel() == 0:
            shape = (*positions.shape, self.rotary_dim)
            return positions.new_zeros(shape, dtype=dtype), positions.new_zeros(shape, dtype=dtype)
        lo, hi = (int(v) for v in positions.aminmax())
        if lo < 0:  # indexing the table with it would read an entry from its end
            raise ShapeError(f"positions must be >= 0, got {lo}")
        need = hi + 1
        table = self._tables.get(dtype)
        if table is None or table[0].shape[0] < need or table[0].device != positions.device:
            n = max(need, 2 * table[0].shape[0] if table is not None else 256)
            pos = torch.arange(n, device=positions.device, dtype=torch.float32)
            freqs = pos[:, None] * self.inv_freq.to(positions.device)  # (n, rotary_dim/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, rotary_dim)
            table = (emb.cos().to(dtype), emb.sin().to(dtype))
            self._tables[dtype] = table
        if positions.dtype != torch.long:  # uint8 would index as a mask
            positions = positions.long()
        return table[0][positions], table[1][positions]

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x (B, N, T, D)`` at absolute ``positions`` of shape ``(T,)`` or ``(B, T)``."""
        if x.shape[-1] != self.head_dim:
            raise ShapeError(f"RoPE built for head_dim={self.head_dim}, got last dim {x.shape[-1]}")
        T = x.shape[-2]
        if positions.shape[-1] != T or positions.ndim not in (1, 2):
            raise ShapeError(
                f"positions must be (T,) or (B, T) with T={T}, got {tuple(positions.shape)}"
            )
        cos, sin = self.cos_sin(positions, x.dtype)
        if cos.ndim == 3:  # (B, T, R) -> (B, 1, T, R): one rotation for every head
            cos, sin = cos[:, None], sin[:, None]
        r = self.rotary_dim
        x_rot, x_pass = x[..., :r], x[..., r:]
        x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
        rotated = torch.cat((-x2, x1), dim=-1)  # rotate_half
        out = x_rot * cos + rotated * sin
        return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base:g}"
