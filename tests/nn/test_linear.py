"""`headcount.nn.Linear`: the state dict and results of ``torch.nn.Linear``; float32 and bfloat16
decoding (a few rows, no gradient) runs the GEMV kernel and equals a float64 product to the
dtype's rounding; anything else (prefill, gradients, mixed dtypes) is ``F.linear`` itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

from headcount import kernels
from headcount.nn import Linear
from tests.kernels.conftest import needs_kernels


def _ops(fn) -> set[str]:  # type: ignore[no-untyped-def]
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_same_parameters_and_state_dict_as_torch_linear() -> None:
    torch.manual_seed(0)
    ref = nn.Linear(64, 24)
    lin = Linear(64, 24)
    lin.load_state_dict(ref.state_dict())
    assert isinstance(lin, nn.Linear) and lin.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=0)  # float32: F.linear itself


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, kernels.MAX_ROWS])
def test_bfloat16_decoding_runs_the_kernel_and_equals_float64(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    lin = Linear(200, 96, bias=True).bfloat16()  # K = 200: not a multiple of the vector width
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 200, generator=g))
        lin.bias.copy_(torch.randn(96, generator=g))
    x = torch.randn(1, rows, 200, generator=g).bfloat16()
    with torch.inference_mode():
        y = lin(x)
        assert "headcount::gemv" in _ops(lambda: lin(x))
    assert y.dtype == torch.bfloat16 and y.shape == (1, rows, 96)
    exact = x.double() @ lin.weight.double().T  # bfloat16 products are exact in float64
    ref = (exact.float().bfloat16() + lin.bias).float()  # float sums rounded once, + bias
    torch.testing.assert_close(y.float(), ref, rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1.6e-2, atol=5e-2)


@needs_kernels
def test_prefill_and_gradients_keep_f_linear() -> None:
    lin = Linear(64, 32).bfloat16()
    big = torch.randn(kernels.MAX_ROWS + 1, 64).bfloat16()
    with torch.inference_mode():
        assert "headcount::gemv" not in _ops(lambda: lin(big))  # prefill: torch's GEMM
    x = torch.randn(2, 64).bfloat16().requires_grad_()
    assert "headcount::gemv" not in _ops(lambda: lin(x))
    lin(x).float().square().sum().backward()  # gradients reach input and weight
    assert x.grad is not None and lin.weight.grad is not None


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, kernels.MAX_ROWS])
def test_float32_decoding_runs_the_kernel_and_equals_float64(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    lin = Linear(200, 96, bias=True)  # K = 200: not a multiple of the vector width
    x = torch.randn(1, rows, 200, generator=g)
    with torch.inference_mode():
        y = lin(x)
        assert "headcount::gemv" in _ops(lambda: lin(x))
        big = torch.randn(kernels.MAX_ROWS + 1, 200, generator=g)
        assert "headcount::gemv" not in _ops(lambda: lin(big))  # prefill: torch's GEMM
    assert y.dtype == torch.float32 and y.shape == (1, rows, 96)
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    assert "headcount::gemv" not in _ops(lambda: lin(xg))  # gradients: F.linear
