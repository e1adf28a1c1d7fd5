"""``nn.Linear`` that decodes bfloat16 through headcount's GEMV kernel.

For a few input rows (decoding: at most `headcount.kernels.MAX_ROWS`), a matrix-vector product
reads every weight once and is bound by memory bandwidth. torch's bfloat16 ``F.linear`` (oneDNN)
streams SmolLM2's matrices at 6-11 GB/s on one core here, the kernel (``headcount::gemv``:
AVX512-BF16 dot products where the CPU has them, bfloat16 widened exactly to float32 otherwise;
float32 sums either way) at 8-21 GB/s (`benchmarks/models.py`). float32 weights keep
``F.linear``: MKL's GEMV already streams at the kernel's speed. Legend: N outputs, K inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount import kernels


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x (..., K), weight (N, K), bias)``; bfloat16 decoding (input and weight
    bfloat16, at most `kernels.MAX_ROWS` rows, no gradient) runs the GEMV kernel."""
    K = weight.shape[-1]
    if (
        weight.dtype == torch.bfloat16
        and x.dtype == torch.bfloat16
        and x.numel() <= kernels.MAX_ROWS * K
        and x.shape[-1] == K
        and type(weight) in (Tensor, nn.Parameter)  # not a quantised weight's wrapper
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and kernels.available()
    ):
        y = kernels.direct().gemv(x, weight, None).to(torch.bfloat16)  # float32 sums
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same parameters and state dict) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
