"""Which heads matter: Michel et al.'s gradient score, single-head ablation, best head per layer.

Legend: L layers, H_l query heads of layer l, G_l KV heads of layer l.

Michel, Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?": a gate xi_h
multiplies head h's output before ``o_proj``; the importance of h is

    I_h = E_x | dL(x) / d xi_h |   at xi = 1,

the first-order (Taylor) estimate of the loss change when h is removed. The gates are
`Attention.head_gate` tensors with ``requires_grad``: the forward stays on the SDPA path (no
attention weights are materialised) and the model's own parameters are frozen for the pass, so
only the activations' gradients are computed. Each batch of the objective is one ``x`` (batches of
one window: per-example absolute values, as the paper's expectation asks).

GQA: a KV head (with its query heads) is one unit when pruning by group; its score is
E_x |sum_{h in g} dL/d xi_h|, the gradient of one gate shared by the whole group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from headcount.distributed.process import World
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.masks import KeepMask, apply_mask, full_mask, group_index
from headcount.prune.objectives import Objective, evaluate

Progress = Callable[[int, int], None]


@dataclass
class Importance:
    """Per-layer scores: ``heads[l] (H_l,)``, ``groups[l] (G_l,)``; ``normalized`` says whether
    each layer was divided by its L2 norm (Michel's section 4.1)."""

    heads: list[Tensor]
    groups: list[Tensor]
    n_examples: int
    n_tokens: int
    normalized: bool
    objective: str

    def table(self, unit: str = "head") -> Tensor:
        """``(L, max H_l)`` float64, NaN where a layer has fewer heads (for reports)."""
        rows = self.heads if unit == "head" else self.groups
        out = torch.full(
            (len(rows), max(r.numel() for r in rows)), float("nan"), dtype=torch.float64
        )
        for i, r in enumerate(rows):
            out[i, : r.numel()] = r.double()
        return out


def normalize_layers(scores: list[Tensor], exponent: float = 2.0) -> list[Tensor]:
    """Divide each layer's scores by their L_exponent norm (Michel: exponent 2)."""
    return [s / s.norm(p=exponent).clamp(min=1e-20) for s in scores]


@contextmanager
def _frozen(model: Decoder | Encoder) -> Iterator[None]:
    """Parameters do not require gradients inside the block (restored on exit)."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


def head_importance(
    model: Decoder | Encoder,
    objective: Objective,
    *,
    keep: KeepMask | None = None,
    normalize: bool = True,
    progress: Progress | None = None,
    world: World | None = None,
) -> Importance:
    """Michel's I_h = E_x |dL/d xi_h| over every batch of ``objective``, and the group scores.

    ``keep``: heads already pruned (gate 0) stay masked while the others are scored, as in
    iterative pruning; their scores are 0. The model's gates are restored afterwards.
    ``world`` (from `headcount.distributed.init`): each rank takes its share of the batches and
    the sums of |gradient| are added over the ranks before the mean, so every rank returns the
    single-process scores (to float rounding), whatever the shares.
    """
    world = world or World()
    layers = model.attention_layers()
    keep = keep if keep is not None else full_mask(model)
    old = [a.head_gate for a in layers]
    apply_mask(model, keep)
    gates = []
    for a, m in zip(layers, keep, strict=True):
        w = a.qkv_proj.weight
        gate = m.to(device=w.device, dtype=w.dtype).clone().requires_grad_(True)
        a.head_gate = gate
        gates.append(gate)
    groups = [group_index(a) for a in layers]
    head_sum = [torch.zeros(a.n_heads, dtype=torch.float64) for a in layers]
    group_sum = [torch.zeros(a.n_kv_heads, dtype=torch.float64) for a in layers]
    batches = list(objective.batches())
    mine = [batches[k] for k in world.part(len(batches))]
    was_training = model.training
    model.eval()
    try:
        with _frozen(model), torch.enable_grad():
            for k, batch in enumerate(mine):
                loss = objective.loss(model, batch)
                grads = torch.autograd.grad(loss, gates)
                for i, gr in enumerate(grads):
                    gr = gr.detach().double().cpu()
                    head_sum[i] += gr.abs()
                    group_sum[i] += (
                        torch.zeros_like(group_sum[i]).index_add_(0, groups[i], gr).abs()
                    )
                if progress is not None:
                    progress(k + 1, len(mine))
    finally:
        for a, g in zip(layers, old, strict=True):
            a.head_gate = g
        model.train(was_training)
    world.all_sum([*head_sum, *group_sum])  # sums of |gradient|, divided once below
    n = max(len(batches), 1)
    heads = [(s / n) * m.double() for s, m in zip(head_sum, keep, strict=True)]
    grps = [s / n for s in group_sum]
    if normalize:
        heads, grps = normalize_layers(heads), normalize_layers(grps)
    return Importance(heads, grps, len(batches), objective.n_tokens, normalize, objective.name)


@dataclass
class Ablation:
    """Michel's Table 1 and 2 on one objective. ``base``: the loss with every head.
    ``delta[l] (H_l,)``: loss without head h of layer l (alone) minus ``base``.
    ``only[l] (H_l,)``: loss with head h the only head of layer l, minus ``base``."""

    base: float
    delta: list[Tensor]
    only: list[Tensor] | None

    def best_only(self) -> list[tuple[int, float]]:
        """Per layer: (the head to keep alone, the loss change with only it)."""
        if self.only is None:
            raise ConfigError("the keep-only-one-head pass was not run (only=False)")
        return [(int(o.argmin()), float(o.min())) for o in self.only]


def ablate(
    model: Decoder | Encoder,
    objective: Objective,
    *,
    only: bool = True,
    progress: Progress | None = None,
) -> Ablation:
    """Remove one head at a time (and, with ``only``, keep one head of one layer at a time) and
    measure the loss change on ``objective``: ``sum_l H_l`` (x2) evaluations."""
    layers = model.attention_layers()
    old = [a.head_gate for a in layers]
    total = sum(a.n_heads for a in layers) * (2 if only else 1)
    done = 0
    try:
        apply_mask(model, None)
        base = evaluate(objective, model)
        delta, keep_one = [], []
        for i, a in enumerate(layers):
            d = torch.zeros(a.n_heads, dtype=torch.float64)
            o = torch.zeros(a.n_heads, dtype=torch.float64)
            for h in range(a.n_heads):
                mask = full_mask(model)
                if a.n_heads > 1:
                    mask[i][h] = False
                    apply_mask(model, mask)
                    d[h] = evaluate(objective, model) - base
                done += 1
                if only:
                    mask = full_mask(model)
                    mask[i][:] = False
                    mask[i][h] = True
                    apply_mask(model, mask)
                    o[h] = evaluate(objective, model) - base
                    done += 1
                if progress is not None:
                    progress(done, total)
            delta.append(d)
            keep_one.append(o)
    finally:
        for a, g in zip(layers, old, strict=True):
            a.head_gate = g
    return Ablation(base, delta, keep_one if only else None)
