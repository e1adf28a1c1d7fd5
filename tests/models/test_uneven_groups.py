"""A Decoder whose layers have KV groups of different sizes (as GQA head pruning leaves them):
the config round-trips, cached decoding (the attention's single-position branch, uneven groups
padded to one call) equals a full recompute, and the model
equals an MHA decoder whose K/V rows are repeated per query head."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from headcount.errors import ConfigError
from headcount.models import Decoder, DecoderConfig
from headcount.models.generation import Decoding
from headcount.nn import Attention

SHAPE: dict = dict(
    vocab_size=50,
    d_model=32,
    n_layers=3,
    n_heads=(4, 3, 2),
    n_kv_heads=(2, 2, 1),
    head_dim=8,
    d_ff=40,
    max_len=48,
    rope_base=500.0,
)
SIZES = ((3, 1), (1, 2), (2,))  # layer 0: heads 0-2 read KV 0, head 3 reads KV 1


def _model(group_sizes: object = SIZES, **overrides: object) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**{**SHAPE, **overrides}, group_sizes=group_sizes)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_config_round_trips_through_json() -> None:
    cfg = DecoderConfig(**SHAPE, group_sizes=[[3, 1], [1, 2], [2]])  # lists, as JSON gives them
    assert cfg.group_sizes == SIZES
    d = cfg.to_dict()
    assert d["group_sizes"] == [[3, 1], [1, 2], [2]]
    assert DecoderConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert DecoderConfig.from_dict(d) == cfg
    assert [cfg.layer_group_sizes(i) for i in range(3)] == list(SIZES)
    uniform = DecoderConfig(**{**SHAPE, "n_heads": (4, 4, 2)})
    assert uniform.group_sizes is None
    assert [uniform.layer_group_sizes(i) for i in range(3)] == [(2, 2), (2, 2), (2,)]
    assert DecoderConfig.from_dict(json.loads(json.dumps(uniform.to_dict()))) == uniform


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (((3, 1), (1, 2)), "group_sizes has 2 entries but n_layers=3"),
        (
            ((3, 1), (1, 1), (2,)),
            "layer 1: group_sizes=(1, 1) must be n_kv_heads=2 positive integers summing to n_heads=3",
        ),
        (((3, 1), (3,), (2,)), "layer 1: group_sizes=(3,) must be n_kv_heads=2"),
        (((4, 0), (1, 2), (2,)), "layer 0: group_sizes=(4, 0) must be"),
        (((3, 1), (1, 2), (1, 1)), "layer 2: group_sizes=(1, 1) must be n_kv_heads=1"),
        ((3, 1, 2), "group_sizes must hold one sequence of ints per layer, got (3, 1, 2)"),
    ],
)
def test_bad_group_sizes_name_the_layer(sizes: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecoderConfig(**SHAPE, group_sizes=sizes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layer 1: n_heads=3 is not a multiple of n_kv_heads=2"):
        DecoderConfig(**SHAPE)  # uneven heads need group_sizes


def test_layers_follow_the_config() -> None:
    model = _model()
    attn = model.attention_layers()
    assert [a.group_sizes for a in attn] == list(SIZES)
    assert [a.uniform_groups for a in attn] == [False, False, True]
    assert [[a.kv_head_of(h) for h in range(a.n_heads)] for a in attn] == [
        [0, 0, 0, 1],
        [0, 1, 1],
        [0, 0],
    ]
    with torch.no_grad():
        out = model(torch.randint(1, 50, (2, 6)), return_weights=True)
    assert [w.shape for w in out.attentions or ()] == [(2, 4, 6, 6), (2, 3, 6, 6), (2, 2, 6, 6)]


def test_equals_mha_decoder_with_repeated_kv_rows() -> None:
    model = _model()
    mha = Decoder(DecoderConfig(**{**SHAPE, "n_kv_heads": SHAPE["n_heads"]})).eval()
    state = model.state_dict()
    D = SHAPE["head_dim"]
    for i, (H, G, sizes) in enumerate(
        zip(SHAPE["n_heads"], SHAPE["n_kv_heads"], SIZES, strict=True)
    ):
        w = state[f"layers.{i}.attn.qkv_proj.weight"]
        q, k, v = w.split([H * D, G * D, G * D])
        rep = torch.tensor([g for g, r in enumerate(sizes) for _ in range(r)])  # (H,)
        k_h = k.view(G, D, -1)[rep].reshape(H * D, -1)  # (H*D, C)
        v_h = v.view(G, D, -1)[rep].reshape(H * D, -1)
        state[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat([q, k_h, v_h])
    mha.load_state_dict(state)
    ids = torch.randint(1, 50, (2, 12))
    with torch.no_grad():
        assert_close(model(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


def test_cache_decoding_equals_full_forward() -> None:
    model = _model()
    ids = torch.randint(1, 50, (2, 20))
    with torch.no_grad():
        full = model(ids).logits  # (2, 20, V)
        cache = model.new_cache(2, 20)
        steps = [model(ids[:, :7], cache=cache).logits]  # a prefill chunk, then one by one
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(7, 20)]
    assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_decode_steps_equal_full_forward(gate: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    if gate:
        for attn in model.attention_layers():
            attn.head_gate = torch.linspace(0.0, 1.5, attn.n_heads)
    calls = []
    real = Attention._step
    monkeypatch.setattr(Attention, "_step", lambda a, *args: calls.append(1) or real(a, *args))
    prompt, tokens = [3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5]
    with torch.inference_mode():
        full = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 :]
        run = Decoding(model, len(prompt) + len(tokens))
        got = torch.cat([run.prefill(prompt)] + [run.step(t) for t in tokens])
    assert len(calls) == len(tokens) * 3  # every step of every layer took the lean branch
    assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_equals_recompute() -> None:
    model = _model()
    prompt = [3, 14, 15, 9, 2, 6]
    cached = model.generate(prompt, max_new_tokens=16, stop=[])
    recomputed = model.generate(prompt, max_new_tokens=16, stop=[], use_cache=False)
    assert cached.ids == recomputed.ids and len(cached.ids) == 16
    model.attention_layers()[0].weights_hook = lambda w: None  # off the fast path
    assert model.generate(prompt, max_new_tokens=16, stop=[]).ids == recomputed.ids
