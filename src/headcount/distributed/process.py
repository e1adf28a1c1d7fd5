"""The process group: set up from torchrun's environment, bounded by a timeout, checked for
ranks that disagree.

`World` is what the rest of headcount sees of torch.distributed: this process's rank, how many
there are, its device, and the two collectives data-parallel work needs (`World.part` to take a
share of N items, `World.all_sum` to add partial sums). ``World()`` is the single process: every
item is its own and sums are left alone, so library code takes a ``world`` argument and runs the
same lines alone or under torchrun.

Every collective is bounded by the process group's timeout: a rank that never starts fails the
rendezvous, a rank that dies or stops answering fails the next collective, on every other rank,
with a `DistributedError` naming the rank and the timeout, never a hang.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from headcount.errors import HeadcountError

DEFAULT_TIMEOUT = 300.0  # seconds; HEADCOUNT_DIST_TIMEOUT overrides it
ENV_TIMEOUT = "HEADCOUNT_DIST_TIMEOUT"


class DistributedError(HeadcountError, RuntimeError):
    """A rank that is missing, died, timed out, or runs with a different configuration."""


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``World()``: one process, no group).

    ``device``: where this rank computes (``cuda:LOCAL_RANK`` with NCCL, else the CPU);
    ``timeout``: seconds any collective may wait before failing.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def part(self, n: int) -> range:
        """This rank's share of items ``0 .. n-1``: a contiguous block, sizes differing by at most
        one, empty when ``n < size`` leaves this rank nothing (it still joins every collective)."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def all_sum(self, tensors: Sequence[Tensor]) -> None:
        """Add ``tensors`` over all ranks, in place (one ``all_reduce`` of one flat float64 buffer;
        every rank must pass tensors of the same shapes in the same order)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).to(self.device)
        self._collective("all_reduce of partial sums", dist.all_reduce, flat)
        flat = flat.cpu()
        k = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[k : k + n].view_as(t))
            k += n

    def reduce_sum(self, tensor: Tensor, what: str) -> None:
        """Add ``tensor`` (on `device`) over all ranks, in place and in its own dtype (one
        ``all_reduce``; ``what`` names it in the error of a rank that died or timed out)."""
        if self.distributed:
            self._collective(what, dist.all_reduce, tensor)

    def broadcast(self, tensors: Sequence[Tensor], what: str) -> None:
        """Overwrite ``tensors`` (on `device`, same shapes on every rank) with rank 0's, in place."""
        if not self.distributed:
            return
        for t in tensors:
            self._collective(what, dist.broadcast, t, 0)

    def gather(self, value: Any) -> list[Any]:
        """``value`` from every rank, in rank order (pickled: for small objects)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        self._collective("all_gather_object", dist.all_gather_object, out, value)
        return out

    def check_same(self, what: str, value: Any) -> None:
        """Raise `DistributedError` on every rank unless ``value`` (JSON-able: arguments, a config,
        a text's digest) is the same on all of them."""
        if not self.distributed:
            return
        blob = json.dumps(value, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        seen = self.gather((digest, blob[:160]))
        if len({d for d, _ in seen}) > 1:
            lines = "; ".join(f"rank {r}: {s}" for r, (_, s) in enumerate(seen))
            raise DistributedError(f"the {what} differs across ranks ({lines})")

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on rank 0 only (e.g. prepare the output folder); a `HeadcountError` it
        raises is raised on every rank, so no rank waits for a rank 0 that gave up."""
        failure: HeadcountError | None = None
        if self.is_main:
            try:
                fn()
            except HeadcountError as exc:
                if not self.distributed:
                    raise
                failure = exc
        errors = self.gather(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if errors[0] is not None:
            raise DistributedError(f"rank 0 stopped: {errors[0]}")

    def barrier(self) -> None:
        if self.distributed:
            self._collective("barrier", dist.barrier)

    def _collective(self, name: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (RuntimeError, ValueError) as exc:  # gloo/NCCL errors: DistBackendError, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"rank {self.rank}/{self.size}: {name} failed: another rank died, never arrived "
                f"within the timeout of {self.timeout:g} s, or disagrees ({first})"
            ) from exc


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return float(timeout)
    return float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))


def init(timeout: float | None = None, backend: str | None = None) -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): NCCL with ``cuda:LOCAL_RANK`` when CUDA is available, else gloo on the CPU.

    Returns ``World()`` when WORLD_SIZE is unset or 1. ``timeout`` (seconds, default
    HEADCOUNT_DIST_TIMEOUT or 300) bounds the rendezvous and every later collective. Raises
    `DistributedError` when the other ranks do not all arrive in time.
    """
    size = env_world_size()
    seconds = _timeout(timeout)
    if size <= 1:
        return World(timeout=seconds)
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={size} but {', '.join(missing)} unset: start with torchrun"
        )
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=size,
                timeout=timedelta(seconds=seconds),
                device_id=device if device.type == "cuda" else None,
            )
        except (RuntimeError, ValueError) as exc:  # DistStoreError: clients never joined
            first = str(exc).strip().splitlines()[0]
            raise DistributedError(
                f"rank {rank}/{size}: the process group did not form within {seconds:g} s "
                f"(a rank never started or cannot reach {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']}): {first}"
            ) from exc
    return World(rank, size, local, backend, device, seconds)


def shutdown() -> None:
    """Leave the process group (nothing when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def launched(
    timeout: float | None = None, config: Any = None, backend: str | None = None
) -> Iterator[World]:
    """``with launched(config=args) as world:`` joins the group (`init`), checks that ``config``
    is the same on every rank (`World.check_same`), and leaves the group on exit, error or not."""
    world = init(timeout, backend)
    try:
        if config is not None:
            world.check_same("configuration", config)
        yield world
    finally:
        shutdown()
