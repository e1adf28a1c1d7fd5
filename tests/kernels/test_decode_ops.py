"""The fused decode-step ops against independent references:

* ``headcount::decode_attention`` (one attention step: RoPE, the cache write, grouped attention)
  against float64 math written out here (rotate-half RoPE, softmax attention per query head over
  its KV head's keys), for MHA, GQA, MQA and uneven groups, with and without RoPE, float32 and
  bfloat16, a ring slot; its errors;
* `headcount.nn.Attention` decoding through it equals the op-by-op path (kernels switched off)
  over many steps: plain and sliding-window caches, per-head norms, a head gate, batches;
* ``headcount::silu_mul`` (SwiGLU's gate) against float64, bfloat16 equal to torch's three ops;
* the GEMV ops take ``(..., K)`` inputs and give ``(..., N)``, equal to the 2-D call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from headcount import kernels
from headcount.nn import Attention, KVCache, RMSNorm, RoPE
from tests.kernels.conftest import needs_kernels

pytestmark = needs_kernels


def _rope64(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """float64 rotate-half RoPE of ``x (..., D)`` at one position, from its definition."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos * inv
    cos, sin = torch.cat((ang.cos(), ang.cos())), torch.cat((ang.sin(), ang.sin()))
    rot = torch.cat((-x[..., D // 2 :], x[..., : D // 2]), -1)
    return x * cos + rot * sin


def _reference(qkv, kc, vc, pos, slot, held, scale, sizes, rope):
    """float64: (y (B, H, D), k cache, v cache) after writing the new key/value at ``slot``."""
    B, _, D = qkv.shape
    G, H = len(sizes), sum(sizes)
    x = qkv.double()
    q, k, v = x[:, :H], x[:, H : H + G], x[:, H + G :]
    if rope:
        q, k = _rope64(q, pos), _rope64(k, pos)
    kc, vc = kc.double().clone(), vc.double().clone()
    kc[:, :, slot], vc[:, :, slot] = k, v
    y = torch.empty(B, H, D, dtype=torch.float64)
    h = 0
    for g, r in enumerate(sizes):
        keys, vals = kc[:, g, :held], vc[:, g, :held]  # (B, S, D)
        w = torch.softmax(torch.einsum("brd,bsd->brs", q[:, h : h + r], keys) * scale, -1)
        y[:, h : h + r] = torch.einsum("brs,bsd->brd", w, vals)
        h += r
    return y, kc, vc


@pytest.mark.parametrize(
    "sizes",
    [(1, 1, 1, 1), (3, 3, 3), (4,), (1, 3, 2), (6, 1)],
    ids=["mha", "gqa", "mqa", "uneven", "wide"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", [True, False])
# head sizes and held slots that reach every path of the kernel: 16 keys at a time and the last
# few alone; the weighted sum's 64-column register blocks (4 heads at a time, then the rest) and
# its last D % 64 columns
@pytest.mark.parametrize(("D", "held", "slots"), [(32, 29, 40), (64, 70, 80), (144, 33, 40)])
def test_decode_attention_equals_float64(sizes, dtype, rope, D, held, slots) -> None:
    g = torch.Generator().manual_seed(len(sizes) + D)
    B = 2
    G, H = len(sizes), sum(sizes)
    qkv = torch.randn(B, H + 2 * G, D, generator=g).to(dtype)
    kc = torch.randn(B, G, slots, D, generator=g).to(dtype)
    vc = torch.randn(B, G, slots, D, generator=g).to(dtype)
    pos, slot, scale = 57 + slots, 17, D**-0.5  # a ring: slot 17 takes a later position
    table = RoPE(D).table(pos + 1, dtype, torch.device("cpu"))
    cos, ss = (table[0], table[2]) if rope else (None, None)
    ref, ref_k, ref_v = _reference(qkv, kc, vc, pos, slot, held, scale, sizes, rope)
    y = torch.ops.headcount.decode_attention(qkv, cos, ss, pos, kc, vc, slot, held, scale, sizes)
    assert y.shape == (B, 1, H * D) and y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.view(B, H, D).double(), ref, **tol)
    torch.testing.assert_close(kc.double(), ref_k, **tol)  # the new key written, roped
    torch.testing.assert_close(vc.double(), ref_v, rtol=0, atol=0)  # the value copied exactly
    if dtype == torch.bfloat16 and rope:  # the key rounded as RoPE.rotate rounds it
        r = RoPE(D)
        k = qkv[:, H : H + G]
        assert torch.equal(kc[:, :, slot], r.rotate(k, table[0][pos], table[2][pos]))


def test_decode_attention_errors() -> None:
    qkv, kc = torch.randn(1, 5, 8), torch.zeros(1, 1, 4, 8)
    op = torch.ops.headcount.decode_attention
    with pytest.raises(RuntimeError, match="H \\+ 2G"):
        op(qkv, None, None, 0, kc, kc.clone(), 0, 1, 1.0, [2])
    with pytest.raises(RuntimeError, match="do not fit"):
        op(qkv, None, None, 0, kc, kc.clone(), 3, 3, 1.0, [3])
    with pytest.raises(RuntimeError, match="caches must be"):
        op(qkv, None, None, 0, torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 0, 1, 1.0, [3])
    with pytest.raises(RuntimeError, match="RoPE tables"):
        t = torch.zeros(2, 8)
        op(qkv, t, t, 5, kc, kc.clone(), 0, 1, 1.0, [3])  # position past the table
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        op(qkv.double(), None, None, 0, kc.double(), kc.double(), 0, 1, 1.0, [3])


def _steps(att: Attention, x: torch.Tensor, cache: KVCache, prompt: int) -> torch.Tensor:
    att(x[:, :prompt], causal=True, cache=cache)
    return torch.cat(
        [att(x[:, t : t + 1], causal=True, cache=cache) for t in range(prompt, x.shape[1])], 1
    )


@pytest.mark.parametrize("case", ["gqa", "mqa-window", "uneven", "norms", "gate"], ids=lambda c: c)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_steps_equal_the_op_path(case, dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    H, G, sizes, window = 6, 3, None, None
    if case == "mqa-window":
        H, G, window = 4, 1, 7
    if case == "uneven":
        sizes = (1, 3, 2)
    norms = {}
    if case == "norms":
        norms = {"q_norm": RMSNorm(16, eps=1e-6), "k_norm": RMSNorm(16, eps=1e-6)}
        with torch.no_grad():
            for n in norms.values():
                n.weight.uniform_(0.5, 1.5)
    att = Attention(48, H, G, 16, rope=RoPE(16), group_sizes=sizes, window=window, **norms)
    if case == "gate":
        att.head_gate = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 2.0])
    att = att.to(dtype).eval()
    x = torch.randn(2, 20, 48).to(dtype)
    with torch.inference_mode():
        with profile() as prof:
            fused = _steps(att, x, KVCache(2, 20, G, 16, dtype=dtype, window=window), 5)
        calls = [e for e in prof.events() if e.name == "headcount::decode_attention"]
        monkeypatch.setattr(kernels, "FUSED_DTYPES", ())
        ops = _steps(att, x, KVCache(2, 20, G, 16, dtype=dtype, window=window), 5)
        full = att(x, causal=True)[:, 5:]
    assert len(calls) == 15  # every step took the fused op
    tol = dict(rtol=1e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused, ops, **tol)
    torch.testing.assert_close(fused, full, **tol)


def test_cache_overflow_still_raises() -> None:
    att = Attention(32, 4, 2, 8, rope=RoPE(8)).eval()
    cache = KVCache(1, 3, 2, 8)
    with torch.inference_mode():
        att(torch.randn(1, 3, 32), causal=True, cache=cache)
        from headcount.errors import CacheOverflowError

        with pytest.raises(CacheOverflowError, match="max_len=3"):
            att(torch.randn(1, 1, 32), causal=True, cache=cache)
    assert cache.length == 3


@pytest.mark.parametrize("shape", [(1, 1, 2 * 1536), (3, 5, 2 * 96), (7, 2 * 33)])
def test_silu_mul_equals_float64(shape) -> None:
    x = torch.randn(*shape) * 4
    got = torch.ops.headcount.silu_mul(x)
    g, u = x.double().chunk(2, -1)
    torch.testing.assert_close(got.double(), g * torch.sigmoid(g) * u, rtol=2e-6, atol=2e-6)
    xb = x.bfloat16()
    gb, ub = xb.chunk(2, -1)
    assert torch.equal(torch.ops.headcount.silu_mul(xb), F.silu(gb) * ub)
    with pytest.raises(RuntimeError, match="2F"):
        torch.ops.headcount.silu_mul(torch.randn(3, 5))


def test_direct_entry_points_equal_the_torch_ops() -> None:
    """`kernels.direct()` (the extension's own Python functions, the decode path's) computes
    what the registered torch ops compute, and records under the same names."""
    d = kernels.direct()
    assert d is not torch.ops.headcount
    x, w = torch.randn(2, 1, 64), torch.randn(64)
    assert torch.equal(d.rms_norm(x, w, 1e-5), torch.ops.headcount.rms_norm(x, w, 1e-5))
    assert torch.equal(d.silu_mul(x), torch.ops.headcount.silu_mul(x))
    with profile() as prof:
        d.silu_mul(x)
    assert "headcount::silu_mul" in {e.name for e in prof.events()}
    with pytest.raises(RuntimeError, match="2F"):
        d.silu_mul(torch.randn(3))


@pytest.mark.parametrize("shape", [(2, 1, 64), (3, 2, 64), (64,)])
def test_gemv_takes_leading_dims(shape) -> None:
    x = torch.randn(*shape)
    w = torch.randn(40, 64).bfloat16()
    got = torch.ops.headcount.gemv(x, w, None)
    assert got.shape == (*shape[:-1], 40)
    torch.testing.assert_close(
        got.reshape(-1, 40), torch.ops.headcount.gemv(x.reshape(-1, 64), w, None)
    )
    torch.testing.assert_close(got.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)
    assert kernels.available()


def test_a_failing_step_leaves_the_cache_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step claims the cache position before the op writes it: an op that raises must not
    leave a counted position that holds nothing."""
    att = Attention(32, 4, 2, 8, rope=RoPE(8)).eval()
    cache = KVCache(1, 8, 2, 8)

    real = kernels.direct()

    class Broken:  # the real entry points, but a decode_attention that raises
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def decode_attention(self, *args: object) -> None:
            raise RuntimeError("decode_attention: boom")

    with torch.inference_mode():
        att(torch.randn(1, 3, 32), causal=True, cache=cache)
        monkeypatch.setattr(kernels, "direct", lambda: Broken())
        with pytest.raises(RuntimeError, match="boom"):
            att(torch.randn(1, 1, 32), causal=True, cache=cache)
    assert cache.length == 3


def test_a_rope_subclass_keeps_its_own_rotation() -> None:
    """A `RoPE` subclass may rotate otherwise than the table the op reads: the step then takes
    the op-by-op path, which calls the subclass."""

    class Doubled(RoPE):
        def rotate_at(self, x: torch.Tensor, position: int) -> torch.Tensor:
            return super().rotate_at(x, 2 * position)

        def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return super().forward(x, 2 * positions)

    torch.manual_seed(0)
    att = Attention(32, 4, 2, 8, rope=Doubled(8)).eval()
    x = torch.randn(1, 6, 32)
    with torch.inference_mode(), profile() as prof:
        steps = _steps(att, x, KVCache(1, 6, 2, 8), 3)
        full = att(x, causal=True)[:, 3:]
    assert "headcount::decode_attention" not in {e.name for e in prof.events()}
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=2e-6)
