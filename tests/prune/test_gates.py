"""Hard-concrete gates (Louizos et al. 2018 / Voita et al. 2019): the distribution against its
formulas, and gate training's effect and reproducibility on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from headcount.errors import ConfigError
from headcount.prune import LanguageModeling, train_gates
from headcount.prune.gates import (
    BETA,
    GAMMA,
    ZETA,
    deterministic_gates,
    open_probability,
    sample_gates,
)
from tests.prune.conftest import tiny_decoder


def test_hard_concrete_distribution() -> None:
    la = torch.tensor([-3.0, 0.0, 2.0])
    # P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)), hand-computed for log_alpha = 0
    p0 = 1 / (1 + math.exp(BETA * math.log(-GAMMA / ZETA)))
    assert open_probability(la)[1].item() == pytest.approx(p0, rel=1e-6)
    assert deterministic_gates(torch.tensor([0.0])).item() == pytest.approx(
        0.5 * (ZETA - GAMMA) + GAMMA
    )
    g = torch.Generator().manual_seed(0)
    z = sample_gates(la.expand(20000, 3).contiguous(), g)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    # the sampled fraction of open gates matches P(z != 0)
    torch.testing.assert_close(
        (z > 0).double().mean(0), open_probability(la).double(), atol=0.01, rtol=0
    )


def test_l0_penalty_closes_gates_and_training_is_seeded(ids: torch.Tensor) -> None:
    model = tiny_decoder()
    obj = LanguageModeling(ids, window=32)
    free = train_gates(model, obj, lam=0.0, steps=60, lr=0.2, seed=3)
    strict = train_gates(model, obj, lam=1.0, steps=60, lr=0.2, seed=3)
    n_free = sum(int(k.sum()) for k in free.keep())
    n_strict = sum(int(k.sum()) for k in strict.keep())
    assert n_strict == 3  # lam = 1 closes all but each layer's last head (kept by keep())
    assert n_free > 6  # without the penalty most gates stay open
    again = train_gates(model, obj, lam=1.0, steps=60, lr=0.2, seed=3)
    for a, b in zip(strict.log_alpha, again.log_alpha, strict=True):
        assert torch.equal(a, b)
    assert len(strict.losses) == 60
    assert all(a.head_gate is None for a in model.attention_layers())
    with pytest.raises(ConfigError, match="lam"):
        train_gates(model, obj, lam=-1.0)
    with pytest.raises(ConfigError, match="steps"):
        train_gates(model, obj, lam=0.1, steps=0)


def test_encoder_gates_keep_the_embeddings() -> None:
    from headcount.prune import EmbeddingDistillation, apply_mask
    from headcount.prune.objectives import evaluate
    from tests.prune.conftest import sentences, tiny_encoder, word_tokenizer

    model = tiny_encoder()
    model.set_tokenizer(word_tokenizer())  # type: ignore[arg-type]
    obj = EmbeddingDistillation(model, sentences(24), batch_size=8)
    assert evaluate(obj, model) == pytest.approx(0.0, abs=1e-6)  # the teacher itself
    keep = [torch.tensor([False, True, True, True]), torch.ones(3, dtype=torch.bool)]
    apply_mask(model, keep)
    assert evaluate(obj, model) > 1e-3  # a head gone: the embeddings move
    apply_mask(model, None)
    res = train_gates(model, obj, lam=0.05, steps=40, lr=0.2, seed=0)
    assert sum(int(k.sum()) for k in res.keep()) < 7  # the penalty closes some gates
