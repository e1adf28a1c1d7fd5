"""Attention against independent references: float64 per-head math, nn.MultiheadAttention, MHA with repeated KV."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from headcount import Attention, ConfigError, DTypeError, KVCache, RoPE, ShapeError
from tests.nn.reference import _rope64, reference_attention

F32 = {"atol": 2e-5, "rtol": 2e-5}
HEADS = [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)]  # (H, G): MHA, GQA, MQA


def make(C: int = 48, H: int = 8, G: int = 2, D: int | None = 8, **kw: object) -> Attention:
    attn = Attention(C, H, G, head_dim=D, **kw).eval()  # type: ignore[arg-type]
    with torch.no_grad():  # biases are zero by default: give them values so they are tested
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


@pytest.mark.parametrize(("H", "G"), HEADS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("weights", [False, True])
def test_matches_float64_reference(H: int, G: int, causal: bool, weights: bool) -> None:
    attn = make(H=H, G=G, bias=True)
    x = torch.randn(3, 11, 48)
    want_y, want_w = reference_attention(attn, x, causal=causal)
    out = attn(x, causal=causal, return_weights=weights)
    y = out[0] if weights else out
    assert_close(y.double(), want_y, **F32)
    if weights:
        assert_close(out[1].double(), want_w, **F32)


def test_head_dim_independent_of_d_model() -> None:
    attn = make(C=40, H=6, G=2, D=16)  # H * D = 96 != C = 40
    assert attn.qkv_proj.weight.shape == ((6 + 2 * 2) * 16, 40)
    assert attn.o_proj.weight.shape == (40, 96)
    x = torch.randn(2, 7, 40)
    assert_close(attn(x, causal=True).double(), reference_attention(attn, x, causal=True)[0], **F32)


def _torch_mha(attn: Attention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(attn.d_model, attn.n_heads, bias=True, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv_proj.weight)  # same [Q | K | V] layout when G == H
        mha.in_proj_bias.copy_(attn.qkv_proj.bias)
        mha.out_proj.weight.copy_(attn.o_proj.weight)
        mha.out_proj.bias.copy_(attn.o_proj.bias)
    return mha


def test_matches_torch_multihead_attention_with_masks() -> None:
    attn = make(C=48, H=6, G=6, D=None, bias=True)
    mha = _torch_mha(attn)
    B, T = 3, 9
    x = torch.randn(B, T, 48)
    real = torch.ones(B, T, dtype=torch.bool)
    real[1, 6:] = False  # padding at the end of row 1
    real[2, :2] = False  # left padding in row 2
    block = torch.rand(T, T) < 0.3
    block.fill_diagonal_(False)  # every query keeps at least itself
    ours, ours_w = attn(x, attention_mask=real, attn_mask=~block, return_weights=True)
    theirs, theirs_w = mha(
        x,
        x,
        x,
        key_padding_mask=~real,
        attn_mask=block,
        need_weights=True,
        average_attn_weights=False,
    )
    # nn.MultiheadAttention gives NaN for queries that see no key; ours gives zeros: compare the rest.
    seen = (real[:, None, :] & ~block[None]).any(-1)  # (B, T)
    assert seen.sum() > 0
    assert_close(ours[seen], theirs[seen], **F32)
    assert_close(ours_w.transpose(1, 2)[seen], theirs_w.transpose(1, 2)[seen], **F32)
    sdpa = attn(x, attention_mask=real, attn_mask=~block)
    assert_close(sdpa, ours, **F32)


def test_matches_torch_multihead_attention_cross() -> None:
    attn = make(C=32, H=4, G=4, D=None, bias=True)
    mha = _torch_mha(attn)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 13, 32)
    assert_close(attn(x, ctx), mha(x, ctx, ctx, need_weights=False)[0], **F32)


@pytest.mark.parametrize(("H", "G"), [(8, 4), (8, 2), (8, 1), (12, 3)])
def test_gqa_equals_mha_with_repeated_kv_heads(H: int, G: int) -> None:
    D, C = 8, 40
    gqa = make(C=C, H=H, G=G, D=D, bias=True)
    mha = Attention(C, H, H, head_dim=D, bias=True).eval()
    R = H // G
    with torch.no_grad():
        Wq, Wk, Wv = gqa.qkv_proj.weight.split([H * D, G * D, G * D])
        bq, bk, bv = gqa.qkv_proj.bias.split([H * D, G * D, G * D])
        rep = torch.arange(H) // R  # query head h reads KV head h // R
        Wk_h, Wv_h = (
            Wk.view(G, D, C)[rep].reshape(H * D, C),
            Wv.view(G, D, C)[rep].reshape(H * D, C),
        )
        bk_h, bv_h = bk.view(G, D)[rep].reshape(-1), bv.view(G, D)[rep].reshape(-1)
        mha.load_projections(Wq, Wk_h, Wv_h, gqa.o_proj.weight, bq, bk_h, bv_h, gqa.o_proj.bias)
    x = torch.randn(2, 10, C)
    for kw in ({"causal": True}, {"causal": False}):
        assert_close(gqa(x, **kw), mha(x, **kw), **F32)
        assert_close(
            gqa(x, return_weights=True, **kw)[1], mha(x, return_weights=True, **kw)[1], **F32
        )


@pytest.mark.parametrize(("H", "G"), HEADS)
@pytest.mark.parametrize("eager", [False, True])
def test_masks_against_reference(H: int, G: int, eager: bool) -> None:
    attn = make(H=H, G=G)
    attn.backend = "eager" if eager else "auto"
    B, T = 2, 8
    x = torch.randn(B, T, 48)
    real = torch.tensor([[1] * T, [0, 0, 0] + [1] * (T - 3)])  # int mask, left padding
    allowed = torch.rand(B, 1, T, T) < 0.7
    additive = torch.randn(1, H, T, T)
    y = attn(x, causal=True, attention_mask=real, attn_mask=allowed)
    want = reference_attention(
        attn, x, causal=True, allowed=allowed & real.bool()[:, None, None, :]
    )[0]
    assert_close(y.double(), want, **F32)
    y = attn(x, attn_mask=additive)
    assert_close(y.double(), reference_attention(attn, x, additive=additive)[0], **F32)


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_give_zeros(eager: bool, dtype: torch.dtype) -> None:
    attn = make(H=4, G=2, D=8, C=32, bias=True).to(dtype)
    x = torch.randn(2, 5, 32, dtype=dtype)
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    allowed[0, 0, 3] = False  # query 3 of row 0 sees nothing
    neg = torch.zeros(2, 1, 5, 5, dtype=dtype)
    neg[1, 0, 1] = float("-inf")  # query 1 of row 1 sees nothing
    y, w = attn(x, attn_mask=allowed, return_weights=True)
    assert torch.isfinite(y).all() and torch.isfinite(w).all()
    assert (w[0, :, 3] == 0).all()
    o_bias = attn.o_proj.bias.detach()
    assert_close(y[0, 3], o_bias)  # zero heads -> only the output bias
    y2 = attn(x, attn_mask=neg)
    assert torch.isfinite(y2).all()
    assert_close(y2[1, 1], o_bias)
    padded = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    y3 = attn(x, attention_mask=padded)
    assert torch.isfinite(y3).all() and (y3[1] == o_bias).all()
    if not eager:
        return
    attn.backend = "eager"
    assert_close(attn(x, attn_mask=allowed), y)


@pytest.mark.parametrize(("H", "G"), HEADS)
def test_rope_against_reference(H: int, G: int) -> None:
    attn = make(H=H, G=G, rope=RoPE(8, base=500.0))
    x = torch.randn(2, 9, 48)
    assert_close(attn(x, causal=True).double(), reference_attention(attn, x, causal=True)[0], **F32)
    pos = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11], [0, 0, 1, 2, 3, 4, 5, 6, 7]])
    want = torch.stack(
        [
            reference_attention(attn, x[i : i + 1], causal=True, positions=pos[i])[0][0]
            for i in range(2)
        ]
    )
    assert_close(attn(x, causal=True, positions=pos).double(), want, **F32)


def test_cross_attention_against_reference_and_cache() -> None:
    attn = make(H=6, G=2, bias=True)
    x, ctx = torch.randn(2, 4, 48), torch.randn(2, 7, 48)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    want = reference_attention(attn, x, ctx, allowed=mask.bool()[:, None, None, :])[0]
    assert_close(attn(x, ctx, attention_mask=mask).double(), want, **F32)
    cache = KVCache(2, 7, 2, 8)
    first = attn(x[:, :2], ctx, cache=cache, attention_mask=mask)  # fills the cache from ctx
    assert cache.length == 7
    second = attn(x[:, 2:], ctx, cache=cache, attention_mask=mask)  # reuses it
    assert cache.length == 7
    assert_close(torch.cat([first, second], 1).double(), want, **F32)
    with pytest.raises(ShapeError, match="causal"):
        attn(x, ctx[:, :3], causal=True)


def test_per_head_weight_views() -> None:
    attn = make(C=40, H=6, G=2, D=16, bias=False)
    x = torch.randn(1, 3, 40)
    q = attn.qkv_proj(x)[..., : 6 * 16].view(1, 3, 6, 16)
    for h in range(6):
        assert_close(x @ attn.W_Q[h], q[0:1, :, h])
    k = attn.qkv_proj(x)[..., 96 : 96 + 32].view(1, 3, 2, 16)
    assert_close(x @ attn.W_K[1], k[:, :, 1])
    z = torch.randn(1, 3, 6, 16)
    assert_close(sum(z[:, :, h] @ attn.W_O[h] for h in range(6)), attn.o_proj(z.reshape(1, 3, 96)))
    assert attn.W_Q.data_ptr() == attn.qkv_proj.weight.data_ptr()  # views, not copies
    assert [attn.kv_head_of(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]


def test_head_gate_and_weights_hook() -> None:
    attn = make(H=4, G=2, D=8, C=32)
    x = torch.randn(1, 6, 32)
    seen: list[torch.Tensor] = []
    attn.weights_hook = seen.append
    y = attn(x, causal=True)
    assert len(seen) == 1 and seen[0].shape == (1, 4, 6, 6)
    assert_close(seen[0].double(), reference_attention(attn, x, causal=True)[1], **F32)
    attn.weights_hook = None
    attn.head_gate = torch.tensor([1.0, 0.0, 1.0, 1.0])
    gated = attn(x, causal=True)
    with torch.no_grad():
        attn.o_proj.weight[:, 8:16] = 0  # removing head 1's output columns is the same thing
    attn.head_gate = None
    assert_close(gated, attn(x, causal=True))
    assert not torch.allclose(gated, y)


def test_parameter_counts_match_formulas() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    C = 4096
    assert count(Attention(C, 32, device="meta")) == 4 * C * C == 67_108_864
    assert count(Attention(C, 32, 8, head_dim=128, device="meta")) == 41_943_040  # Llama-3-8B
    assert count(Attention(C, 32, 1, head_dim=128, device="meta")) == 2 * C * C + 2 * C * 128
    assert count(Attention(768, 12, bias=True, device="meta")) == 4 * 768 * 768 + 4 * 768


def test_gradcheck_float64() -> None:
    attn = Attention(8, 4, 2, head_dim=3, bias=True, rope=RoPE(3, rotary_dim=2)).double()
    with torch.no_grad():
        attn.qkv_proj.weight.mul_(3)
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda t: attn(t, causal=True, attention_mask=mask), (x,))
    for path in ("eager", "auto"):
        attn.backend = path  # type: ignore[assignment]
        attn.zero_grad()
        attn(x, causal=True).sum().backward()
        grads = [p.grad for p in attn.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"d_model": 64, "n_heads": 6, "n_kv_heads": 4, "head_dim": 8},
            "n_heads=6 is not a multiple of n_kv_heads=4",
        ),
        ({"d_model": 64, "n_heads": 0}, "n_heads must be a positive integer, got 0"),
        ({"d_model": -1, "n_heads": 2}, "d_model must be a positive integer, got -1"),
        (
            {"d_model": 64, "n_heads": 4, "head_dim": 0},
            "head_dim must be a positive integer, got 0",
        ),
        ({"d_model": 60, "n_heads": 8}, "d_model=60 is not divisible by n_heads=8"),
        ({"d_model": 64, "n_heads": 4, "dropout": 1.5}, "dropout must be in"),
        ({"d_model": 64, "n_heads": 4, "rope": RoPE(8)}, "rope was built for head_dim=8"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        Attention(**kwargs)


def test_bad_inputs() -> None:
    attn = make(C=32, H=4, G=2, D=8)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ShapeError, match=r"x must be \(B, T, d_model=32\), got \(2, 5, 31\)"):
        attn(torch.randn(2, 5, 31))
    with pytest.raises(ShapeError, match="got \\(5, 32\\)"):
        attn(torch.randn(5, 32))
    with pytest.raises(
        DTypeError, match="torch.float64 but the attention weights are torch.float32"
    ):
        attn(x.double())
    with pytest.raises(ShapeError, match=r"attention_mask must be \(B, S\) = \(2, 5\)"):
        attn(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="additive mask as attn_mask"):
        attn(x, attention_mask=torch.zeros(2, 5).masked_fill(torch.eye(2, 5).bool(), -1e9))
    with pytest.raises(ShapeError, match=r"attn_mask \(3, 5, 5\) does not broadcast"):
        attn(x, attn_mask=torch.ones(3, 5, 5, dtype=torch.bool))
    with pytest.raises(DTypeError, match="attn_mask must be bool or floating"):
        attn(x, attn_mask=torch.ones(5, 5, dtype=torch.int64))
    with pytest.raises(ShapeError, match="context batch 1 != x batch 2"):
        attn(x, torch.randn(1, 5, 32))


def test_rope_keeps_float32_angles_when_the_module_is_cast() -> None:
    rope = RoPE(8, base=10_000)
    ref = RoPE(8, base=10_000)
    pos = torch.arange(3000, 3004)
    rope.to(torch.bfloat16)
    cos, sin = rope.cos_sin(pos, torch.float32)
    want_cos, want_sin = ref.cos_sin(pos, torch.float32)
    assert_close(cos, want_cos, atol=0, rtol=0)
    assert_close(sin, want_sin, atol=0, rtol=0)
    # the table is exactly the per-call float32 formula
    freqs = pos.float()[:, None] * ref.inv_freq
    assert_close(cos, torch.cat([freqs, freqs], -1).cos(), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rope_rotate_at_against_complex_reference(dtype: torch.dtype) -> None:
    """The decode step's RoPE of every head at one position (a matrix product with the cached
    `RoPE.rotation` in float32/64, `RoPE.rotate` in bfloat16) equals float64 complex
    rotation; alternating positions and dtypes never reuses a stale rotation."""
    rope = RoPE(16, base=500.0)
    x = torch.randn(2, 5, 16).to(dtype)  # (B, heads, D)
    # the angles are float32 (as HF computes them): ~2e-5 rad off float64's at position 300
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 5e-5, "rtol": 1e-5}
    for p in (0, 7, 7, 300, 6, 300):
        for dt in (dtype, torch.float32):
            xd = x.to(dt)
            got = rope.rotate_at(xd, p)
            assert got.dtype == dt and got.shape == x.shape
            assert_close(got.double(), _rope64(xd.double(), torch.tensor([p]), 500.0), **tol)
    r = rope.rotation(300, torch.float64, torch.device("cpu"))  # (D, D): cos and signed sin
    half = torch.arange(8)
    assert torch.count_nonzero(r) == 32 and torch.equal(r.diagonal(), r[half, half].repeat(2))
