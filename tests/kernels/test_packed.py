"""Packed GGUF weights: the kernels' dequantisation equals the `gguf` package's reference on real
tensors (SmolLM2's Q4_1 and Q8_0, Gemma 3's Q4_K, Q6_K, Q8_0 and Q5_0) and on random blocks;
the packed GEMV equals F.linear on the dequantised weight for 1..8 input rows; `PackedWeight`
behaves as its dequantised tensor; fused projections of mixed types stay packed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from torch import Tensor

from headcount import kernels
from headcount.kernels.packed import PackedLinear, PackedWeight
from headcount.loaders.transforms import fuse_rows, llama_cpp_permute, llama_cpp_unpermute
from tests.kernels.conftest import gemma3_tensors, needs_kernels, rows_of, smollm2_tensors

# (file, tensor, GGUF type): one real tensor of every packed type in the shipped files
REAL = [
    ("smollm2", "blk.0.ffn_down.weight", "Q4_1"),
    ("smollm2", "token_embd.weight", "Q8_0"),
    ("gemma3", "blk.0.attn_output.weight", "Q4_K"),
    ("gemma3", "blk.0.ffn_down.weight", "Q6_K"),
    ("gemma3", "blk.0.attn_v.weight", "Q8_0"),
    ("gemma3", "blk.0.attn_q.weight", "Q5_0"),
]


def _real(file: str, name: str, kind: str, n: int | None = None) -> tuple[np.ndarray, int, int]:
    t = (smollm2_tensors() if file == "smollm2" else gemma3_tensors())[name]
    assert t.tensor_type.name == kind  # the files hold the types this test claims to cover
    return rows_of(t, n)


def _random(kind: str, n: int = 48, k: int = 512, seed: int = 0) -> tuple[np.ndarray, int, int]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 2.0, (n, 1))).astype(np.float32)
    return np.ascontiguousarray(quantize(w, T[kind])), int(T[kind]), k


@needs_kernels
@pytest.mark.model
@pytest.mark.parametrize(("file", "name", "kind"), REAL)
def test_dequantize_equals_gguf_on_real_tensors(file: str, name: str, kind: str) -> None:
    rows, qtype, k = _real(file, name, kind, n=4096)
    ref = dequantize(rows, T(qtype))  # (n, K) float32
    got = kernels.dequantize_packed(torch.from_numpy(rows), qtype, k)
    assert np.array_equal(got.numpy(), ref)  # value for value, not within a tolerance


@needs_kernels
@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_dequantize_equals_gguf_on_random_blocks(kind: str) -> None:
    rows, qtype, k = _random(kind)
    got = kernels.dequantize_packed(torch.from_numpy(rows), qtype, k)
    assert np.array_equal(got.numpy(), dequantize(rows, T[kind]))


def _int8_reference(x: Tensor, rows: np.ndarray, qtype: int) -> Tensor:
    """float64 GEMV with llama.cpp's int8 activations: each 32 values of x rounded (half to even)
    to ``xq = rint(x * 127 / max|x|)`` in float32; a block's sum is ``d * dx * sum(q * xq)``
    plus, for the offset formats, ``bias * sum(x)`` (Q4_1: bias m, Q4_0: -8 d) on exact x."""
    M, K = x.shape
    w = dequantize(rows, T(qtype)).astype(np.float64)  # (N, K)
    blocks = rows.reshape(rows.shape[0], K // 32, -1)  # (N, K/32, bytes)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float64)  # (N, K/32)
    bias = {2: -8.0 * d, 3: blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)}
    b = bias.get(qtype, np.zeros_like(d))
    xg = x.numpy().reshape(M, K // 32, 32)
    am = np.abs(xg).max(-1, keepdims=True)
    inv = np.where(am > 0, np.float32(127) / np.where(am > 0, am, 1), np.float32(0))
    xq = np.rint(xg * inv.astype(np.float32)).astype(np.float64)  # (M, K/32, 32)
    dx = (am / np.float32(127)).astype(np.float64)
    wq = w.reshape(-1, K // 32, 32) - b[..., None]  # d * q, exact
    y = np.einsum("ngk,mgk,mg->mn", wq, xq, dx[..., 0])
    y += np.einsum("ng,mg->mn", b, xg.astype(np.float64).sum(-1))
    return torch.from_numpy(y)


def _check_gemv(rows: np.ndarray, qtype: int, k: int) -> None:
    w = torch.from_numpy(dequantize(rows, T(qtype)))  # the reference's dense weight (N, K)
    blocks = torch.from_numpy(rows)
    g = torch.Generator().manual_seed(0)
    for m in range(1, 9):
        x = torch.randn(m, k, generator=g)
        if qtype in kernels.INT8_ACTIVATION_TYPES:  # the int8-activation kernel, its own reference
            y8 = kernels.gemv_packed(x, blocks, qtype, k, int8_activations=True)
            ref8 = _int8_reference(x, rows, qtype)
            torch.testing.assert_close(
                y8.double(), ref8, rtol=1e-5, atol=1e-5 * float(ref8.abs().max())
            )
            exact = x.double() @ w.double().T  # and near the exact product (rounding of x)
            assert float((y8 - exact).abs().max()) < 0.1 * float(exact.abs().max())
        y = kernels.gemv_packed(x, blocks, qtype, k, int8_activations=False)
        ref = (x.double() @ w.double().T).float()
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(w.abs().max()) * k**0.5)
        torch.testing.assert_close(y, F.linear(x, w), rtol=1e-4, atol=1e-3)
    xb = torch.randn(2, 1, k, generator=g).bfloat16()  # bfloat16 activations: output bfloat16
    yb = kernels.gemv_packed(xb, blocks, qtype, k, int8_activations=False)
    assert yb.dtype == torch.bfloat16 and yb.shape == (2, 1, w.shape[0])
    torch.testing.assert_close(yb.float(), F.linear(xb.float(), w), rtol=2e-2, atol=2e-2)


@needs_kernels
@pytest.mark.model
@pytest.mark.parametrize(("file", "name", "kind"), REAL)
def test_packed_gemv_equals_linear_on_real_tensors(file: str, name: str, kind: str) -> None:
    _check_gemv(*_real(file, name, kind, n=300))


@needs_kernels
@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0", "Q5_1"])
def test_packed_gemv_equals_linear_on_random_blocks(kind: str) -> None:
    _check_gemv(*_random(kind, n=37, k=96))


def _int16_reference(x: Tensor, rows: np.ndarray, qtype: int) -> Tensor:
    """float64 GEMV of GGUF Q4_1 / Q8_0 ``rows`` with the regrouped layouts' int16 activations:
    each 32 values of x rounded (half to even) to ``xq = rint(x * (32767 / max|x|))`` in float32,
    a block's sum ``d * dx * sum(q * xq) (+ m * sum(x) for Q4_1)`` with ``dx = max|x| / 32767``
    (csrc/x16.cpp)."""
    M, K = x.shape
    size = 20 if qtype == T.Q4_1 else 34
    blocks = rows.reshape(rows.shape[0], K // 32, size)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float64)  # (N, K/32)
    if qtype == T.Q4_1:
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        qs = blocks[..., 4:]
        q = np.concatenate([qs & 15, qs >> 4], -1).astype(np.float64)  # (N, K/32, 32): GGUF order
    else:
        m = np.zeros_like(d)
        q = blocks[..., 2:].copy().view(np.int8).astype(np.float64)
    xg = x.numpy().reshape(M, K // 32, 32)
    am = np.abs(xg).max(-1, keepdims=True)
    inv = np.where(am > 0, np.float32(32767) / np.where(am > 0, am, 1), np.float32(0))
    xq = np.rint(xg * inv.astype(np.float32)).astype(np.float64)
    dx = (am / np.float32(32767)).astype(np.float64)[..., 0]  # (M, K/32)
    y = np.einsum("ng,ngk,mgk,mg->mn", d, q, xq, dx)
    y += np.einsum("ng,mg->mn", m, xg.astype(np.float64).sum(-1))
    return torch.from_numpy(y)


def _check_regrouped(rows: np.ndarray, qtype: int, k: int) -> None:
    """GGUF Q4_1 / Q8_0 rows regrouped as Q4_1x / Q8_0x: the same bytes, dequantised value for
    value as gguf does; the GEMV equals the int16 scheme's float64 reference and stays within
    its rounding bound of the exact product, for 1..8 input rows, each row as if alone."""
    blocks = torch.from_numpy(rows)
    got, regrouped = kernels.kernel_layout(blocks, qtype, k)
    assert got == kernels.REGROUPED[qtype] and regrouped.shape == blocks.shape
    dense = dequantize(rows, T(qtype))
    assert np.array_equal(kernels.dequantize_packed(regrouped, got, k).numpy(), dense)
    w = torch.from_numpy(dense).double()
    g = torch.Generator().manual_seed(0)
    for m in range(1, 9):
        x = torch.randn(m, k, generator=g)
        x[:, 5] *= 50.0  # an outlier channel, as LLM activations have: its blocks round coarser
        y = kernels.gemv_packed(x, regrouped, got, k)
        ref = _int16_reference(x, rows, qtype)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        exact = x.double() @ w.T
        amax = x.double().reshape(m, -1, 32).abs().amax(-1)  # (M, K/32)
        bound = (w.abs().reshape(w.shape[0], -1, 32).sum(-1) @ (amax / 32767 / 2).T).T
        assert bool(((y.double() - exact).abs() <= bound + 1e-4 * exact.abs().max()).all())
        for i in range(m):  # each row as if alone (the batch shares only the weights' decode)
            torch.testing.assert_close(
                y[i : i + 1], kernels.gemv_packed(x[i : i + 1], regrouped, got, k)
            )


@needs_kernels
@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize(("n", "k"), [(37, 96), (16, 128), (9, 576), (5, 32), (3, 1536)])
def test_regrouped_layouts_dequantise_as_gguf_and_gemv_is_the_int16_scheme(
    kind: str, n: int, k: int
) -> None:
    rows, qtype, _ = _random(kind, n=n, k=k, seed=k)  # K = 32, 96, 576: short last groups
    _check_regrouped(rows, qtype, k)


@needs_kernels
@pytest.mark.model
@pytest.mark.parametrize(
    ("name", "kind"), [("blk.0.ffn_down.weight", "Q4_1"), ("token_embd.weight", "Q8_0")]
)
def test_regrouped_layouts_on_real_tensors(name: str, kind: str) -> None:
    rows, qtype, k = _real("smollm2", name, kind, n=200)
    _check_regrouped(rows, qtype, k)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0", "Q4_0"])
def test_loads_regrouped_only_when_int16_activations_are_on(kind: str) -> None:
    rows, qtype, k = _random(kind, n=8, k=64)
    w = PackedWeight.from_gguf(rows, qtype, k)
    on = kernels.available() and kernels.ACTIVATIONS == "int16" and kind != "Q4_0"
    assert w.types == (kind,) and w.layouts == (kind + "x" if on else kind,)
    assert torch.equal(w.dequantize(), torch.from_numpy(dequantize(rows, T[kind])))


def test_bad_arguments_are_named() -> None:
    rows, qtype, k = _random("Q4_0", n=4, k=64)
    with pytest.raises(Exception, match="K % 256|ggml type 99"):
        PackedWeight([(99, torch.from_numpy(rows))], k)
    with pytest.raises(Exception, match=r"uint8 \(n, 36\)"):
        PackedWeight([(qtype, torch.from_numpy(rows[:, :30].copy()))], k)
    w = PackedWeight([(qtype, torch.from_numpy(rows))], k)
    with pytest.raises(Exception, match="takes 64"):
        F.linear(torch.randn(1, 63), w)


def test_packed_weight_acts_as_its_dense_tensor() -> None:
    rows, qtype, k = _random("Q8_0", n=40, k=64)
    w = PackedWeight.from_gguf(rows, qtype, k)
    dense = torch.from_numpy(dequantize(rows, T.Q8_0))
    assert w.shape == (40, 64) and w.dtype == torch.float32 and w.nbytes_stored == rows.nbytes
    ids = torch.tensor([[3, 0, 39], [7, 7, 1]])
    assert torch.equal(F.embedding(ids, w), dense[ids])  # only the looked-up rows
    assert torch.equal(w[5:9], dense[5:9])  # anything else: the dequantised tensor
    assert torch.equal(w.T @ torch.ones(40), dense.T @ torch.ones(40))
    half = w.to(torch.bfloat16)  # conversions keep the blocks
    assert isinstance(half, PackedWeight) and half.dtype == torch.bfloat16
    x = torch.randn(3, 64)
    assert F.linear(x.bfloat16(), half).dtype == torch.bfloat16
    # decode: the regrouped Q8_0x kernel rounds x to int16 per 32 values (see _check_regrouped)
    torch.testing.assert_close(F.linear(x, w), x @ dense.T, rtol=1e-3, atol=2e-3)
    big = torch.randn(20, 64)  # prefill: more than MAX_ROWS rows use the dense GEMM
    torch.testing.assert_close(F.linear(big, w), big @ dense.T, rtol=1e-5, atol=1e-5)
    c = copy.deepcopy(w)
    assert isinstance(c, PackedWeight) and torch.equal(c.dequantize(), dense)


def test_gradients_reach_the_input_not_the_packed_weight() -> None:
    rows, qtype, k = _random("Q4_1", n=16, k=64)
    lin = PackedLinear(PackedWeight.from_gguf(rows, qtype, k), torch.zeros(16))
    dense = torch.from_numpy(dequantize(rows, T.Q4_1))
    x = torch.randn(2, 64, requires_grad=True)
    lin(x).square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.linear(xr, dense).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
    assert lin.bias is not None and lin.bias.requires_grad is False  # frozen


def test_row_permutation_and_fusion_of_mixed_types() -> None:
    """Llama GGUFs permute Q/K rows; Gemma's fused Q|K|V mixes types: rows move as blocks."""
    q, tq, k = _random("Q4_1", n=32, k=64, seed=1)
    kk, tk, _ = _random("Q8_0", n=16, k=64, seed=2)
    v, tv, _ = _random("Q8_0", n=16, k=64, seed=3)
    dq, dk, dv = (torch.from_numpy(dequantize(r, T(t))) for r, t in ((q, tq), (kk, tk), (v, tv)))
    pq = llama_cpp_unpermute(PackedWeight.from_gguf(q, tq, k), 4)
    assert isinstance(pq, PackedWeight) and torch.equal(pq.dequantize(), llama_cpp_unpermute(dq, 4))
    assert torch.equal(llama_cpp_permute(llama_cpp_unpermute(dq, 4), 4), dq)
    fused = fuse_rows(pq, PackedWeight.from_gguf(kk, tk, k), PackedWeight.from_gguf(v, tv, k))
    assert isinstance(fused, PackedWeight) and fused.types == ("Q4_1", "Q8_0")  # K and V merged
    ref = torch.cat([llama_cpp_unpermute(dq, 4), dk, dv])
    assert torch.equal(fused.dequantize(), ref)
    x = torch.randn(1, 64)
    # within the int16 rounding of x the Q4_1 rows' kernel makes (a misplaced row is off by O(1))
    torch.testing.assert_close(PackedLinear(fused)(x), x @ ref.T, rtol=1e-3, atol=2e-3)
    sel = torch.tensor([40, 2, 63, 33])  # rows across segments
    assert torch.equal(fused.take_rows(sel).dequantize(), ref[sel])


@needs_kernels
def test_ops_trace_under_torch_compile_and_show_in_the_profiler() -> None:
    rows, qtype, k = _random("Q4_1", n=24, k=64)
    blocks = torch.from_numpy(rows)
    x = torch.randn(2, 64)

    def f(x: Tensor) -> Tensor:
        return torch.relu(torch.ops.headcount.gemv_q(x, blocks, qtype, k)) + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # fake tensors: Meta impl
    torch.testing.assert_close(compiled(x), f(x))
    from torch.profiler import profile

    with profile() as prof:
        f(x)
    assert "headcount::gemv_q" in {e.key for e in prof.key_averages()}


def test_packed_linear_copies_and_moves_hold_one_set_of_blocks() -> None:
    """The decode shortcut of a `PackedLinear` (plain attributes, no Module.__getattr__) reads
    the weight's own blocks after ``deepcopy`` and ``.to(dtype)``, never a second copy."""
    rows, qtype, k = _random("Q4_1", n=16, k=64)
    lin = PackedLinear(PackedWeight.from_gguf(rows, qtype, k), torch.randn(16))
    x = torch.randn(1, 64)
    for other in (copy.deepcopy(lin), copy.deepcopy(lin).to(torch.bfloat16)):
        assert other._fast is not None and other._fast[1] is other.weight.segments[0][1]
        assert other._fast[1].data_ptr() != lin.weight.segments[0][1].data_ptr()
        with torch.inference_mode():
            y = other(x.to(other.weight.dtype))
            torch.testing.assert_close(y.float(), lin(x), rtol=2e-2, atol=2e-2)
