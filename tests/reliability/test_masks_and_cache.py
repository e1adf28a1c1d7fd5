"""Issue 13, items 3 and 5: additive masks are never read inverted, and a call that fails on its
masks leaves the KV cache as it was."""

from __future__ import annotations

import pytest
import torch

from headcount.errors import ShapeError
from headcount.nn import Attention, KVCache
from tests.prune.conftest import tiny_decoder, tiny_encoder


def additive(mask: torch.Tensor) -> torch.Tensor:
    """0 for real keys, -inf for padding: the other common mask convention."""
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


def test_decoder_and_encoder_refuse_an_additive_padding_mask() -> None:
    ids = torch.randint(0, 40, (2, 6))
    real = torch.ones(2, 6, dtype=torch.bool)
    real[1, :2] = False
    dec, enc = tiny_decoder(), tiny_encoder()
    for model in (dec, enc):
        with pytest.raises(ShapeError, match="additive mask as attn_mask"):
            model(ids, attention_mask=additive(real))
    # 0/1 integers and floats are what the HF convention allows: same logits as bool
    want = dec(ids, attention_mask=real).logits
    for m in (real.long(), real.float()):
        torch.testing.assert_close(dec(ids, attention_mask=m).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize("window", [None, 4])
def test_a_call_that_fails_on_its_masks_leaves_the_cache_untouched(window: int | None) -> None:
    torch.manual_seed(0)
    attn = Attention(16, 4, 2, window=window).eval()
    cache = KVCache(1, 32, 2, 4, dtype=torch.float32, window=window)
    x = torch.randn(1, 3, 16)
    attn(x, causal=True, cache=cache)
    k0, v0, n0 = cache.k.clone(), cache.v.clone(), cache.length
    nxt = torch.randn(1, 2, 16)
    bad = [
        dict(attention_mask=torch.ones(1, 2, dtype=torch.bool)),  # not over the cached keys
        dict(attention_mask=additive(torch.tensor([[True, False, True, True, True]]))),
        dict(attn_mask=torch.ones(1, 1, 2, 7, dtype=torch.bool)),  # wrong key count
        dict(attn_mask=torch.ones(1, 1, 2, 5, dtype=torch.long)),  # neither bool nor float
    ]
    for kw in bad:
        with pytest.raises((ShapeError, TypeError)):
            attn(nxt, causal=True, cache=cache, **kw)
        assert cache.length == n0
        assert torch.equal(cache.k, k0) and torch.equal(cache.v, v0)
    # and the cache still decodes exactly like a full pass
    y = attn(nxt, causal=True, cache=cache)
    full = attn(torch.cat([x, nxt], 1), causal=True)
    torch.testing.assert_close(y, full[:, 3:], rtol=1e-5, atol=1e-6)
