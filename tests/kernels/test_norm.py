"""``headcount::rms_norm`` (the fused RMSNorm `headcount.nn.RMSNorm` runs without gradients):
float32 equals a float64 RMSNorm to float rounding, bfloat16 equals the five-op path bit for bit,
rows of any leading shape, no weight, and clear errors; with gradients the module keeps torch's
ops (and its gradients)."""

from __future__ import annotations

import pytest
import torch

from headcount import kernels
from headcount.nn import RMSNorm
from tests.kernels.conftest import needs_kernels

pytestmark = needs_kernels


def _module(C: int, dtype: torch.dtype, seed: int = 0) -> RMSNorm:
    g = torch.Generator().manual_seed(seed)
    m = RMSNorm(C, eps=1e-5).to(dtype)
    with torch.no_grad():
        m.weight.copy_(torch.randn(C, generator=g))
    return m


@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 7, 96), (5, 33)])
def test_float32_equals_float64_rmsnorm(shape: tuple[int, ...]) -> None:
    m = _module(shape[-1], torch.float32)
    x = torch.randn(*shape) * 4
    with torch.no_grad():
        got = m(x)
    x64 = x.double()
    ref = m.weight.double() * x64 / (x64.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=2e-6)
    unweighted = torch.ops.headcount.rms_norm(x, None, 1e-5)
    torch.testing.assert_close(unweighted.double(), ref / m.weight.double(), rtol=2e-6, atol=2e-6)


def test_bfloat16_equals_the_five_op_path(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _module(576, torch.bfloat16)
    x = (torch.randn(4, 3, 576) * 3).bfloat16()
    with torch.no_grad():
        fused = m(x)
        monkeypatch.setattr(kernels, "FUSED_DTYPES", ())
        ops = m(x)
    assert fused.dtype == torch.bfloat16 and torch.equal(fused, ops)


def test_gradients_keep_torch_ops() -> None:
    m = _module(64, torch.float32)
    x = torch.randn(2, 64, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and m.weight.grad is not None
    x2 = x.detach().clone().requires_grad_()
    x64 = x2.double()
    ref = m.weight.detach().double() * x64 / (x64.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad.double(), x2.grad.double(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(RuntimeError, match=r"contiguous \(8,\) tensor"):
        torch.ops.headcount.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.headcount.rms_norm(torch.randn(2, 8).double(), None, 1e-5)
