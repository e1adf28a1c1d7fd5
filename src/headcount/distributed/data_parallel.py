"""Data-parallel training for `headcount.prune.training.train` (conversion uptraining, pruning
recovery): every rank holds the whole model, takes its share of each global batch, and one
all-reduce of the gradients per optimizer step makes every rank take the same step.

Legend: N ranks, A batches per optimizer step (``grad_accum``), B rows of a batch, P trainable
parameters.

Same run for any N. The batches, their order and the learning rates do not depend on N: a step
is the same A batches (of B rows each) as in one process, and its loss is the mean of their
losses. How a step is shared:

* by rows, when the loss is a mean over the rows of a batch with equal weight per row (`ROW_MEANS`:
  a decoder's ``kl``, ``ce`` and ``kl+ce`` on equal-length windows, a mean over B * T tokens; an
  encoder's ``kl``, a mean over B sentences): rank r takes rows ``World.part(B)`` of every batch
  and weighs its loss by its share of the rows, ``|rows_r| / B``, so that the weighted partial
  losses add up to the batch's loss even when B is not a multiple of N (the token-weighted mean,
  not a mean of the ranks' means);
* by whole batches otherwise: the in-batch contrastive loss (``ce`` on sentence pairs: every row's
  negatives are the others) and ``hidden`` (a ratio of sums over the batch) are not sums over
  rows, so rank r takes batches ``World.part(A)`` of the step whole. That needs A >= N.

Gradients of the weighted partial losses are *summed* over ranks (not averaged), which gives the
gradient of the global step's loss; the step loss and rank 0's clock (for a budget in minutes:
every rank stops after the same step) are summed alongside. Gradient clipping and AdamW then run
on the same numbers on every rank, so the replicas stay equal, as under DDP.

Why a gradient all-reduce here and not `DistributedDataParallel` or FSDP2 ``fully_shard``: all
three were run on the same step (``benchmarks/distributed.py --engines``, BENCHMARKS.md "Data-
parallel uptraining") and reached the same weights; on this loaded 2-core machine their times
per step varied more between runs than between engines, so the choice rests on what each does
to this loop. DDP wraps the model in a module that is no longer a `Decoder`/`Encoder`, and the
losses call the model itself; its in-place form (``torch.distributed._composable.replicate``)
works, but it leaves a new class on the model after training (one that refuses ``deepcopy``) and
its hooks on every later forward, and its all-reduce inside every backward needs every rank to
run the same number of backward passes, which the uneven shares above (B < N, A not a multiple
of N) do not give. ``fully_shard`` works on CPU with gloo in torch 2.13, but it moves more bytes
(each layer's weights all-gathered in forward and again in backward, then a reduce-scatter:
3 (N - 1) / N x P values per rank against an all-reduce's 2 (N - 1) / N x P) in many more
collectives; sharding weights and AdamW state saves memory that models which fit one process do
not need, and it would leave the trained model holding sharded DTensors that only collectives
can read, while rank 0 alone evaluates and saves it. The all-reduce here is the collective DDP
runs (a ring all-reduce of every trainable gradient, P x 4 bytes in fp32, each rank sending
2 (N - 1) / N of it), issued once per optimizer step rather than once per accumulated batch, in
buckets of at most `BUCKET` elements. The checkpoints are DCP (`headcount.distributed.checkpoint`)
either way, so a sharded engine could replace this one without changing their format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from headcount.distributed.process import World
from headcount.errors import ConfigError
from headcount.models import Decoder, Encoder
from headcount.prune.objectives import Batch, LanguageModeling, Objective

BUCKET = 1 << 24  # elements per gradient all-reduce (64 MiB of fp32)

# (model class, loss) whose loss is a mean over a batch's rows, each row weighing the same.
ROW_MEANS: frozenset[tuple[str, str]] = frozenset(
    {("Decoder", "kl"), ("Decoder", "ce"), ("Decoder", "kl+ce"), ("Encoder", "kl")}
)


def splits_rows(model: Decoder | Encoder, data: Objective, loss: str) -> bool:
    """True when ``loss`` on a batch is a mean over its rows (see `ROW_MEANS`): a decoder's
    ``ce`` only on `LanguageModeling` (windows of one length), not on another objective."""
    kind = "Decoder" if isinstance(model, Decoder) else "Encoder"
    if (kind, loss) not in ROW_MEANS:
        return False
    return not (kind == "Decoder" and "ce" in loss and not isinstance(data, LanguageModeling))


class DataParallel:
    """One rank's part of data-parallel training (see the module docstring)."""

    def __init__(
        self,
        world: World,
        model: Decoder | Encoder,
        data: Objective,
        loss: str,
        grad_accum: int,
        run: dict[str, Any],
    ) -> None:
        self.world = world
        self.rows = splits_rows(model, data, loss)
        if not self.rows and grad_accum < world.size:
            raise ConfigError(
                f"loss {loss!r} on {type(model).__name__} is not a mean over a batch's rows, so "
                f"each of the {world.size} processes takes whole batches of a step: give "
                f"grad_accum >= {world.size} (--grad-accum), got {grad_accum}"
            )
        self.grad_accum = grad_accum
        self.clock = 0.0  # rank 0's training seconds after the last step
        world.check_same("training run (model, data, hyper-parameters)", run)

    def start(self, model: torch.nn.Module, seconds: float) -> None:
        """Give every rank rank 0's weights (as DDP does) and the clock of a resumed run."""
        state = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.world.broadcast([t.data for t in state], "broadcast of rank 0's weights")
        self.clock = seconds

    def share(self, batch: Batch, index: int) -> tuple[Batch | None, float]:
        """This rank's part of ``batch``, the ``index``-th of its step, and the weight of its
        loss (its share of the batch's loss); ``(None, 0.0)`` when it has no part in it."""
        if not self.rows:
            mine = index in self.world.part(self.grad_accum)
            return (batch, 1.0) if mine else (None, 0.0)
        n = batch.ids.shape[0]
        rows = self.world.part(n)
        if not rows:
            return None, 0.0
        part = Batch(
            batch.ids[rows.start : rows.stop],
            None if batch.mask is None else batch.mask[rows.start : rows.stop],
            batch.pairs,
        )
        return part, len(rows) / n

    def sync(self, params: Sequence[Tensor], loss: float, seconds: float) -> float:
        """Sum the gradients of ``params`` and the partial step ``loss`` over all ranks; take
        rank 0's ``seconds`` as `clock`. A parameter that got no gradient on any rank keeps
        ``grad = None`` (AdamW skips it, as in one process). Returns the step's loss."""
        world = self.world
        dev = world.device
        scalars = torch.zeros(2 + len(params), dtype=torch.float64, device=dev)
        scalars[0] = loss
        scalars[1] = seconds if world.is_main else 0.0
        for i, p in enumerate(params):
            if p.grad is not None:
                scalars[2 + i] = 1.0
            else:
                p.grad = torch.zeros_like(p)
        world.reduce_sum(scalars, "all_reduce of the step's loss")
        bucket: list[Tensor] = []
        for p in params:
            if bucket and (
                sum(t.numel() for t in bucket) + p.numel() > BUCKET
                or bucket[0].dtype != p.grad.dtype  # type: ignore[union-attr]
            ):
                self._reduce(bucket)
                bucket = []
            bucket.append(p.grad)  # type: ignore[arg-type]
        if bucket:
            self._reduce(bucket)
        for i, p in enumerate(params):
            if scalars[2 + i] == 0:
                p.grad = None
        self.clock = float(scalars[1])
        return float(scalars[0])

    def _reduce(self, grads: list[Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.world.reduce_sum(flat, "all_reduce of the gradients")
        k = 0
        for g in grads:
            g.copy_(flat[k : k + g.numel()].view_as(g))
            k += g.numel()
