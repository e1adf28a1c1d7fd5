"""Pure tensor transforms that turn checkpoint tensors into headcount's layout.

Every function takes tensors and sizes and returns a new tensor; none reads files or keeps state.
Legend: H query heads, G KV heads, D head dim, C model dim, F MLP width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headcount.errors import ShapeError
from headcount.kernels.packed import PackedWeight


def llama_cpp_permute(w: Tensor, n_heads: int) -> Tensor:
    """What llama.cpp's converter does to Q/K rows (and biases): per head, interleave the halves.

    HF's rotate-half layout pairs dims ``(j, j + D/2)``; llama.cpp's RoPE pairs ``(2j, 2j + 1)``,
    so its converter reorders each head's rows ``[0..D/2) | [D/2..D)`` into ``0, D/2, 1, D/2+1, ...``.
    ``w`` is ``(n_heads * D, ...)``. Provided for tests and writers; `llama_cpp_unpermute` undoes it.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ShapeError(f"cannot permute {rows} rows into {n_heads} heads of an even head_dim")
    d2 = rows // n_heads // 2
    return w.reshape(n_heads, 2, d2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: Tensor, n_heads: int) -> Tensor:
    """Undo `llama_cpp_permute`: rows of ``(n_heads * D, ...)`` back to the rotate-half layout."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ShapeError(f"cannot unpermute {rows} rows into {n_heads} heads of an even head_dim")
    if isinstance(w, PackedWeight):  # move whole rows of blocks: row r of the result is idx[r]
        return w.take_rows(llama_cpp_unpermute(torch.arange(rows), n_heads))
    d2 = rows // n_heads // 2
    return w.reshape(n_heads, d2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def fuse_rows(*parts: Tensor) -> Tensor:
    """Stack ``nn.Linear`` weights (or biases) along the output dim: QKV ``(H+2G)*D`` or gate|up ``2F``.

    Packed weights stay packed (one segment per run of one GGUF type); packed and dense parts
    together give a dense tensor."""
    if all(isinstance(p, PackedWeight) for p in parts):
        return PackedWeight.cat(parts)  # type: ignore[arg-type]
    dense = [p.dequantize() if isinstance(p, PackedWeight) else p for p in parts]
    return torch.cat(dense, dim=0)


def gguf_matrix(data: Tensor, ne: tuple[int, ...]) -> Tensor:
    """A dequantized GGUF tensor with dims ``ne`` (fastest-varying first, so ``[in, out]`` for a
    matrix) as a torch tensor in ``nn.Linear`` layout ``(out, in)``: the dims reversed."""
    shape = tuple(reversed(ne))
    if data.numel() != int(torch.tensor(shape).prod()):
        raise ShapeError(f"GGUF tensor has {data.numel()} values, its dims {list(ne)} need {shape}")
    return data.reshape(shape)
