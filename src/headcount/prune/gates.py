"""Learned head gates: Voita et al. (2019)'s stochastic hard-concrete gates with an L0 penalty.

Legend: L layers, H_l query heads of layer l.

Each head h gets a gate z_h in [0, 1] from the hard-concrete distribution of Louizos, Welling and
Kingma (2018): u ~ U(0, 1), s = sigmoid((log u - log(1 - u) + log_alpha_h) / beta),
z = clamp(s * (zeta - gamma) + gamma, 0, 1) with beta = 2/3, gamma = -0.1, zeta = 1.1 (the paper's
values). z multiplies the head's output before ``o_proj`` (`Attention.head_gate`); the model is
frozen and only log_alpha trains, on

    loss = task loss + lam * sum_h P(z_h != 0),  P(z_h != 0) = sigmoid(log_alpha_h - beta log(-gamma / zeta)).

``lam`` sets how many heads survive: at test time a head is open when its expected gate is > 0.
For a fixed fraction the heads are ranked by log_alpha (the order in which L0 closes them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.importance import _frozen
from headcount.prune.masks import KeepMask
from headcount.prune.objectives import Objective

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
GateProgress = Callable[
    [int, int, float, float], None
]  # step, steps, task loss, expected open heads


def sample_gates(log_alpha: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A hard-concrete sample z in [0, 1], differentiable in ``log_alpha``."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype).clamp(
        1e-6, 1 - 1e-6
    )
    s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gates(log_alpha: Tensor) -> Tensor:
    """The test-time gate: clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(log_alpha: Tensor) -> Tensor:
    """P(z != 0), the L0 norm's relaxation."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


@dataclass
class GateResult:
    log_alpha: list[Tensor]  # (H_l,) per layer
    lam: float
    steps: int
    losses: list[float]  # task loss per step
    seconds: float

    def keep(self) -> KeepMask:
        """Heads whose test-time gate is open; every layer keeps at least its best head."""
        out = []
        for la in self.log_alpha:
            m = deterministic_gates(la) > 0
            if not bool(m.any()):
                m[int(la.argmax())] = True
            out.append(m)
        return out

    @property
    def scores(self) -> list[Tensor]:
        """Per-head ranking scores (higher = kept longer): log_alpha."""
        return [la.detach().clone() for la in self.log_alpha]


def train_gates(
    model: Decoder | Encoder,
    objective: Objective,
    lam: float,
    *,
    steps: int = 200,
    lr: float = 0.05,
    init: float = 3.0,
    seed: int = 0,
    progress: GateProgress | None = None,
) -> GateResult:
    """Train one hard-concrete gate per head with the model frozen; reproducible with ``seed``.

    The batches of ``objective`` are cycled for ``steps`` Adam steps. ``init``: starting
    log_alpha (3.0: gates almost surely open). The model's gates are restored afterwards.
    """
    if not lam >= 0:
        raise ConfigError(f"lam must be >= 0, got {lam}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    layers = model.attention_layers()
    gen = torch.Generator().manual_seed(seed)
    log_alpha = [torch.full((a.n_heads,), float(init), requires_grad=True) for a in layers]
    opt = torch.optim.Adam(log_alpha, lr=lr)
    batches = list(objective.batches())
    old = [a.head_gate for a in layers]
    losses: list[float] = []
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with _frozen(model), torch.enable_grad():
            for step in range(steps):
                for a, la in zip(layers, log_alpha, strict=True):
                    w = a.qkv_proj.weight
                    a.head_gate = sample_gates(la, gen).to(device=w.device, dtype=w.dtype)
                task = objective.loss(model, batches[step % len(batches)])
                l0 = torch.stack([open_probability(la).sum() for la in log_alpha]).sum()
                loss = task + lam * l0
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(task.detach()))
                if progress is not None:
                    progress(step + 1, steps, float(task.detach()), float(l0.detach()))
    finally:
        for a, g in zip(layers, old, strict=True):
            a.head_gate = g
        model.train(was_training)
    return GateResult(
        [la.detach() for la in log_alpha], lam, steps, losses, time.perf_counter() - t0
    )
