"""Short recovery after pruning: distil the pruned model toward the unpruned one.

Legend: B batch, T positions, V vocabulary, C model dim.

Decoders: KL(teacher || student) of the next-token distributions at every position (Hinton et
al. 2015 at temperature 1), which needs far fewer tokens than cross-entropy on the text. Encoders:
1 - cosine between the student's and the teacher's pooled sentence embeddings. AdamW with linear
warm-up and cosine decay, gradient clipping; the budget is a number of steps or of minutes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.objectives import Batch, Objective, at_least_fp32, pooled

TrainProgress = Callable[[int, float, float], None]  # step, loss, elapsed seconds
Params = Literal["all", "attention"]


@dataclass
class Recovery:
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def distill_loss(student: Decoder | Encoder, teacher: Decoder | Encoder, batch: Batch) -> Tensor:
    """KL(teacher || student) per token (decoders) or 1 - cos of embeddings (encoders)."""
    if isinstance(student, Decoder):
        ids = batch.ids.to(student.embed.weight.device)
        with torch.no_grad():
            t = F.log_softmax(at_least_fp32(teacher(ids).logits), dim=-1)  # (B, T, V)
        s = F.log_softmax(at_least_fp32(student(ids).logits), dim=-1)  # (B, T, V)
        return F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")
    assert isinstance(teacher, Encoder) and batch.mask is not None
    with torch.no_grad():
        te = pooled(teacher, batch.ids, batch.mask)  # (N, C)
    se = pooled(student, batch.ids, batch.mask)
    return 1.0 - (se * te).sum(-1).mean()


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def recover(
    student: Decoder | Encoder,
    teacher: Decoder | Encoder,
    data: Objective,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-4,
    warmup: int = 10,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    params: Params = "all",
    seed: int = 0,
    progress: TrainProgress | None = None,
) -> Recovery:
    """Train ``student`` in place toward ``teacher`` on the batches of ``data`` (cycled, shuffled
    per epoch with ``seed``). Give ``steps``, ``minutes`` or both (whichever ends first); the
    cosine schedule spans ``steps``, or an estimate from the first steps' speed when only
    ``minutes`` is given."""
    if steps is None and minutes is None:
        raise ConfigError("give a recovery budget: steps and/or minutes")
    if steps is not None and steps <= 0:
        raise ConfigError(f"steps must be > 0, got {steps}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"minutes must be > 0, got {minutes}")
    if type(student) is not type(teacher):
        raise ConfigError(
            f"student {type(student).__name__} and teacher {type(teacher).__name__} differ"
        )
    if params not in ("all", "attention"):
        raise ConfigError(f"params must be 'all' or 'attention', got {params!r}")
    named = [
        p
        for n, p in student.named_parameters()
        if params == "all" or ".attn." in n or n.startswith("attn.")
    ]
    flags = [p.requires_grad for p in student.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in named:
        p.requires_grad_(True)
    teacher.eval()
    opt = torch.optim.AdamW(named, lr=lr, weight_decay=weight_decay)
    batches = list(data.batches())
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    budget_s = None if minutes is None else minutes * 60.0
    total = steps
    result = Recovery(0, 0, 0.0)
    t0 = time.perf_counter()
    student.train()
    try:
        step = 0
        while True:
            elapsed = time.perf_counter() - t0
            if steps is not None and step >= steps:
                break
            if budget_s is not None and elapsed >= budget_s:
                break
            if total is None and step == 3:  # estimate the schedule length from measured speed
                total = max(int(budget_s / (elapsed / 3)), 4) if budget_s else 4
            if not order:
                order = torch.randperm(len(batches), generator=gen).tolist()
            batch = batches[order.pop()]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total or 1_000_000, lr, warmup)
            loss = distill_loss(student, teacher, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(named, clip)
            opt.step()
            step += 1
            result.losses.append(float(loss.detach()))
            result.tokens += int(batch.ids.numel() if batch.mask is None else batch.mask.sum())
            if progress is not None:
                progress(step, float(loss.detach()), time.perf_counter() - t0)
    finally:
        student.eval()
        for p, f in zip(student.parameters(), flags, strict=True):
            p.requires_grad_(f)
    result.steps = len(result.losses)
    result.seconds = time.perf_counter() - t0
    return result
