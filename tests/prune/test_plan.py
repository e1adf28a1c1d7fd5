"""Pruning schedules and distillation recovery on tiny models."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from headcount.errors import ConfigError
from headcount.prune import LanguageModeling, apply_mask, recover, remove_heads, schedule
from headcount.prune.objectives import evaluate
from headcount.prune.recover import distill_loss, lr_at
from tests.prune.conftest import tiny_decoder


@pytest.mark.parametrize("method", ["importance", "iterative", "gates", "random"])
def test_schedules_are_nested_and_sized(method: str, ids: torch.Tensor) -> None:
    model = tiny_decoder()
    obj = LanguageModeling(ids, window=32)
    fr = [0.0, 0.2, 0.5, 0.7]
    s = schedule(model, obj, fr, method=method, step=0.2, gate_steps=5)
    sizes = [sum(int(m.sum()) for m in s.masks[f]) for f in fr]
    assert sizes == [13, 13 - round(0.2 * 13), 13 - round(0.5 * 13), 13 - round(0.7 * 13)]
    for a, b in itertools.pairwise(fr):
        assert all(bool((mb <= ma).all()) for ma, mb in zip(s.masks[a], s.masks[b], strict=False))
    assert all(bool(m.any()) for f in fr for m in s.masks[f])


def test_iterative_step_one_equals_oneshot_and_random_is_seeded(ids: torch.Tensor) -> None:
    model = tiny_decoder()
    obj = LanguageModeling(ids, window=32)
    one = schedule(model, obj, [0.3], method="importance")
    it = schedule(model, obj, [0.3], method="iterative", step=0.3)  # a single step: the same mask
    assert all(torch.equal(a, b) for a, b in zip(one.masks[0.3], it.masks[0.3], strict=False))
    r1 = schedule(model, obj, [0.5], method="random", seed=1).masks[0.5]
    r2 = schedule(model, obj, [0.5], method="random", seed=1).masks[0.5]
    r3 = schedule(model, obj, [0.5], method="random", seed=2).masks[0.5]
    assert all(torch.equal(a, b) for a, b in zip(r1, r2, strict=False))
    assert not all(torch.equal(a, b) for a, b in zip(r1, r3, strict=False))


def test_group_schedule_removes_whole_groups(ids: torch.Tensor) -> None:
    model = tiny_decoder()  # KV groups: 2 + 4 + 1 = 7, at most 4 can go
    s = schedule(model, LanguageModeling(ids, window=32), [0.5], method="importance", unit="group")
    for a, m in zip(model.attention_layers(), s.masks[0.5], strict=False):
        for g in range(a.n_kv_heads):
            members = m[[a.kv_head_of(h) == g for h in range(a.n_heads)]]
            assert bool(members.all()) or not bool(members.any())  # a group stays or goes whole
    pruned = remove_heads(model, s.masks[0.5])
    assert sum(pruned.config.n_kv_heads) == 7 - round(0.5 * 7)


def test_schedule_errors(ids: torch.Tensor) -> None:
    model = tiny_decoder()
    obj = LanguageModeling(ids, window=32)
    with pytest.raises(ConfigError, match="unknown pruning method"):
        schedule(model, obj, [0.1], method="magic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unit"):
        schedule(model, obj, [0.1], unit="layer")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty a layer"):
        schedule(model, obj, [0.85])


def test_recovery_lowers_the_distillation_loss(ids: torch.Tensor) -> None:
    teacher = tiny_decoder()
    obj = LanguageModeling(ids, window=32)
    keep = schedule(teacher, obj, [0.5], method="random").masks[0.5]
    student = remove_heads(teacher, keep)
    before = copy.deepcopy(teacher.state_dict())
    batch = next(obj.batches())
    with torch.no_grad():
        kl0 = float(distill_loss(student, teacher, batch))
    rec = recover(student, teacher, obj, steps=25, lr=3e-3, warmup=2, seed=0)
    with torch.no_grad():
        kl1 = float(distill_loss(student, teacher, batch))
    assert rec.steps == 25 and rec.tokens == 25 * 32
    assert kl1 < 0.5 * kl0
    for k, v in teacher.state_dict().items():  # the teacher never changes
        assert torch.equal(v, before[k])
    apply_mask(teacher, None)
    assert evaluate(obj, teacher) < evaluate(obj, student) + 1.0
    with pytest.raises(ConfigError, match="budget"):
        recover(student, teacher, obj)
    with pytest.raises(ConfigError, match="minutes"):
        recover(student, teacher, obj, minutes=0)


def test_learning_rate_schedule() -> None:
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
