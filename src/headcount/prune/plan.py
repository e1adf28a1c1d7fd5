"""Pruning orders: which heads go at each fraction, by importance (one-shot or iterative), learned
gates, or at random.

Legend: L layers, H_l query heads, G_l KV heads of layer l.

`schedule` returns the keep-mask at every requested fraction, nested (each mask keeps a subset of
the previous one's heads), so one run gives a whole curve. Fractions count units: query heads
with ``unit="head"``, KV groups with ``unit="group"`` (a group's query heads go with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.gates import GateResult, train_gates
from headcount.prune.importance import Importance, head_importance
from headcount.prune.masks import (
    KeepMask,
    Unit,
    check_fraction,
    full_mask,
    group_index,
    n_units,
    random_scores,
    select,
)
from headcount.prune.objectives import Objective

Method = Literal["importance", "iterative", "gates", "random"]
METHODS: tuple[str, ...] = ("importance", "iterative", "gates", "random")
StageProgress = Callable[[str, int, int], None]  # stage, done, total


@dataclass
class Schedule:
    method: str
    unit: str
    masks: dict[float, KeepMask]  # fraction -> keep-mask
    importance: Importance | None = None  # the first (full-model) importance, when computed
    gates: GateResult | None = None


def _group_maps(model: Decoder | Encoder) -> list[Tensor]:
    return [group_index(a) for a in model.attention_layers()]


def schedule(
    model: Decoder | Encoder,
    objective: Objective,
    fractions: Sequence[float],
    *,
    method: Method = "iterative",
    unit: Unit = "head",
    step: float = 0.1,
    normalize: bool = True,
    seed: int = 0,
    lam: float = 0.01,
    gate_steps: int = 200,
    progress: StageProgress | None = None,
) -> Schedule:
    """Keep-masks for each of ``fractions`` (each in [0, 1)).

    * ``importance``: Michel's score once on the full model, lowest units removed first.
    * ``iterative``: remove ``step`` of the units, re-score with them masked, repeat (Michel's
      iterative pruning); a requested fraction between steps is reached by a partial step.
    * ``gates``: Voita's hard-concrete gates trained once with L0 weight ``lam``; units ranked
      by log_alpha (a group by the sum of its heads').
    * ``random``: a random order, reproducible with ``seed``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    if unit not in ("head", "group"):
        raise ConfigError(f"unit must be 'head' or 'group', got {unit!r}")
    if not 0 < step < 1:
        raise ConfigError(f"step must be in (0, 1), got {step}")
    targets = sorted({float(f) for f in fractions})
    counts = {f: check_fraction(model, f, unit) for f in targets}
    report = progress or (lambda stage, done, total: None)
    groups = _group_maps(model) if unit == "group" else None
    base = full_mask(model)
    out = Schedule(method, unit, {})

    def pick(scores: list[Tensor]) -> None:
        for f in targets:
            out.masks[f] = select(scores, counts[f], base, unit=unit, groups=groups)

    if method == "random":
        pick(random_scores(model, seed, unit))
    elif method == "gates":
        res = train_gates(
            model,
            objective,
            lam,
            steps=gate_steps,
            seed=seed,
            progress=lambda s, n, loss, l0: report("gates", s, n),
        )
        out.gates = res
        scores = res.scores
        if unit == "group":
            scores = [
                s.new_zeros(int(g.max()) + 1).index_add_(0, g, s)
                for s, g in zip(scores, groups or [], strict=True)
            ]
        pick(scores)
    elif method == "importance":
        imp = head_importance(
            model, objective, normalize=normalize, progress=lambda d, n: report("importance", d, n)
        )
        out.importance = imp
        pick(imp.heads if unit == "head" else imp.groups)
    else:  # iterative
        total = n_units(model, unit)
        per_step = max(1, round(step * total))
        keep, removed = base, 0
        for f in targets:
            while removed < counts[f]:
                n = min(per_step, counts[f] - removed)
                stage = f"importance @ {removed}/{total}"
                imp = head_importance(
                    model,
                    objective,
                    keep=keep,
                    normalize=normalize,
                    progress=lambda d, k, stage=stage: report(stage, d, k),  # type: ignore[misc]
                )
                if out.importance is None:
                    out.importance = imp
                scores = imp.heads if unit == "head" else imp.groups
                keep = select(scores, n, keep, unit=unit, groups=groups)
                removed += n
            out.masks[f] = keep
    return out
