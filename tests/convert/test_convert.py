"""MHA -> GQA -> MQA conversion on tiny seeded models: shapes, identity, hand-computed mean-pooling,
cached decoding, seeded random init, the data-aware fit against mean-pooling and against exact
cases, and bad input."""

from __future__ import annotations

import pytest
import torch

import headcount
from headcount.convert import convert, cover, input_moments
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune import full_mask, remove_heads
from tests.prune.conftest import tiny_decoder, tiny_encoder

METHODS = ["mean", "first", "random", "fit"]
C, D = 24, 8


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (512,), generator=g)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _kv_rows(model: Decoder | Encoder, layer: int) -> tuple[torch.Tensor, ...]:
    """``W_K, W_V (G, C, D)`` and the K, V biases ``(G, D)`` of a layer."""
    a = model.attention_layers()[layer]
    H, G = a.n_heads, a.n_kv_heads
    b = a.qkv_proj.bias.detach()
    return (
        a.W_K.detach(),
        a.W_V.detach(),
        b[H * D : (H + G) * D].view(G, D),
        b[(H + G) * D :].view(G, D),
    )


# ------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("method", METHODS)
def test_identity_is_an_exact_copy_and_the_source_is_untouched(method: str, ids) -> None:
    model = tiny_decoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = convert(model, [2, 4, 1], method, calibration=ids)
    assert same is not model and _state_equal(same, model)
    assert same.config == model.config
    enc = tiny_encoder()
    assert _state_equal(convert(enc, [4, 3], method, calibration=ids), enc)
    small = convert(model, 1, method, calibration=ids)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.config.n_kv_heads == (2, 4, 1)
    assert small.config.n_kv_heads == (1, 1, 1)
    assert [a.n_kv_heads for a in small.attention_layers()] == [1, 1, 1]
    for a, H in zip(small.attention_layers(), (6, 4, 3), strict=True):
        assert a.qkv_proj.weight.shape == ((H + 2) * D, C)
        assert a.qkv_proj.bias.shape == ((H + 2) * D,)
        assert a.group_sizes == (H,)
    # each KV head removed takes K and V rows and biases: 2 (D C + D) parameters
    n = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
    assert n == (1 + 3) * 2 * (D * C + D)
    assert small.new_cache(1, 8).nbytes == 3 * 2 * 8 * D * 4  # 1 KV head per layer, float32


def test_per_layer_counts_and_gqa_to_more_kv_heads(ids) -> None:
    model = tiny_decoder()
    new = convert(model, [3, 2, 3], "mean")
    assert new.config.n_kv_heads == (3, 2, 3) and new.config.group_sizes is None
    # layer 2 was MQA: 3 KV heads that each copy the one old head (the function is unchanged)
    k, v, kb, vb = _kv_rows(model, 2)
    k2, v2, kb2, vb2 = _kv_rows(new, 2)
    for g in range(3):
        assert torch.equal(k2[g], k[0]) and torch.equal(v2[g], v[0])
        assert torch.equal(kb2[g], kb[0]) and torch.equal(vb2[g], vb[0])
    assert cover(model.attention_layers()[0], 3) == [[(0, 2)], [(0, 1), (1, 1)], [(1, 2)]]


def test_mean_is_the_hand_computed_average_with_biases() -> None:
    model = tiny_decoder(n_kv_heads=(3, 4, 1))  # layer 0: 6 heads / 3 KV heads; layer 1: MHA
    new = convert(model, [2, 2, 1], "mean")
    k, v, kb, vb = _kv_rows(model, 0)
    k2, v2, kb2, vb2 = _kv_rows(new, 0)
    # query heads 0-2 read old KV heads 0, 0, 1; heads 3-5 read 1, 2, 2
    for new_t, old_t in ((k2, k), (v2, v), (kb2, kb), (vb2, vb)):
        torch.testing.assert_close(new_t[0], (2 * old_t[0] + old_t[1]) / 3, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(new_t[1], (old_t[1] + 2 * old_t[2]) / 3, rtol=1e-6, atol=1e-7)
    # MHA 4 -> GQA 2: the plain mean of heads (0, 1) and (2, 3)
    k, v, kb, vb = _kv_rows(model, 1)
    k2, v2, kb2, vb2 = _kv_rows(new, 1)
    for new_t, old_t in ((k2, k), (v2, v), (kb2, kb), (vb2, vb)):
        torch.testing.assert_close(new_t[0], (old_t[0] + old_t[1]) / 2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(new_t[1], (old_t[2] + old_t[3]) / 2, rtol=1e-6, atol=1e-7)
    # GQA -> MQA of the default model: mean of its 2 KV heads; queries and o_proj untouched
    model = tiny_decoder()
    mqa = convert(model, 1, "mean")
    k, v, kb, vb = _kv_rows(model, 0)
    k2, v2, kb2, vb2 = _kv_rows(mqa, 0)
    for new_t, old_t in ((k2, k), (v2, v), (kb2, kb), (vb2, vb)):
        torch.testing.assert_close(new_t[0], old_t.mean(0), rtol=1e-6, atol=1e-7)
    a, a2 = model.attention_layers()[0], mqa.attention_layers()[0]
    assert torch.equal(a.W_Q, a2.W_Q) and torch.equal(a.o_proj.weight, a2.o_proj.weight)


def test_first_keeps_the_first_query_heads_kv_head() -> None:
    model = tiny_encoder()  # MHA, 4 and 3 heads
    new = convert(model, [2, 1], "first")
    k, v, kb, vb = _kv_rows(model, 0)
    k2, v2, kb2, vb2 = _kv_rows(new, 0)
    assert torch.equal(k2, k[[0, 2]]) and torch.equal(v2, v[[0, 2]])
    assert torch.equal(kb2, kb[[0, 2]]) and torch.equal(vb2, vb[[0, 2]])


def test_random_is_seeded_and_at_the_old_scale() -> None:
    model = tiny_decoder()
    a = convert(model, 1, "random", seed=3)
    b = convert(model, 1, "random", seed=3)
    c = convert(model, 1, "random", seed=4)
    assert _state_equal(a, b) and not _state_equal(a, c)
    k, v, _, _ = _kv_rows(model, 1)
    k2, v2, _, _ = _kv_rows(a, 1)
    assert 0.5 < float(k2.std() / k.std()) < 2.0 and 0.5 < float(v2.std() / v.std()) < 2.0
    assert not torch.allclose(k2[0], k.mean(0))


@pytest.mark.parametrize("method", METHODS)
def test_converted_decoder_prefill_and_cached_decode_equal_the_full_forward(method, ids) -> None:
    model = convert(tiny_decoder(), [1, 2, 1], method, calibration=ids)
    x = ids[:40][None]
    full = model(x).logits
    cache = model.new_cache(1, 40)
    steps = [model(x[:, :25], cache=cache).logits]
    for t in range(25, 40):
        steps.append(model(x[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert [c.k.shape[1] for c in cache] == [1, 2, 1]
    greedy = model.generate(ids[:6].tolist(), max_new_tokens=5).ids  # the fast decode path
    assert greedy == model.generate(ids[:6].tolist(), max_new_tokens=5, use_cache=False).ids


# ------------------------------------------------------------------------------- fit
def _out(model: Decoder | Encoder, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits if isinstance(model, Decoder) else model(x).hidden_states


def _attention_error(
    model: Decoder | Encoder, new: Decoder | Encoder, ids: torch.Tensor
) -> list[float]:
    """Per layer: mean squared error of the new attention's output on the original model's
    attention inputs, relative to the output's mean square."""
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        a.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
        for i, a in enumerate(model.attention_layers())
    ]
    with torch.no_grad():
        model(ids.view(4, -1))
    for h in hooks:
        h.remove()
    causal = isinstance(model, Decoder)
    errors = []
    with torch.no_grad():
        for i, (a, b) in enumerate(
            zip(model.attention_layers(), new.attention_layers(), strict=True)
        ):
            y, y2 = a(inputs[i], causal=causal), b(inputs[i], causal=causal)
            errors.append(float((y2 - y).pow(2).mean() / y.pow(2).mean()))
    return errors


def test_input_moments_weight_positions_by_the_attention_they_receive(ids) -> None:
    model = tiny_decoder(torch.float64)
    x = ids[:64].view(2, 32)
    got = input_moments(model, x.flatten(), {0: 2, 2: 1}, window=32)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        a.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
        for i, a in enumerate(model.attention_layers())
    ]
    with torch.no_grad():
        weights = model(x, return_weights=True).attentions
    for h in hooks:
        h.remove()
    assert weights is not None and sorted(got) == [0, 2]
    for i, groups in ((0, [[0, 1, 2], [3, 4, 5]]), (2, [[0, 1, 2]])):
        x1 = torch.cat([inputs[i], torch.ones(2, 32, 1, dtype=torch.float64)], -1)  # (B, T, C1)
        S = torch.einsum("btc,btd->cd", x1, x1) / 64
        torch.testing.assert_close(got[i].S, S, rtol=1e-10, atol=1e-12)
        assert len(got[i].by_group) == len(groups)
        for heads, Sg in zip(groups, got[i].by_group, strict=True):
            w = weights[i][:, heads].sum(2).mean(1)  # (B, S): attention received, mean over heads
            ref = torch.einsum("bs,bsc,bsd->cd", w, x1, x1) / 64
            torch.testing.assert_close(Sg, ref, rtol=1e-10, atol=1e-12)
            assert abs(float(w.mean()) - 1.0) < 1e-12  # causal rows sum to 1: mean weight 1
    assert all(a.weights_hook is None for a in model.attention_layers())


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_fit_beats_mean_on_held_out_text(kind: str, ids: torch.Tensor) -> None:
    model = tiny_decoder() if kind == "decoder" else tiny_encoder()
    g = torch.Generator().manual_seed(7)
    held_out = torch.randint(0, 40, (128,), generator=g)
    for target in ([1, 2, 1] if kind == "decoder" else [2, 1], 1):
        mean = convert(model, target, "mean")
        fit = convert(model, target, "fit", calibration=ids, window=32)
        e_mean, e_fit = (
            _attention_error(model, mean, held_out),
            _attention_error(model, fit, held_out),
        )
        changed = [i for i, (a, b) in enumerate(zip(e_mean, e_fit, strict=True)) if a > 0]
        assert changed
        for i in changed:  # every converted layer's attention output is closer to the original
            assert e_fit[i] < 0.5 * e_mean[i], (i, e_fit, e_mean)
        x = held_out[:32][None]
        with torch.no_grad():
            ref = _out(model, x)
            e_out_fit, e_out_mean = (float((_out(m, x) - ref).pow(2).mean()) for m in (fit, mean))
        assert e_out_fit < 0.5 * e_out_mean


def _tie_heads(model: Decoder | Encoder, layer: int, groups: list[list[int]]) -> None:
    """Make the K and V rows (and biases) of the KV heads of each group identical."""
    a = model.attention_layers()[layer]
    H, G = a.n_heads, a.n_kv_heads
    w, b = a.qkv_proj.weight.data, a.qkv_proj.bias.data
    for group in groups:
        for base in (H, H + G):
            src = slice((base + group[0]) * D, (base + group[0] + 1) * D)
            for g in group[1:]:
                w[(base + g) * D : (base + g + 1) * D] = w[src]
                b[(base + g) * D : (base + g + 1) * D] = b[src]


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_fit_and_mean_equal_the_original_when_grouped_heads_are_identical(kind, ids) -> None:
    if kind == "decoder":
        model = tiny_decoder(torch.float64, n_kv_heads=(6, 4, 3))  # MHA everywhere
        target, groups = [2, 2, 1], [[[0, 1, 2], [3, 4, 5]], [[0, 1], [2, 3]], [[0, 1, 2]]]
    else:
        model = tiny_encoder(torch.float64)
        target, groups = [2, 1], [[[0, 1], [2, 3]], [[0, 1, 2]]]
    for layer, gs in enumerate(groups):
        _tie_heads(model, layer, gs)
    mean = convert(model, target, "mean")
    fit = convert(model, target, "fit", calibration=ids, window=32)
    x = ids[:30][None]
    torch.testing.assert_close(_out(mean, x), _out(model, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_out(fit, x), _out(model, x), rtol=1e-8, atol=1e-8)


def test_fit_takes_text_and_converts_an_encoder_to_mqa(ids) -> None:
    model = tiny_encoder()
    new = convert(model, 1, "fit", calibration=ids.tolist())
    assert isinstance(new, Encoder) and new.config.n_kv_heads == (1, 1)
    assert new.config.n_heads == (4, 3)
    assert new(ids[:10][None]).hidden_states.shape == (1, 10, C)


def test_converted_models_save_and_load_back(tmp_path, ids) -> None:
    for model, target in ((tiny_decoder(), [1, 2, 1]), (tiny_encoder(), [2, 1])):
        new = convert(model, target, "fit", calibration=ids)
        folder = new.save(tmp_path / type(model).__name__)
        back = headcount.load(folder)
        assert back.config == new.config and _state_equal(back, new)
        assert not (folder / "config.json").exists() or isinstance(model, Decoder)


# ------------------------------------------------------------------------------- errors
def test_bad_input(ids) -> None:
    model = tiny_decoder()
    cases = [
        (4, "layer 0: n_kv_heads=4 does not divide the layer's n_heads=6"),
        (7, "layer 0: n_kv_heads=7 exceeds the layer's n_heads=6"),
        (0, "layer 0: n_kv_heads must be a positive integer, got 0"),
        (-1, "positive integer"),
        (True, "an int or one int per layer"),
        ([1, 1], "2 entries but the model has 3 layers"),
        ([1, 1, 2], "layer 2: n_kv_heads=2 does not divide the layer's n_heads=3"),
        ([1, 1.0, 1], "layer 1: n_kv_heads must be a positive integer, got 1.0"),
        ("2", "an int or one int per layer"),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            convert(model, value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown conversion method 'pool'"):
        convert(model, 1, "pool")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs calibration"):
        convert(model, 1, "fit")
    keep = full_mask(model)
    keep[0][1] = False  # layer 0: groups of 2 and 3 query heads
    pruned = remove_heads(model, keep)
    with pytest.raises(
        ConfigError, match=r"layer 0: its KV groups differ in size \(group_sizes=\(2, 3\)"
    ):
        convert(pruned, [1, 4, 1])
    kept = convert(pruned, [2, 2, 1], "mean")  # the uneven layer keeps its count: copied as is
    assert kept.config.group_sizes == ((2, 3), (2, 2), (3,))
    assert torch.equal(
        kept.attention_layers()[0].qkv_proj.weight, pruned.attention_layers()[0].qkv_proj.weight
    )
