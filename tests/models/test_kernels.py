"""The compiled batch-1 kernels (float32/bfloat16/int8 weights) against a float64 reference, and
the environment switch. Packed GGUF weights and the build cache: tests/kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from headcount.models import kernels
from headcount.models.quant import quantize_weight_int8

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.unavailable_reason()}"
)

# SmolLM2's matrices, a row count that is not a multiple of 4, K not a multiple of 8 or 16
SHAPES = [(960, 576), (3072, 576), (576, 1536), (7, 50), (5, 8), (33, 24)]


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "lead", [(1,), (2, 1), (2, 3)]
)  # one input row (decoding's own loop), more
def test_gemv_float32_and_bfloat16(shape: tuple[int, int], lead: tuple[int, ...]) -> None:
    N, K = shape
    w = torch.randn(N, K)
    x = torch.randn(*lead, K)
    y = kernels.gemv(x, w)
    assert y.shape == (*lead, N) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)
    wb = w.bfloat16()
    yb = kernels.gemv(x, wb)  # bf16 weights widened exactly, float32 sums
    torch.testing.assert_close(yb.double(), x.double() @ wb.double().T, rtol=1e-5, atol=1e-4)
    xb = x.bfloat16()
    assert kernels.gemv(xb, wb).dtype == torch.bfloat16
    # bfloat16 x bfloat16 (AVX512-BF16 dot products where present): exact products, float32 sums
    rows = torch.ops.headcount.gemv(xb.reshape(-1, K), wb, None)
    assert rows.dtype == torch.float32
    ref = (xb.double() @ wb.double().T).reshape(-1, N)
    torch.testing.assert_close(rows.double(), ref, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows", [1, 4])
def test_gemv_int8(shape: tuple[int, int], rows: int) -> None:
    N, K = shape
    q, s = quantize_weight_int8(torch.randn(N, K))
    x = torch.randn(rows, K)
    ref = x.double() @ (q.double() * s.double()[:, None]).T
    torch.testing.assert_close(kernels.gemv_int8(x, q, s).double(), ref, rtol=1e-5, atol=1e-4)


@needs_kernels
def test_bad_arguments() -> None:
    q, s = quantize_weight_int8(torch.randn(8, 16))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.gemv(torch.randn(1, 16), torch.randn(16, 8).T)
    with pytest.raises(ValueError):
        kernels.gemv(torch.randn(1, 15), torch.randn(8, 16))
    with pytest.raises(ValueError):
        kernels.gemv_int8(torch.randn(1, 16), q, s.double())
    with pytest.raises(ValueError):
        kernels.gemv(torch.randn(1, 16), q)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=600
    )


def test_disabled_by_environment() -> None:
    code = "from headcount.models import kernels as k; print(k.available(), k.unavailable_reason())"
    out = _run(code, HEADCOUNT_KERNELS="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False") and "HEADCOUNT_KERNELS=0" in out.stdout


def test_an_unknown_setting_is_named() -> None:
    code = "from headcount.models import kernels as k; print(k.available(), k.unavailable_reason())"
    out = _run(code, HEADCOUNT_KERNELS="sse9")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False") and "'sse9'" in out.stdout
