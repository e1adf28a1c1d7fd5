"""``nn.Linear`` that decodes float32 and bfloat16 through headcount's GEMV kernel.

For a few input rows (decoding: at most `headcount.kernels.MAX_ROWS`), a matrix-vector product
reads every weight once and is bound by memory bandwidth. torch's bfloat16 ``F.linear`` (oneDNN)
streams SmolLM2's matrices at 6-11 GB/s on one core here, the kernel (``headcount::gemv``:
AVX512-BF16 dot products where the CPU has them, bfloat16 widened exactly to float32 otherwise;
float32 sums either way) at 8-21 GB/s (`benchmarks/models.py`). For float32, MKL's GEMV matches
the kernel matrix by matrix, but over a whole decode step the kernel (with its prefetch of the
next rows) takes 0.86x the time. Legend: N outputs, K inputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from headcount import kernels


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x (..., K), weight (N, K), bias)``; decoding (input and weight both float32 or
    both bfloat16, at most `kernels.MAX_ROWS` rows, no gradient) runs the GEMV kernel, which
    streams the weights faster than torch's batch-1 GEMM (float32 SmolLM2: 31.5 against 36.6 ms
    a step; equal within float rounding, not bit for bit)."""
    K = weight.shape[-1]
    if (
        x.numel() <= kernels.MAX_ROWS * K
        and x.shape[-1] == K
        and type(weight) in (Tensor, nn.Parameter)  # not a quantised weight's wrapper
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and kernels.fusable(x, weight)  # one dtype of FUSED_DTYPES, no autograd, kernels loaded
    ):
        y = kernels.direct().gemv(x, weight, None)  # float32 sums
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same parameters and state dict) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
