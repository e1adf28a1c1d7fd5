"""Short recovery after pruning: distil the pruned model toward the unpruned one.

Decoders: KL(teacher || student) of the next-token distributions at every position (Hinton et
al. 2015 at temperature 1), which needs far fewer tokens than cross-entropy on the text. Encoders:
1 - cosine between the student's and the teacher's pooled sentence embeddings. AdamW with linear
warm-up and cosine decay, gradient clipping; the budget is a number of steps or of minutes. The
loop is `headcount.prune.training.train`, shared with conversion uptraining.
"""

from __future__ import annotations

from collections.abc import Callable

from headcount.distributed.process import World
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.objectives import Objective
from headcount.prune.training import Params, TrainResult, distill_loss, lr_at, train

TrainProgress = Callable[[int, float, float], None]  # step, loss, elapsed seconds
Recovery = TrainResult

__all__ = ["Recovery", "TrainProgress", "distill_loss", "lr_at", "recover"]


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
    world: World | None = None,
) -> Recovery:
    """Train ``student`` in place toward ``teacher`` on the batches of ``data`` (cycled, shuffled
    per epoch with ``seed``). Give ``steps``, ``minutes`` or both (whichever ends first); the
    cosine schedule spans ``steps``, or an estimate from the first steps' speed when only
    ``minutes`` is given. ``world`` (under torchrun): data-parallel, each rank a share of every
    batch, the same result as one process (see `headcount.prune.training.train`)."""
    if steps is None and minutes is None:
        raise ConfigError("give a recovery budget: steps and/or minutes")
    if steps is not None and steps <= 0:
        raise ConfigError(f"steps must be > 0, got {steps}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"minutes must be > 0, got {minutes}")
    return train(
        student,
        teacher,
        data,
        steps=steps,
        minutes=minutes,
        loss="kl",
        params=params,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        clip=clip,
        seed=seed,
        progress=None if progress is None else lambda s, loss, _tokens, t: progress(s, loss, t),
        world=world,
    )
