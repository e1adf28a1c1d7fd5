"""Training checkpoints that any number of processes can resume: `torch.distributed.checkpoint`
(DCP) for the model and optimizer, a small file for the loop's own state.

A data-parallel run (`headcount.distributed.data_parallel`) writes ``CHECKPOINT_DIR/uptrain.dcp/``:
the model and AdamW states as DCP shards (``get_state_dict``: parameters and optimizer state keyed
by parameter name, so a run with another number of processes, or one process, maps them back;
every rank writes its share, replicated tensors once) and ``loop.pt`` (rank 0: step, tokens,
losses, RNG states, the batch order still to come, the run's fingerprint). It is written into
``.uptrain.dcp.tmp/`` and renamed into place, the previous one moved aside first and deleted
after, so an interruption at any moment leaves one complete checkpoint (`find` also looks at the
moved-aside one). A single process keeps writing ``uptrain.pt`` (`headcount.prune.training`);
each reads the other's format, and whichever format a run writes, it deletes the other once its
own is in place, so a folder holds one checkpoint.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from headcount.distributed.process import DistributedError, World
from headcount.errors import CheckpointError

SHARDED = "uptrain.dcp"
LOOP = "loop.pt"
TMP = f".{SHARDED}.tmp"
OLD = f".{SHARDED}.old"


def names() -> tuple[str, ...]:
    """The names a sharded checkpoint uses in its folder (complete, being written, moved aside)."""
    return SHARDED, TMP, OLD


def find(folder: Path) -> Path | None:
    """The sharded checkpoint in ``folder`` (complete, or moved aside by an interrupted swap)."""
    for name in (SHARDED, OLD):
        if (folder / name / LOOP).is_file() and (folder / name / ".metadata").is_file():
            return folder / name
    return None


def read_loop(path: Path) -> dict[str, Any]:
    """The loop state of the sharded checkpoint at ``path`` (a folder)."""
    try:
        return dict(torch.load(path / LOOP, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise CheckpointError(f"{path / LOOP}: not a readable checkpoint ({exc})") from exc


def save(
    folder: Path,
    loop: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    world: World,
    legacy: Path | None = None,
) -> None:
    """Write ``folder/uptrain.dcp/`` from every rank (a collective); rank 0 writes ``loop``
    and swaps the new checkpoint in, then deletes ``legacy`` (a one-process checkpoint file)."""
    final, tmp, old = folder / SHARDED, folder / TMP, folder / OLD

    def prepare() -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted write
            tmp.mkdir()
        except OSError as exc:
            raise CheckpointError(f"cannot write a checkpoint in {folder}: {exc}") from exc

    world.on_main(prepare)
    msd, osd = get_state_dict(model, opt)
    _collective(world, "save", lambda: dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp))

    def publish() -> None:
        try:
            with open(tmp / LOOP, "wb") as f:
                torch.save(loop, f)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as exc:
            raise CheckpointError(f"cannot write the checkpoint {final}: {exc}") from exc
        shutil.rmtree(old, ignore_errors=True)
        if legacy is not None:
            legacy.unlink(missing_ok=True)

    world.on_main(publish)


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> None:
    """Load the model and optimizer states of the sharded checkpoint at ``path`` (on every rank
    of ``world``, a collective; or in one process, without a process group)."""
    msd, osd = get_state_dict(model, opt)  # also creates AdamW's state to load into
    state: dict[str, Any] = {"model": msd, "optim": osd}
    if world.distributed:
        _collective(world, "load", lambda: dcp.load(state, checkpoint_id=path))
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "load in a single process"
                dcp.load(state, checkpoint_id=path, no_dist=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot load the checkpoint ({exc})") from exc
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def remove(folder: Path) -> None:
    """Delete a sharded checkpoint in ``folder`` (complete, partial or moved aside)."""
    for name in names():
        shutil.rmtree(folder / name, ignore_errors=True)


def _collective(world: World, what: str, fn: Any) -> None:
    try:
        fn()
    except DistributedError:
        raise
    except Exception as exc:  # DCP gathers the ranks' errors into a CheckpointException
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"rank {world.rank}/{world.size}: checkpoint {what} failed: a rank died, timed out "
            f"after {world.timeout:g} s, or could not write ({first[:300]})"
        ) from exc
