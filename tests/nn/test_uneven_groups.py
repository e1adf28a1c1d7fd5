"""KV groups of different sizes (left by pruning query heads of a GQA layer) against references:
float64 per-head math, MHA with repeated K/V rows, a full pass for the cache."""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing import assert_close

from headcount import Attention, ConfigError, KVCache, RoPE, ShapeError, kernels
from headcount.nn.functional import GroupRun, eager_attention, group_runs, sdpa_attention
from tests.nn.reference import reference_attention

F32 = {"atol": 2e-5, "rtol": 2e-5}
SIZES = [(2, 3, 1), (1, 1, 4), (3, 1), (1, 2, 2, 1), (2, 2, 1, 1, 3)]  # group sizes, G = len


def make(sizes: tuple[int, ...], C: int = 48, D: int = 8, **kw: object) -> Attention:
    torch.manual_seed(0)
    attn = Attention(C, sum(sizes), len(sizes), head_dim=D, group_sizes=sizes, **kw).eval()  # type: ignore[arg-type]
    with torch.no_grad():  # biases are zero by default: give them values so they are tested
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def test_mapping_and_properties() -> None:
    attn = make((2, 3, 1))
    assert attn.group_sizes == (2, 3, 1) and not attn.uniform_groups
    assert [attn.kv_head_of(h) for h in range(6)] == [0, 0, 1, 1, 1, 2]
    with pytest.raises(ConfigError, match=r"groups differ in size \(group_sizes=\(2, 3, 1\)\)"):
        _ = attn.group_size
    with pytest.raises(ShapeError, match="query head 6 is outside 0..5"):
        attn.kv_head_of(6)
    assert "group_sizes=(2, 3, 1)" in repr(attn)
    uniform = Attention(48, 8, 2)
    assert uniform.group_sizes == (4, 4) and uniform.uniform_groups and uniform.group_size == 4
    assert [uniform.kv_head_of(h) for h in range(8)] == [h // 4 for h in range(8)]
    assert group_runs((2, 2, 3, 1, 1)) == (
        GroupRun(h0=0, g0=0, n=2, R=2),
        GroupRun(h0=4, g0=2, n=1, R=3),
        GroupRun(h0=7, g0=3, n=2, R=1),
    )


@pytest.mark.parametrize(
    ("H", "G", "sizes", "message"),
    [
        (
            6,
            3,
            (2, 3),
            "group_sizes=(2, 3) must be n_kv_heads=3 positive integers summing to n_heads=6",
        ),
        (6, 3, (2, 3, 2), "group_sizes=(2, 3, 2) must be n_kv_heads=3 positive integers"),
        (6, 3, (3, 3, 0), "group_sizes=(3, 3, 0) must be"),
        (6, 3, (2.0, 3, 1), "group_sizes=(2.0, 3, 1) must be"),
        (6, None, (2, 3, 1), "must be n_kv_heads=6 positive integers"),  # G defaults to H
    ],
)
def test_bad_group_sizes(H: int, G: int | None, sizes: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Attention(48, H, G, head_dim=8, group_sizes=sizes)


def test_uneven_groups_need_not_divide() -> None:
    attn = Attention(48, 5, 2, head_dim=8, group_sizes=(3, 2))  # 5 % 2 != 0 is fine here
    assert attn(torch.randn(1, 3, 48)).shape == (1, 3, 48)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("T", [11, 40])  # 40: R*T > FOLD_MAX_ROWS, SDPA's own GQA path
def test_matches_float64_reference(
    sizes: tuple[int, ...], causal: bool, weights: bool, T: int
) -> None:
    attn = make(sizes, bias=True)
    x = torch.randn(3, T, 48)
    want_y, want_w = reference_attention(attn, x, causal=causal)
    out = attn(x, causal=causal, return_weights=weights)
    y = out[0] if weights else out
    assert_close(y.double(), want_y, **F32)
    if weights:
        assert out[1].shape == (3, sum(sizes), T, T)
        assert_close(out[1].double(), want_w, **F32)


@pytest.mark.parametrize("sizes", [(2, 3, 1), (1, 2, 2, 1)])
@pytest.mark.parametrize("eager", [False, True])
def test_masks_against_reference(sizes: tuple[int, ...], eager: bool) -> None:
    attn = make(sizes)
    attn.backend = "eager" if eager else "auto"
    H, B, T = sum(sizes), 2, 8
    x = torch.randn(B, T, 48)
    real = torch.tensor([[1] * T, [0, 0, 0] + [1] * (T - 3)])  # key padding, left
    allowed = torch.rand(B, H, T, T) < 0.7  # a head dim, sliced per run
    y = attn(x, causal=True, attention_mask=real, attn_mask=allowed)
    want = reference_attention(
        attn, x, causal=True, allowed=allowed & real.bool()[:, None, None, :]
    )[0]
    assert_close(y.double(), want, **F32)
    additive = torch.randn(1, H, T, T)
    additive[0, 1, 2] = float("-inf")  # one row of head 1 sees nothing: zeros
    y, w = attn(x, attn_mask=additive, return_weights=True)
    want_y, want_w = reference_attention(attn, x, additive=additive)
    assert_close(y.double(), want_y, **F32)
    assert_close(w.double(), want_w, **F32)
    shared = torch.randn(T, T)  # no head dim: broadcast to every run
    assert_close(
        attn(x, attn_mask=shared).double(),
        reference_attention(attn, x, additive=shared)[0],
        **F32,
    )


def test_rope_positions_against_reference() -> None:
    attn = make((2, 3, 1), D=16, rope=RoPE(16, base=10_000))
    x = torch.randn(2, 9, 48)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 1, 2, 3, 4, 5, 6]])
    y, w = attn(x, causal=True, positions=pos, return_weights=True)
    want_y, want_w = reference_attention(attn, x, causal=True, positions=pos)
    assert_close(y.double(), want_y, **F32)
    assert_close(w.double(), want_w, **F32)


def test_head_gate_and_weights_hook() -> None:
    attn = make((1, 3, 2))
    x = torch.randn(2, 7, 48)
    seen: list[torch.Tensor] = []
    attn.weights_hook = seen.append
    gate = torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0, 0.0])
    attn.head_gate = gate
    y = attn(x, causal=True)
    assert len(seen) == 1 and seen[0].shape == (2, 6, 7, 7)
    _, want_w = reference_attention(attn, x, causal=True)
    assert_close(seen[0].double(), want_w, **F32)
    # the gate scales each head's output: equal to zeroing/scaling that head's W_O rows
    attn.head_gate, attn.weights_hook = None, None
    with torch.no_grad():
        attn.o_proj.weight.mul_(gate.repeat_interleave(8))
    assert_close(y, attn(x, causal=True), **F32)


@pytest.mark.parametrize("sizes", SIZES)
def test_equals_mha_with_repeated_kv_rows(sizes: tuple[int, ...]) -> None:
    D, C = 8, 40
    H, G = sum(sizes), len(sizes)
    uneven = make(sizes, C=C, D=D, bias=True)
    mha = Attention(C, H, H, head_dim=D, bias=True).eval()
    with torch.no_grad():
        Wq, Wk, Wv = uneven.qkv_proj.weight.split([H * D, G * D, G * D])
        bq, bk, bv = uneven.qkv_proj.bias.split([H * D, G * D, G * D])
        rep = torch.tensor([g for g, r in enumerate(sizes) for _ in range(r)])  # (H,)
        Wk_h, Wv_h = (
            Wk.view(G, D, C)[rep].reshape(H * D, C),
            Wv.view(G, D, C)[rep].reshape(H * D, C),
        )
        bk_h, bv_h = bk.view(G, D)[rep].reshape(-1), bv.view(G, D)[rep].reshape(-1)
        mha.load_projections(
            Wq, Wk_h, Wv_h, uneven.o_proj.weight, bq, bk_h, bv_h, uneven.o_proj.bias
        )
    x = torch.randn(2, 10, C)
    for kw in ({"causal": True}, {"causal": False}):
        assert_close(uneven(x, **kw), mha(x, **kw), **F32)
        assert_close(
            uneven(x, return_weights=True, **kw)[1], mha(x, return_weights=True, **kw)[1], **F32
        )


@pytest.mark.parametrize("sizes", [(2, 3, 1), (4, 1, 1, 2)])
@pytest.mark.parametrize("B", [1, 3])
def test_prefill_then_decode_equals_full_pass(sizes: tuple[int, ...], B: int) -> None:
    attn = make(sizes, D=16, rope=RoPE(16, base=10_000))
    T, prefill = 20, 7
    x = torch.randn(B, T, 48)
    full, full_w = attn(x, causal=True, return_weights=True)
    cache = KVCache(B, 32, len(sizes), 16)
    steps = [attn(x[:, :prefill], causal=True, cache=cache)]
    ws = []
    for t in range(prefill, T):
        y, w = attn(x[:, t : t + 1], causal=True, cache=cache, return_weights=True)
        steps.append(y)
        ws.append(torch.nn.functional.pad(w, (0, T - t - 1)))
    assert_close(torch.cat(steps, dim=1), full, **F32)
    assert_close(torch.cat(ws, dim=2), full_w[:, :, prefill:], **F32)
    assert cache.length == T


def test_cross_attention_against_reference_and_cache() -> None:
    attn = make((2, 1, 3), bias=True)
    x, ctx = torch.randn(2, 5, 48), torch.randn(2, 9, 48)
    want = reference_attention(attn, x, ctx)[0]
    assert_close(attn(x, ctx).double(), want, **F32)
    cache = KVCache(2, 9, 3, 8)
    first = attn(x[:, :2], ctx, cache=cache)
    second = attn(x[:, 2:], ctx, cache=cache)  # reuses the cached context K/V
    assert_close(torch.cat([first, second], 1).double(), want, **F32)


def test_kernels_check_group_sizes() -> None:
    q, k = torch.randn(1, 6, 3, 8), torch.randn(1, 3, 4, 8)
    for kernel in (sdpa_attention, eager_attention):
        with pytest.raises(ShapeError, match=r"group_sizes=\(2, 2, 1\) do not fit 6 query heads"):
            kernel(q, k, k, None, is_causal=False, scale=1.0, group_sizes=(2, 2, 1))


def test_gradcheck_float64() -> None:
    attn = Attention(8, 4, 2, head_dim=4, bias=True, group_sizes=(3, 1), rope=RoPE(4)).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    for path in ("eager", "auto"):
        attn.backend = path  # type: ignore[assignment]
        assert torch.autograd.gradcheck(lambda t: attn(t, causal=True, attention_mask=mask), (x,))


def test_first_use_in_inference_mode_then_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uneven groups cache an index tensor per group layout for decode steps; made inside
    ``inference_mode`` first, it must still serve a step that autograd records (an inference
    tensor cannot be saved for backward: this failed once another test had decoded the same
    layout first)."""
    sizes = (3, 1, 2, 2)  # a layout no other test uses, so this test makes the cached index
    attn = make(sizes)
    x = torch.randn(2, 5, 48)
    monkeypatch.setattr(kernels, "FUSED_DTYPES", ())  # the op-by-op step (no kernels)
    outs = []
    for mode in (torch.inference_mode(), torch.enable_grad()):
        cache = KVCache(2, 5, len(sizes), 8)
        with mode:
            attn(x[:, :4], causal=True, cache=cache)
            outs.append(attn(x[:, 4:], causal=True, cache=cache))  # one step: (B, 1, C)
    outs[1].square().sum().backward()
    assert attn.qkv_proj.weight.grad is not None
    assert_close(outs[1].detach(), outs[0], **F32)
