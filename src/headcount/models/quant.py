"""Weight-only int8 quantisation for fast CPU decoding.

At batch 1 a decode step reads every weight once, so its speed is set by bytes streamed from
memory: int8 weights are a quarter of fp32. `Int8Linear` keeps ``int8`` weights ``(N, K)`` with
one float32 scale per output channel (symmetric, ``w ≈ q * scale``); activations stay in float.
`int8_linear` picks the kernel: the compiled `headcount.models.kernels.gemv_int8` when decoding,
the dequantised weight with the float GEMM for prefill, ``aten._weight_int8pack_mm`` as a
fallback (see its docstring for the measurements behind that choice).

`quantize_int8` swaps every ``nn.Linear`` of a model (the fused ``qkv_proj``/``o_proj`` of
`headcount.nn.Attention`, the MLP projections, an untied ``lm_head``) for an `Int8Linear`, and
quantises a tied embedding matrix too (it is the output projection of SmolLM2: 21% of its
weights). The replaced weights stay visible as `Int8Weight`: a tensor with the float dtype and
the ``(N, K)`` shape of the original, so dtype checks and per-head weight views (``W_Q`` ...)
keep working; ``F.linear`` and ``F.embedding`` on it use the int8 data, anything else sees the
dequantised float tensor.

Legend: N output features, K input features, M rows of the input (batch × positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount.errors import DTypeError, ShapeError
from headcount.kernels.quantized import FLOAT_DTYPES, QuantizedWeight
from headcount.models import kernels

__all__ = [
    "Int8Linear",
    "Int8Weight",
    "dequantize_int8",
    "int8_linear",
    "quantize_int8",
    "quantize_weight_int8",
]

_FLOAT_DTYPES = FLOAT_DTYPES


def quantize_weight_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: ``weight (N, K) ≈ q (N, K) int8 * scales (N,)[:, None]``.

    ``scales = max|row| / 127`` computed in float32; an all-zero row gets scale 1 (q = 0).
    Returns ``(q, scales)`` with scales in float32.
    """
    if weight.ndim != 2:
        raise ShapeError(f"int8 quantisation takes a (N, K) matrix, got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise DTypeError(f"int8 quantisation takes a float matrix, got {weight.dtype}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)  # (N,)
    scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def dequantize_int8(q: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q (N, K) * scales (N,)[:, None]`` as ``dtype``."""
    return (q.to(torch.float32) * scales.to(torch.float32)[:, None]).to(dtype)


def int8_linear(x: Tensor, q: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x (..., K) @ (q * scales[:, None]).T (+ bias)`` → ``(..., N)`` in ``x.dtype``.

    ``scales`` are float32 (per output row). Kernel choice, measured on an AVX2 machine (see
    ``benchmarks/models.md``): up to `kernels.MAX_ROWS` input rows (decoding) the compiled
    `headcount.models.kernels.gemv_int8`; more rows (prefill) dequantise the weight once and use
    the float GEMM, which is ~45x faster there than ``aten._weight_int8pack_mm`` (a scalar
    kernel without AVX-512). ``_weight_int8pack_mm`` serves small inputs when the compiled
    kernels are unavailable on an AVX-512 CPU (its vectorised path; it also needs K % 8 == 0 for
    bfloat16 input, whose CPU kernel reads out of bounds otherwise).
    """
    N, K = q.shape
    if x.shape[-1] != K:
        raise ShapeError(f"input has {x.shape[-1]} features, the int8 weight takes {K}")
    if x.dtype not in _FLOAT_DTYPES:
        raise DTypeError(f"int8 linear takes float32/bfloat16/float16 input, got {x.dtype}")
    if scales.dtype != torch.float32:
        scales = scales.float()
    M = x.numel() // K if K else 0
    if 0 < M <= kernels.MAX_ROWS and x.device.type == "cpu":
        if kernels.available():
            y = kernels.gemv_int8(x, q, scales)
            return y if bias is None else y + bias
        if K % 8 == 0 and _INT8PACK_FAST:
            x2 = x.reshape(-1, K).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(x2, q, scales.to(x.dtype)).view(*x.shape[:-1], N)
            return y if bias is None else y + bias
    return F.linear(x, dequantize_int8(q, scales, x.dtype), bias)


# On this project's AVX2 machine aten._weight_int8pack_mm streams ~0.5 GB/s at batch 1 (slower
# than dequantising); it is used only on AVX-512 CPUs (not measured here), as a fallback.
_INT8PACK_FAST = torch.backends.cpu.get_cpu_capability() == "AVX512"


class Int8Weight(QuantizedWeight):
    """A float-looking ``(N, K)`` tensor stored as int8 rows + per-row scales.

    ``F.linear(x, w)`` runs the int8 kernel and ``F.embedding(ids, w)`` dequantises only the
    looked-up rows; every other operation sees the dequantised tensor (correct, not fast).
    """

    q: Tensor
    scales: Tensor  # (N,) in float32
    _scales_by_dtype: dict[torch.dtype, Tensor]

    @staticmethod
    def __new__(cls, q: Tensor, scales: Tensor, dtype: torch.dtype) -> Int8Weight:
        return torch.Tensor._make_wrapper_subclass(
            cls, q.shape, dtype=dtype, device=q.device, requires_grad=False
        )

    def __init__(self, q: Tensor, scales: Tensor, dtype: torch.dtype) -> None:
        if q.dtype != torch.int8 or q.ndim != 2 or scales.shape != (q.shape[0],):
            raise ShapeError(
                f"Int8Weight needs int8 q (N, K) and scales (N,), got {q.dtype} {tuple(q.shape)} "
                f"and {tuple(scales.shape)}"
            )
        if dtype not in _FLOAT_DTYPES:
            raise DTypeError(
                f"Int8Weight's float dtype must be one of {_FLOAT_DTYPES}, got {dtype}"
            )
        self.q = q.contiguous()
        self.scales = scales.float()
        self._scales_by_dtype = {torch.float32: self.scales}

    @classmethod
    def from_float(cls, weight: Tensor) -> Int8Weight:
        q, scales = quantize_weight_int8(weight)
        return cls(q, scales, weight.dtype)

    def scales_as(self, dtype: torch.dtype) -> Tensor:
        """The per-row scales in ``dtype`` (cached: the kernel wants the activation dtype)."""
        s = self._scales_by_dtype.get(dtype)
        if s is None:
            s = self._scales_by_dtype[dtype] = self.scales.to(dtype)
        return s

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        return dequantize_int8(self.q, self.scales, self.dtype if dtype is None else dtype)

    @property
    def nbytes_stored(self) -> int:
        """Bytes actually held: int8 values plus float32 scales."""
        return self.q.nbytes + self.scales.nbytes

    def __repr__(self) -> str:  # type: ignore[override]
        return f"Int8Weight(shape={tuple(self.shape)}, dtype={self.dtype}, int8 per-row scales)"

    def as_dtype(self, dtype: torch.dtype) -> Int8Weight:
        return Int8Weight(self.q, self.scales, dtype)

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return int8_linear(x, self.q, self.scales, bias)

    def lookup(self, ids: Tensor) -> Tensor:
        return (self.q[ids].to(torch.float32) * self.scales[ids][..., None]).to(self.dtype)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per-output-channel scales) and float activations.

    ``weight`` is an `Int8Weight` (float dtype and ``(N, K)`` shape of the original, int8 inside);
    ``bias`` stays in float. Build it with `from_linear`.
    """

    weight: Int8Weight

    def __init__(self, weight: Int8Weight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        # a buffer, not a Parameter: moved by ``.to(dtype)`` (still int8), never trained or saved
        self.register_buffer("weight", weight, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(Int8Weight.from_float(linear.weight), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        return int8_linear(x, w.q, w.scales, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.weight.dtype}, int8 weights"
        )


def quantize_int8(model: nn.Module, *, tied_embedding: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` by an `Int8Linear`, in place; returns ``model``.

    With ``tied_embedding`` (default), a model whose output projection is its embedding matrix
    (a `headcount.Decoder` with ``lm_head is None``) gets that matrix quantised as well: the
    logits then use the int8 kernel and the input embeddings the dequantised rows.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear.from_linear(child))
        elif not isinstance(child, Int8Linear):
            quantize_int8(child, tied_embedding=False)
    embed = getattr(model, "embed", None)
    if (
        tied_embedding
        and isinstance(embed, nn.Embedding)
        and getattr(model, "lm_head", "absent") is None
        and not isinstance(embed.weight, Int8Weight)
    ):
        w = Int8Weight.from_float(embed.weight)
        del embed.weight
        embed.register_buffer("weight", w, persistent=False)
    return model
