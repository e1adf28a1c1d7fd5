"""KVCache: decoding with the cache equals one full forward pass, without per-query-head copies."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from headcount import (
    Attention,
    CacheOverflowError,
    ConfigError,
    DTypeError,
    KVCache,
    RoPE,
    ShapeError,
)


def make(H: int, G: int, D: int = 16, C: int = 64, rope: bool = True) -> Attention:
    return Attention(
        C, H, G, head_dim=D, bias=True, rope=RoPE(D, base=10_000) if rope else None
    ).eval()


@pytest.mark.parametrize(("H", "G"), [(8, 8), (8, 2), (8, 1)])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_then_decode_equals_full_pass(H: int, G: int, B: int, dtype: torch.dtype) -> None:
    attn = make(H, G).to(dtype)
    T, prefill = 20, 7
    x = torch.randn(B, T, 64, dtype=dtype)
    full = attn(x, causal=True)
    cache = KVCache(B, 32, G, 16, dtype=dtype)
    steps = [attn(x[:, :prefill], causal=True, cache=cache)]
    steps += [attn(x[:, t : t + 1], causal=True, cache=cache) for t in range(prefill, T)]
    tol = {"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    assert_close(torch.cat(steps, dim=1), full, **tol)
    assert cache.length == T


@pytest.mark.parametrize(("H", "G"), [(8, 8), (8, 2), (8, 1)])
def test_chunked_appends_and_weights_equal_full_pass(H: int, G: int) -> None:
    attn = make(H, G)
    x = torch.randn(2, 12, 64)
    full, full_w = attn(x, causal=True, return_weights=True)
    cache = KVCache(2, 12, G, 16)
    outs, ws = [], []
    for lo, hi in ((0, 5), (5, 9), (9, 10), (10, 12)):
        y, w = attn(x[:, lo:hi], causal=True, cache=cache, return_weights=True)
        outs.append(y)
        ws.append(torch.nn.functional.pad(w, (0, 12 - hi)))
    assert_close(torch.cat(outs, 1), full, atol=2e-5, rtol=2e-5)
    assert_close(torch.cat(ws, 2), full_w, atol=2e-5, rtol=2e-5)


def test_decode_with_left_padding_matches_unpadded_rows() -> None:
    attn = make(8, 2)
    short = torch.randn(1, 5, 64)
    pad = 3
    x = torch.cat([torch.zeros(1, pad, 64), short], dim=1)
    mask = torch.tensor([[0] * pad + [1] * 5])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    want = attn(short, causal=True)
    cache = KVCache(1, 16, 2, 16)
    got = [
        attn(x[:, :6], causal=True, cache=cache, attention_mask=mask[:, :6], positions=pos[:, :6])
    ]
    for t in range(6, 8):
        got.append(
            attn(
                x[:, t : t + 1],
                causal=True,
                cache=cache,
                attention_mask=mask[:, : t + 1],
                positions=pos[:, t : t + 1],
            )
        )
    assert_close(torch.cat(got, 1)[:, pad:], want, atol=2e-5, rtol=2e-5)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.ops = t.numel(), [*self.ops, str(func)]
        return out


@pytest.mark.parametrize(("H", "G", "sizes"), [(16, 4, None), (16, 1, None), (16, 4, (2, 7, 6, 1))])
@pytest.mark.parametrize("weights", [False, True])
def test_decode_never_expands_kv_to_query_heads(
    H: int, G: int, sizes: tuple[int, ...] | None, weights: bool
) -> None:
    B, S, D = 1, 512, 16
    attn = Attention(64, H, G, head_dim=D, bias=True, rope=RoPE(D), group_sizes=sizes).eval()
    cache = KVCache(B, S + 1, G, D)
    with torch.no_grad():
        attn(torch.randn(B, S, 64), causal=True, cache=cache)
        watch = _LargestOutput()
        with watch:
            attn(torch.randn(B, 1, 64), causal=True, cache=cache, return_weights=weights)
    expanded = B * H * (S + 1) * D  # what repeat_kv would allocate for K alone
    assert watch.largest < expanded / 2, (watch.largest, watch.ops)


def test_cache_is_preallocated_and_written_in_place() -> None:
    cache = KVCache(2, 10, 3, 4)
    ptr = cache.k.data_ptr()
    assert cache.k.shape == (2, 3, 10, 4) and cache.length == 0
    k, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ks, vs = cache.append(k, v)
    assert cache.k.data_ptr() == ptr and ks.data_ptr() == ptr
    assert_close(ks, k) and None
    assert_close(vs, v)
    cache.append(k[:, :, :1], v[:, :, :1])
    assert cache.length == 5
    cache.reset()
    assert cache.length == 0
    assert cache.nbytes == 2 * 2 * 3 * 10 * 4 * 4


@pytest.mark.parametrize(
    ("dtype", "size"),
    [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2), (torch.float64, 8)],
)
def test_nbytes_per_dtype(dtype: torch.dtype, size: int) -> None:
    assert KVCache(3, 7, 2, 5, dtype=dtype).nbytes == 2 * 3 * 2 * 7 * 5 * size


def test_overflow_raises_and_leaves_cache_unchanged() -> None:
    cache = KVCache(1, 4, 2, 8)
    k = torch.randn(1, 2, 3, 8)
    cache.append(k, k)
    before = cache.k.clone()
    with pytest.raises(CacheOverflowError, match=r"3 cached \+ 2 new = 5 positions > max_len=4"):
        cache.append(torch.randn(1, 2, 2, 8), torch.randn(1, 2, 2, 8))
    assert cache.length == 3 and torch.equal(cache.k, before)
    attn = make(4, 2, D=8, C=32)
    with pytest.raises(CacheOverflowError):
        attn(torch.randn(1, 2, 32), causal=True, cache=cache)
    assert cache.length == 3


def test_wrong_cache_is_rejected() -> None:
    attn = make(8, 2)
    x = torch.randn(1, 3, 64)
    with pytest.raises(
        ShapeError,
        match="cache holds n_kv_heads=8, head_dim=16 but the attention produces n_kv_heads=2",
    ):
        attn(x, cache=KVCache(1, 8, 8, 16))
    with pytest.raises(ShapeError, match="head_dim=8"):
        attn(x, cache=KVCache(1, 8, 2, 8))
    with pytest.raises(ShapeError, match="cache batch_size=2 but the input has batch 1"):
        attn(x, cache=KVCache(2, 8, 2, 16))
    with pytest.raises(DTypeError, match="cache dtype is torch.bfloat16"):
        attn(x, cache=KVCache(1, 8, 2, 16, dtype=torch.bfloat16))
    with pytest.raises(ConfigError, match="max_len must be a positive integer, got 0"):
        KVCache(1, 0, 2, 16)


@pytest.mark.parametrize("window", [None, 3])
def test_append_position_equals_append(window: int | None) -> None:
    """The decode step's write of one position ``(B, G, D)`` leaves the buffers, the length and
    the returned views exactly as `append` of the same position ``(B, G, 1, D)`` (a ring past
    its wrap included), and refuses what `append` refuses, changing nothing."""
    a, b = KVCache(2, 7, 3, 4, window=window), KVCache(2, 7, 3, 4, window=window)
    for _ in range(7):
        k, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
        ka, va = a.append(k[:, :, None], v[:, :, None])
        kb, vb = b.append_position(k, v)
        assert b.length == a.length and kb.data_ptr() == b.k.data_ptr()
        for got, want in ((kb, ka), (vb, va), (b.k, a.k), (b.v, a.v)):
            assert_close(got, want, atol=0, rtol=0)
    before = b.k.clone()
    with pytest.raises(CacheOverflowError, match=r"7 cached \+ 1 new = 8 positions > max_len=7"):
        b.append_position(k, v)
    b.reset()
    with pytest.raises(ShapeError, match=r"must both be \(B, G, D\)"):
        b.append_position(k[:, :, None], v[:, :, None])
    with pytest.raises(ShapeError, match="cache holds n_kv_heads=3, head_dim=4"):
        b.append_position(k[:, :2], v[:, :2])
    with pytest.raises(DTypeError, match="cache dtype is torch.float32"):
        b.append_position(k.double(), v.double())
    assert b.length == 0 and torch.equal(b.k, before)
