"""Michel's gradient importance against finite differences of the loss in float64, the group
score against a shared gate, and the ablation against zeroed ``o_proj`` columns."""

from __future__ import annotations

import copy

import pytest
import torch

from headcount.prune import LanguageModeling, ablate, apply_mask, full_mask, head_importance
from headcount.prune.importance import normalize_layers
from headcount.prune.objectives import Batch, Contrastive, evaluate
from tests.prune.conftest import tiny_decoder, tiny_encoder


def _loss_with_gates(model, objective, batch, gates) -> float:
    for a, g in zip(model.attention_layers(), gates, strict=True):
        a.head_gate = g
    with torch.no_grad():
        out = float(objective.loss(model, batch))
    for a in model.attention_layers():
        a.head_gate = None
    return out


def _finite_difference(model, objective, eps=1e-5):
    """E_x |dL/dxi_h| and E_x |dL/dxi_g| (one gate per group) by central differences."""
    layers = model.attention_layers()
    heads = [torch.zeros(a.n_heads, dtype=torch.float64) for a in layers]
    groups = [torch.zeros(a.n_kv_heads, dtype=torch.float64) for a in layers]
    batches = list(objective.batches())
    for b in batches:
        for i, a in enumerate(layers):
            for h in range(a.n_heads):
                up = [torch.ones(x.n_heads, dtype=torch.float64) for x in layers]
                dn = [torch.ones(x.n_heads, dtype=torch.float64) for x in layers]
                up[i][h] += eps
                dn[i][h] -= eps
                d = (
                    _loss_with_gates(model, objective, b, up)
                    - _loss_with_gates(model, objective, b, dn)
                ) / (2 * eps)
                heads[i][h] += abs(d)
            for g in range(a.n_kv_heads):
                members = torch.tensor([a.kv_head_of(h) == g for h in range(a.n_heads)])
                up = [torch.ones(x.n_heads, dtype=torch.float64) for x in layers]
                dn = [torch.ones(x.n_heads, dtype=torch.float64) for x in layers]
                up[i][members] += eps
                dn[i][members] -= eps
                d = (
                    _loss_with_gates(model, objective, b, up)
                    - _loss_with_gates(model, objective, b, dn)
                ) / (2 * eps)
                groups[i][g] += abs(d)
    n = len(batches)
    return [h / n for h in heads], [g / n for g in groups]


def test_decoder_importance_equals_finite_differences(ids: torch.Tensor) -> None:
    model = tiny_decoder(torch.float64)
    obj = LanguageModeling(ids, window=32)  # 3 examples
    imp = head_importance(model, obj, normalize=False)
    ref_h, ref_g = _finite_difference(model, obj)
    for got, want in zip(imp.heads + imp.groups, ref_h + ref_g, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert imp.n_examples == 3 and imp.n_tokens == 96
    assert all(a.head_gate is None for a in model.attention_layers())  # gates restored
    assert all(p.requires_grad for p in model.parameters())  # parameters restored
    normed = head_importance(model, obj, normalize=True)
    for got, raw in zip(normed.heads, imp.heads, strict=True):
        torch.testing.assert_close(got, raw / raw.norm(), rtol=1e-12, atol=0)
        assert abs(float(got.norm()) - 1.0) < 1e-12


def test_masked_heads_score_zero_and_stay_masked(ids: torch.Tensor) -> None:
    model = tiny_decoder(torch.float64)
    obj = LanguageModeling(ids, window=32)
    keep = full_mask(model)
    keep[0][[0, 4]] = False
    imp = head_importance(model, obj, keep=keep, normalize=False)
    assert imp.heads[0][0] == 0 and imp.heads[0][4] == 0
    # the others are scored on the masked model: compare one with a finite difference there
    eps = 1e-5
    b = next(obj.batches())
    base = [m.double() for m in keep]
    up = [m.clone() for m in base]
    dn = [m.clone() for m in base]
    up[0][1] += eps
    dn[0][1] -= eps
    d = (_loss_with_gates(model, obj, b, up) - _loss_with_gates(model, obj, b, dn)) / (2 * eps)
    single = head_importance(
        model, LanguageModeling(ids[:32], window=32), keep=keep, normalize=False
    )
    assert single.heads[0][1].item() == pytest.approx(abs(d), rel=1e-6)


def test_encoder_contrastive_importance_equals_finite_differences() -> None:
    model = tiny_encoder(torch.float64)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 40, (8, 9), generator=g)
    mask = torch.ones(8, 9, dtype=torch.bool)
    mask[3, 6:] = False
    obj = Contrastive.from_batches([Batch(ids, mask, pairs=4)])
    assert evaluate(obj, model) > 0
    imp = head_importance(model, obj, normalize=False)
    ref_h, _ = _finite_difference(model, obj)
    for got, want in zip(imp.heads, ref_h, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert all(float(h.abs().sum()) > 0 for h in imp.heads)  # the loss has a gradient at xi = 1


def test_ablation_equals_zeroed_output_columns(ids: torch.Tensor) -> None:
    model = tiny_decoder()
    obj = LanguageModeling(ids[:64], window=32)
    abl = ablate(model, obj)
    assert abl.base == pytest.approx(evaluate(obj, model), rel=1e-6)
    D = 8
    for layer, head in ((0, 2), (2, 1)):
        ref = copy.deepcopy(model)
        with torch.no_grad():  # an independent way to remove a head: zero its o_proj columns
            ref.attention_layers()[layer].o_proj.weight[:, head * D : (head + 1) * D] = 0
        assert abl.delta[layer][head].item() == pytest.approx(
            evaluate(obj, ref) - abl.base, abs=1e-5
        )
        only = copy.deepcopy(model)
        with torch.no_grad():
            w = only.attention_layers()[layer].o_proj.weight
            for h in range(w.shape[1] // D):
                if h != head:
                    w[:, h * D : (h + 1) * D] = 0
        assert abl.only[layer][head].item() == pytest.approx(
            evaluate(obj, only) - abl.base, abs=1e-5
        )
    best = abl.best_only()
    assert [b[0] for b in best] == [int(o.argmin()) for o in abl.only]
    assert all(a.head_gate is None for a in model.attention_layers())
    apply_mask(model, None)


def test_normalize_layers() -> None:
    out = normalize_layers([torch.tensor([3.0, 4.0]), torch.zeros(2)])
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))  # an all-zero layer stays zero, no NaN
