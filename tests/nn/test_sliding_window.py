"""Sliding-window attention and the ring KV cache against a float64 reference with a band mask.

The reference is `reference_attention` (per head, float64) given an explicit banded mask: the
query at absolute position p may see keys p-W+1 .. p, as transformers' Mistral and Gemma 3 do.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from headcount import Attention, CacheOverflowError, ConfigError, KVCache, RoPE, ShapeError
from tests.nn.reference import reference_attention

C, D = 64, 16


def make(H: int, G: int, W: int | None, group_sizes: tuple[int, ...] | None = None) -> Attention:
    torch.manual_seed(0)
    return Attention(
        C, H, G, head_dim=D, bias=True, rope=RoPE(D), window=W, group_sizes=group_sizes
    ).eval()


def band(T: int, S: int, W: int) -> torch.Tensor:
    """(T, S) bool: query t at absolute position S - T + t sees keys p - W + 1 .. p."""
    p = torch.arange(S - T, S)[:, None]
    s = torch.arange(S)[None, :]
    return (s <= p) & (s > p - W)


CASES = [(4, 1, None), (4, 4, None), (8, 2, None), (6, 3, (1, 3, 2))]  # MQA, MHA, GQA, uneven


@pytest.mark.parametrize(("H", "G", "sizes"), CASES)
@pytest.mark.parametrize("W", [1, 5, 40])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_causal_prefill_equals_band_reference(
    H: int, G: int, sizes: tuple[int, ...] | None, W: int, backend: str
) -> None:
    attn = make(H, G, W, sizes)
    attn.backend = backend  # type: ignore[assignment]
    torch.manual_seed(1)
    x = torch.randn(2, 23, C)
    ref, ref_w = reference_attention(attn, x, allowed=band(23, 23, W))
    y, w = attn(x, causal=True, return_weights=True)
    assert_close(y.double(), ref, atol=2e-5, rtol=2e-5)
    assert_close(w.double(), ref_w, atol=2e-6, rtol=2e-5)
    assert_close(attn(x, causal=True).double(), ref, atol=2e-5, rtol=2e-5)  # no weights: SDPA
    assert bool((w[..., ~band(23, 23, W)] == 0).all())


def test_window_none_is_unchanged_and_large_window_is_full() -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 12, C)
    full = make(8, 2, None)(x, causal=True)
    assert_close(make(8, 2, 12)(x, causal=True), full, atol=1e-6, rtol=1e-6)
    assert_close(make(8, 2, 1000)(x, causal=True), full, atol=1e-6, rtol=1e-6)
    assert make(8, 2, None).window is None and "window=12" in repr(make(8, 2, 12))


@pytest.mark.parametrize(("H", "G", "sizes"), CASES)
@pytest.mark.parametrize("W", [1, 4, 7])
def test_ring_cache_decode_far_past_the_window(
    H: int, G: int, sizes: tuple[int, ...] | None, W: int
) -> None:
    attn = make(H, G, W, sizes)
    torch.manual_seed(3)
    T = 30
    x = torch.randn(2, T, C)
    ref, _ = reference_attention(attn, x, allowed=band(T, T, W))
    cache = KVCache(2, 64, G, D, window=W)
    assert cache.slots == W and cache.max_len == 64
    out = [attn(x[:, :9], causal=True, cache=cache)]
    out += [attn(x[:, t : t + 1], causal=True, cache=cache) for t in range(9, T)]
    assert_close(torch.cat(out, 1).double(), ref, atol=2e-5, rtol=2e-5)
    assert cache.length == T and cache.k.shape == (2, G, W, D)


@pytest.mark.parametrize("W", [3, 6])
def test_ring_cache_chunked_prefill_and_weights(W: int) -> None:
    attn = make(4, 1, W)
    torch.manual_seed(4)
    T = 21
    x = torch.randn(1, T, C)
    ref, ref_w = reference_attention(attn, x, allowed=band(T, T, W))
    cache = KVCache(1, T, 1, D, window=W)
    ys = []
    for lo, hi in ((0, 2), (2, 10), (10, 11), (11, 12), (12, 21)):
        y, w = attn(x[:, lo:hi], causal=True, cache=cache, return_weights=True)
        n_keys = w.shape[-1]  # the last W-1 cached positions (or fewer) + the new ones
        assert n_keys == min(lo, W - 1) + hi - lo
        assert_close(w.double(), ref_w[:, :, lo:hi, hi - n_keys : hi], atol=2e-6, rtol=2e-5)
        ys.append(y)
    assert_close(torch.cat(ys, 1).double(), ref, atol=2e-5, rtol=2e-5)


def test_ring_cache_batch_with_left_padding() -> None:
    """Row 0 is left-padded by 3: it equals the unpadded sequence at every step."""
    attn, W = make(8, 2, 4), 4
    torch.manual_seed(5)
    short = torch.randn(1, 11, C)
    other = torch.randn(1, 14, C)
    x = torch.cat([torch.cat([torch.zeros(1, 3, C), short], 1), other], 0)  # (2, 14, C)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[0, :3] = False
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(2, 14, 2, D, window=W)
    outs = [
        attn(x[:, :6], causal=True, cache=cache, attention_mask=mask[:, :6], positions=pos[:, :6])
    ]
    for t in range(6, 14):
        outs.append(
            attn(
                x[:, t : t + 1],
                causal=True,
                cache=cache,
                attention_mask=mask[:, : t + 1],
                positions=pos[:, t : t + 1],
            )
        )
    y = torch.cat(outs, 1)
    # the reference sees the same sequence-index band and the padding mask; RoPE per row
    allowed = band(14, 14, W)[None, None] & mask[:, None, None, :]
    for b in range(2):
        ref, _ = reference_attention(
            attn, x[b : b + 1], allowed=allowed[b : b + 1], positions=pos[b]
        )
        assert_close(y[b : b + 1, 3:].double(), ref[:, 3:], atol=2e-5, rtol=2e-5)
    # the padded row's real tokens see the same keys as the unpadded sequence would, shifted
    ref_short, _ = reference_attention(attn, short, allowed=band(11, 11, W))
    assert_close(y[0, 6:].double(), ref_short[0, 3:], atol=2e-5, rtol=2e-5)


def test_ring_cache_memory_is_flat_beyond_the_window() -> None:
    attn, W = make(4, 1, 8), 8
    small = KVCache(1, 100, 1, D, window=W)
    big = KVCache(1, 100_000, 1, D, window=W)
    assert small.nbytes == big.nbytes == 2 * W * D * 4
    for _ in range(50):
        attn(torch.randn(1, 1, C), causal=True, cache=big)
        assert big.k.shape[2] == W and big.nbytes == 2 * W * D * 4
    assert big.length == 50 and big.held == W
    assert big.positions().tolist() == [48, 49, 42, 43, 44, 45, 46, 47]


def test_ring_cache_overflow_past_max_len_raises() -> None:
    attn = make(4, 1, 3)
    cache = KVCache(1, 5, 1, D, window=3)
    attn(torch.randn(1, 5, C), causal=True, cache=cache)
    with pytest.raises(CacheOverflowError, match="max_len=5"):
        attn(torch.randn(1, 1, C), causal=True, cache=cache)
    assert cache.length == 5


def test_mismatched_windows_and_cross_attention_are_rejected() -> None:
    with pytest.raises(ConfigError, match="window"):
        make(4, 1, 8)(torch.randn(1, 2, C), causal=True, cache=KVCache(1, 9, 1, D, window=4))
    with pytest.raises(ConfigError, match="window"):
        make(4, 1, None)(torch.randn(1, 2, C), causal=True, cache=KVCache(1, 9, 1, D, window=4))
    with pytest.raises(ConfigError, match="self-attention"):
        make(4, 1, 8)(torch.randn(1, 2, C), torch.randn(1, 3, C))
    with pytest.raises(ConfigError, match="window"):
        Attention(C, 4, window=0)
    with pytest.raises(ConfigError, match="window"):
        KVCache(1, 4, 1, D, window=0)
    with pytest.raises(ShapeError, match="attention_mask"):
        make(4, 1, 3)(
            torch.randn(1, 2, C),
            causal=True,
            cache=KVCache(1, 9, 1, D, window=3),
            attention_mask=torch.ones(1, 3, dtype=torch.bool),
        )


def test_windowed_attention_with_a_plain_cache_equals_full_pass() -> None:
    """A full-length cache also serves a windowed layer (the band mask does the work)."""
    attn, W = make(8, 2, 5), 5
    torch.manual_seed(6)
    x = torch.randn(1, 17, C)
    full = attn(x, causal=True)
    cache = KVCache(1, 17, 2, D)
    out = [attn(x[:, :8], causal=True, cache=cache)]
    out += [attn(x[:, t : t + 1], causal=True, cache=cache) for t in range(8, 17)]
    assert_close(torch.cat(out, 1), full, atol=2e-5, rtol=2e-5)
    ref, _ = reference_attention(attn, x, allowed=band(17, 17, W))
    assert_close(full.double(), ref, atol=2e-5, rtol=2e-5)
