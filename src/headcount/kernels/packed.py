"""GGUF quantised weights kept packed in memory: `PackedWeight` and `PackedLinear`.

A `PackedWeight` holds the raw GGUF blocks of a ``(N, K)`` matrix, one row of blocks per
output feature (``uint8 (N, K / block * bytes)``), in one or more *segments* of rows: a fused
projection whose parts have different types (Gemma 3's Q4_K_M file mixes Q5_0, Q8_0, Q4_K and
Q6_K in one layer's Q | K | V) keeps each part in its own type. It looks like a float tensor
(``dtype`` float32 or bfloat16, shape ``(N, K)``):

- ``F.linear(x, w)`` with up to `MAX_ROWS` input rows (decoding) runs the packed GEMV kernel
  (`headcount.kernels.gemv_packed`: blocks dequantised in registers, float32 sums); with more
  rows (prefill) the weight is dequantised into a buffer reused by every weight of the model
  (per thread) and the float GEMM runs on it, so memory stays near the packed size;
- ``F.embedding(ids, w)`` dequantises only the looked-up rows;
- every other operation sees the dequantised tensor (correct, not fast): per-head weight views,
  analysis, pruning and conversion work unchanged; gradients flow to the input, never to the
  packed weight (it is frozen).

Without the compiled kernels (``HEADCOUNT_KERNELS=0``, no compiler) blocks are dequantised by
``gguf.quants.dequantize``, the reference the kernels equal value for value.

`PackedLinear` is ``nn.Linear`` on a `PackedWeight`; its ``forward`` calls the operator
directly (no ``__torch_function__`` round trip on the decode path).

Legend: N output features, K input features, M input rows (batch × positions).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount import kernels
from headcount.errors import DTypeError, ShapeError
from headcount.kernels.quantized import FLOAT_DTYPES, QuantizedWeight

__all__ = ["PackedLinear", "PackedWeight", "dense_state_dict", "packed_linear"]

_FLOAT_DTYPES = FLOAT_DTYPES


class _Scratch(threading.local):
    """Per-thread float32 buffer the prefill path dequantises weights into (grown, never shrunk)."""

    buf: Tensor | None = None

    def take(self, n: int, k: int) -> Tensor:
        if self.buf is None or self.buf.numel() < n * k:
            self.buf = torch.empty(n * k, dtype=torch.float32)
        return self.buf[: n * k].view(n, k)


_SCRATCH = _Scratch()


def _dequant(blocks: Tensor, qtype: int, k: int, out: Tensor | None = None) -> Tensor:
    """float32 ``(n, k)`` of packed rows; the kernel when available, else gguf's reference."""
    if kernels.available():
        return kernels.dequantize_packed(blocks, qtype, k, out)
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    data = dequantize(blocks.numpy(), GGMLQuantizationType(qtype))
    dense = torch.from_numpy(np.asarray(data, dtype=np.float32))
    if out is None:
        return dense.reshape(blocks.shape[0], k)
    return out.copy_(dense.reshape(blocks.shape[0], k))


class PackedWeight(QuantizedWeight):
    """A float-looking ``(N, K)`` tensor stored as GGUF blocks (see the module docstring).

    ``segments``: ``(ggml type code, uint8 rows (n_i, K / block * bytes))`` with ``sum n_i = N``.
    """

    segments: tuple[tuple[int, Tensor], ...]
    k: int

    @staticmethod
    def __new__(
        cls, segments: Sequence[tuple[int, Tensor]], k: int, dtype: torch.dtype = torch.float32
    ) -> PackedWeight:
        n = sum(int(b.shape[0]) for _, b in segments)
        return torch.Tensor._make_wrapper_subclass(
            cls, (n, k), dtype=dtype, device=torch.device("cpu"), requires_grad=False
        )

    def __init__(
        self, segments: Sequence[tuple[int, Tensor]], k: int, dtype: torch.dtype = torch.float32
    ) -> None:
        if dtype not in _FLOAT_DTYPES:
            raise DTypeError(
                f"PackedWeight's float dtype must be one of {_FLOAT_DTYPES}, got {dtype}"
            )
        if not segments:
            raise ShapeError("PackedWeight needs at least one segment of rows")
        for qtype, blocks in segments:
            if qtype not in kernels.QTYPES:
                raise DTypeError(
                    f"ggml type {qtype} cannot stay packed; packed types: "
                    + ", ".join(n for n, _, _ in kernels.QTYPES.values())
                )
            name, block, size = kernels.QTYPES[qtype]
            want = k // block * size
            if (
                k % block
                or blocks.dtype != torch.uint8
                or blocks.ndim != 2
                or blocks.shape[1] != want
            ):
                raise ShapeError(
                    f"{name} rows of K={k} must be uint8 (n, {want}) with K % {block} == 0, got "
                    f"{blocks.dtype} {tuple(blocks.shape)}"
                )
        self.segments = tuple((int(q), b.contiguous()) for q, b in segments)
        self.k = int(k)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, rows: np.ndarray, qtype: int, k: int) -> PackedWeight:
        """A GGUF tensor's blocks, ``rows (N, row bytes)`` uint8 (copied into memory torch owns),
        in the layout the kernels read best (`headcount.kernels.kernel_layout`: Q4_1 and Q8_0 rows
        are regrouped for int16 dot products unless ``HEADCOUNT_PACKED_ACT`` says otherwise)."""
        blocks = torch.from_numpy(np.array(rows, dtype=np.uint8, copy=True))
        if blocks.ndim == 2 and qtype in kernels.QTYPES:
            qtype, blocks = kernels.kernel_layout(blocks, qtype, k)
        return cls([(qtype, blocks)], k)

    def take_rows(self, index: Tensor) -> PackedWeight:
        """The rows ``index`` (a permutation or selection of ``0..N-1``) as a new `PackedWeight`."""
        if len(self.segments) == 1:
            qtype, blocks = self.segments[0]
            return PackedWeight([(qtype, blocks[index])], self.k, self.dtype)
        starts = np.cumsum([0] + [b.shape[0] for _, b in self.segments])
        seg_of = np.searchsorted(starts, index.numpy(), side="right") - 1
        out: list[tuple[int, Tensor]] = []
        for s, i in zip(seg_of.tolist(), index.tolist(), strict=True):
            qtype, blocks = self.segments[s]
            row = blocks[i - int(starts[s])][None]
            if out and out[-1][0] == qtype:
                out[-1] = (qtype, torch.cat([out[-1][1], row]))
            else:
                out.append((qtype, row))
        return PackedWeight(out, self.k, self.dtype)

    @staticmethod
    def cat(parts: Sequence[PackedWeight]) -> PackedWeight:
        """Rows of ``parts`` stacked (a fused projection); neighbours of one type share a segment."""
        if len({p.k for p in parts}) != 1:
            raise ShapeError(f"cannot stack packed weights of K {[p.k for p in parts]}")
        merged: list[tuple[int, list[Tensor]]] = []
        for p in parts:
            for qtype, blocks in p.segments:
                if merged and merged[-1][0] == qtype:
                    merged[-1][1].append(blocks)
                else:
                    merged.append((qtype, [blocks]))
        segs = [(q, bs[0] if len(bs) == 1 else torch.cat(bs)) for q, bs in merged]
        return PackedWeight(segs, parts[0].k, parts[0].dtype)

    def as_dtype(self, dtype: torch.dtype) -> PackedWeight:
        """The same blocks looking like ``dtype`` (activations and outputs in that dtype)."""
        return self if dtype == self.dtype else PackedWeight(self.segments, self.k, dtype)

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeight:
        # blocks through the memo: a PackedLinear's decode shortcut holds the same tensors
        new = PackedWeight(
            [(q, copy.deepcopy(b, memo)) for q, b in self.segments], self.k, self.dtype
        )
        memo[id(self)] = new
        return new

    # -- reading ------------------------------------------------------------------------------

    def dequantize(self, dtype: torch.dtype | None = None, out: Tensor | None = None) -> Tensor:
        """The dense ``(N, K)`` matrix (float32 into ``out`` when given, else ``dtype``)."""
        if out is None:
            out = torch.empty(self.shape[0], self.k, dtype=torch.float32)
        at = 0
        for qtype, blocks in self.segments:
            n = blocks.shape[0]
            _dequant(blocks, qtype, self.k, out[at : at + n])
            at += n
        want = self.dtype if dtype is None else dtype
        return out if want == torch.float32 else out.to(want)

    def lookup(self, ids: Tensor) -> Tensor:
        """``F.embedding(ids, self)``: only the rows ``ids`` dequantised; ``(*ids.shape, K)``."""
        flat = ids.reshape(-1)
        if len(self.segments) == 1:
            qtype, blocks = self.segments[0]
            rows = _dequant(blocks[flat], qtype, self.k)
        else:
            rows = self.take_rows(flat).dequantize(torch.float32)
        return rows.to(self.dtype).view(*ids.shape, self.k)

    def count_nonfinite(self, chunk_rows: int = 4096) -> int:
        """How many dequantised values are NaN or infinite (dequantised in row chunks)."""
        bad = 0
        for qtype, blocks in self.segments:
            for start in range(0, blocks.shape[0], chunk_rows):
                part = _dequant(blocks[start : start + chunk_rows], qtype, self.k)
                bad += int(part.numel() - torch.isfinite(part).sum())
        return bad

    @property
    def types(self) -> tuple[str, ...]:
        """The GGUF type name of each segment, e.g. ``("Q4_1",)`` (also for Q4_1 blocks held
        in the kernels' own layout, `layouts`)."""
        return tuple(kernels.QTYPES[kernels.GGUF_TYPE.get(q, q)][0] for q, _ in self.segments)

    @property
    def layouts(self) -> tuple[str, ...]:
        """How each segment is held: the GGUF type's name or a kernel layout's (``"Q4_1x"``)."""
        return tuple(kernels.QTYPES[q][0] for q, _ in self.segments)

    @property
    def nbytes_stored(self) -> int:
        """Bytes actually held: the GGUF blocks."""
        return sum(b.nbytes for _, b in self.segments)

    def __repr__(self) -> str:  # type: ignore[override]
        return (
            f"PackedWeight(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"{'+'.join(self.layouts)}, {self.nbytes_stored:,} bytes)"
        )

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return packed_linear(x, self, bias)


def packed_linear(x: Tensor, w: PackedWeight, bias: Tensor | None = None) -> Tensor:
    """``x (..., K) @ w.T (+ bias)`` -> ``(..., N)`` in ``x.dtype``.

    Up to `kernels.MAX_ROWS` input rows: the packed GEMV (one call per segment). More rows, no
    kernels, or an input that needs gradients: the dense weight (in the reused buffer unless
    gradients need it kept) and ``F.linear``.
    """
    K = w.k
    if x.shape[-1] != K:
        raise ShapeError(f"input has {x.shape[-1]} features, the packed weight takes {K}")
    M = x.numel() // K
    grad = x.requires_grad and torch.is_grad_enabled()
    if 0 < M <= kernels.MAX_ROWS and not grad and x.device.type == "cpu" and kernels.available():
        x2 = x.reshape(M, K)
        ys = [kernels.packed_op(q)(x2, b, q, K) for q, b in w.segments]
        y = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)).view(*x.shape[:-1], w.shape[0])
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if bias is None else y + bias
    if grad:
        dense = w.dequantize(x.dtype)  # kept by autograd: its own storage
    else:
        dense = w.dequantize(torch.float32, out=_SCRATCH.take(w.shape[0], K))
        if x.dtype != torch.float32:
            dense = dense.to(x.dtype)
    return F.linear(x, dense, bias)


class PackedLinear(nn.Module):
    """``nn.Linear`` whose weight is a `PackedWeight` (frozen); ``bias`` stays in float."""

    weight: PackedWeight

    def __init__(self, weight: PackedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        # a buffer, not a Parameter: moved by ``.to(dtype)`` (still packed), never trained; not
        # in state_dict (`dense_state_dict` gives the dequantised weights)
        self.register_buffer("weight", weight, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._refresh()

    def _refresh(self) -> None:
        # what the decode path needs, in plain attributes: a registered buffer or parameter is
        # found through nn.Module.__getattr__, and a wrapper tensor's .shape through
        # __torch_function__: microseconds a call, 4 calls a layer
        w = self.weight
        one = len(w.segments) == 1
        self._fast = (*w.segments[0], w.k, w.shape[0]) if one else None
        self._has_bias = self.bias is not None

    def forward(self, x: Tensor) -> Tensor:
        fast = self._fast  # (ggml type, blocks, K, N) of a one-segment weight
        if (
            fast is not None
            and x.numel() <= kernels.MAX_ROWS * fast[2]
            and not (x.requires_grad and torch.is_grad_enabled())
            and kernels.available()
        ):
            qtype, blocks, K, _ = fast
            y = kernels.packed_op(qtype)(x, blocks, qtype, K)  # (..., K) -> (..., N)
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
            return y + self.bias if self._has_bias else y
        return packed_linear(x, self.weight, self.bias)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PackedLinear:
        super()._apply(fn, recurse)
        self._refresh()
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.weight.dtype}, "
            f"packed {'+'.join(self.weight.types)}"
        )


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every packed weight (which the state dict leaves out: they are
    non-persistent buffers) added back dequantised, in the dtype it looks like."""
    state = dict(model.state_dict())
    for name, buf in model.named_buffers():
        if isinstance(buf, PackedWeight):
            state[name] = buf.dequantize()
    return state
