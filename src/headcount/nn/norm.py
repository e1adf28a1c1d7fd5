"""RMSNorm in a few ops (``torch.nn.RMSNorm`` dispatches 24 on CPU for one row).

Legend: C normalized dim.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from headcount import kernels


@functools.lru_cache(maxsize=64)
def _eps(eps: float, device: torch.device) -> Tensor:
    with torch.inference_mode(False):  # cached: must serve autograd-recorded forwards too
        return torch.tensor(eps, dtype=torch.float32, device=device)


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dim, in float32 at least (a float32 tensor
    for bfloat16/float16 ``x``, as HuggingFace's Llama and Gemma norms compute it).

    Five ops (norm, ``eps + n * n / C`` in one ``addcmul``, rsqrt, multiply); ``x.pow(2).mean()
    + eps`` dispatches 17 on CPU (mean and the Python-scalar add each convert a scalar tensor).
    Equal to it to float rounding."""
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # sqrt(sum x^2)
    return x * torch.addcmul(_eps(eps, x.device), n, n, value=1.0 / x.shape[-1]).rsqrt_()


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same parameters and state dict) computed as HuggingFace's Llama
    does: normalized in float32, cast back to the input's dtype, then scaled by ``weight``.

    Without gradients, float32 and bfloat16 rows on the CPU take one compiled op
    (``headcount::rms_norm``, the same roundings in one pass: bfloat16 results are identical,
    float32 ones within an ulp) instead of five."""

    def forward(self, x: Tensor) -> Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        weight = self._parameters["weight"]  # a plain dict: cheaper than nn.Module's lookup
        if kernels.fusable(x, weight):
            return kernels.direct().rms_norm(x, weight, eps)
        h = rms_normalize(x, eps)
        if h.dtype != x.dtype:
            h = h.to(x.dtype)
        return h if weight is None else weight * h
