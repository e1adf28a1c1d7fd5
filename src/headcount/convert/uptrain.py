"""Uptraining a converted model (Ainslie et al. 2023 uptrain for ~5% of pre-training; here a
budget in tokens or minutes): continued training on text, by distillation toward the unconverted
model and/or the text's own loss. The loop is `headcount.prune.training.train` (shared with
pruning recovery); this is its public face for conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from headcount.distributed.process import World
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.objectives import Contrastive, LanguageModeling, Objective, sentence_pairs
from headcount.prune.training import Loss, Params, Progress, TrainResult, train

UptrainResult = TrainResult
Data = Objective | str | Sequence[int] | Tensor


def uptrain(
    model: Decoder | Encoder,
    data: Data,
    *,
    teacher: Decoder | Encoder | None = None,
    tokens: int | None = None,
    minutes: float | None = None,
    loss: Loss | None = None,
    params: Params = "all",
    lr: float = 3e-4,
    warmup: int = 10,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    window: int = 256,
    grad_accum: int = 1,
    clip: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    world: World | None = None,
) -> UptrainResult:
    """Train ``model`` in place on ``data`` until ``tokens`` tokens or ``minutes`` minutes have
    gone by (whichever comes first; give at least one).

    ``data``: an objective (`LanguageModeling`, `Contrastive`), or text / token ids — for a
    decoder cut into windows of ``window`` tokens, ``batch_size`` (default 4) windows a batch; for
    an encoder, text becomes (line, next line) pairs, ``batch_size`` (default 16) pairs a batch.
    ``loss``: ``"kl"`` (toward ``teacher``; the default when a teacher is given), ``"ce"`` (the
    objective's own loss; the default without one), ``"kl+ce"``, ``"hidden"`` (every layer's
    hidden state of every token toward the teacher's: far more signal per sentence for encoders)
    or ``"kl+hidden"`` (see `headcount.prune.training`). ``params``: train ``"all"``
    weights or only the ``"attention"`` projections. AdamW (``lr``, ``weight_decay``) with
    ``warmup`` warm-up steps and cosine decay, gradients clipped to norm ``clip``, ``grad_accum``
    batches per optimizer step.

    With ``checkpoint_dir``, a checkpoint is written atomically every ``checkpoint_every``
    optimizer steps and at the end; ``resume=True`` continues from it and reaches the same
    weights as an uninterrupted run with the same arguments (a checkpoint from other arguments
    or data raises `CheckpointError`). ``progress(step, loss, tokens, elapsed_seconds)`` is
    called after every optimizer step. Returns the losses per step, tokens, seconds and steps.

    ``world`` (`headcount.distributed.init` under torchrun, every rank calling with the same
    arguments): data-parallel, with the same global batches and result as one process; the
    checkpoint is then sharded and resumes with any number of processes (see `train`).
    """
    objective = _objective(model, data, batch_size, window)
    if loss is None:
        loss = "ce" if teacher is None else "kl"
    return train(
        model,
        teacher,
        objective,
        tokens=tokens,
        minutes=minutes,
        loss=loss,
        params=params,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        grad_accum=grad_accum,
        clip=clip,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        progress=progress,
        world=world,
    )


def _objective(
    model: Decoder | Encoder, data: Data, batch_size: int | None, window: int
) -> Objective:
    if isinstance(data, LanguageModeling | Contrastive) or hasattr(data, "batches"):
        if batch_size is not None:
            raise ConfigError(
                "batch_size applies to text or token ids; the objective batches itself"
            )
        return data  # type: ignore[return-value]
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(model, Decoder):
        ids = model.tokenizer.encode(data) if isinstance(data, str) else data
        if not 2 <= window <= model.max_len:
            raise ConfigError(
                f"window={window} must be in 2..{model.max_len} (the model's context)"
            )
        return LanguageModeling(ids, window=window, batch_size=batch_size or 4)
    if not isinstance(data, str):
        raise ConfigError("an encoder uptrains on text (or an objective), not on token ids")
    pairs = sentence_pairs(data)
    return Contrastive(model, pairs, batch_size=batch_size or 16)
