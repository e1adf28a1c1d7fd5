"""Data-parallel training on 2 and 3 gloo processes equals one process on the same global batches
(float64, so float rounding stays far below the tolerance); a sharded checkpoint written by 2
processes resumes on 3 and on 1, and a one-process checkpoint on 2, to the weights of an
uninterrupted run; a rank that dies mid-run fails the others with a clear error, and no process
is left behind."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from headcount.distributed import World
from headcount.distributed.data_parallel import DataParallel
from headcount.errors import ConfigError
from headcount.prune.training import TrainResult, train
from tests.distributed.launch import check_ok, run_ranks
from tests.distributed.workers import train_args, train_setup

TOL = dict(rtol=1e-9, atol=1e-11)


def one_process(kind: str, **kw: object) -> tuple[dict[str, torch.Tensor], TrainResult]:
    student, teacher, data = train_setup(kind)
    res = train(student, teacher, data, **{**train_args(kind), **kw})  # type: ignore[arg-type]
    return student.state_dict(), res


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


def test_resumed_with_another_number_of_processes_equals_one_process(tmp_path: Path) -> None:
    ref, ref_res = one_process("decoder")
    # 2 ranks (batches of 3 rows: 2 and 1 each), interrupted after the checkpoint of step 3
    ckpt = tmp_path / "ckpt"
    check_ok(run_ranks(2, "train", tmp_path, "decoder", str(ckpt), "new", "3"))
    two = torch.load(tmp_path / "rank0.pt")
    assert two["stopped"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["uptrain.dcp"]  # no temporary folder
    # the interrupted run's weights are those of one process after 3 steps of the 6-step schedule
    student, teacher, data = train_setup("decoder")

    def halt(step: int, *_: object) -> None:
        if step == 3:
            raise KeyboardInterrupt

    single = tmp_path / "single"  # and its one-process checkpoint of step 3, resumed below
    with pytest.raises(KeyboardInterrupt):
        train(student, teacher, data, progress=halt, checkpoint_dir=single, **train_args("decoder"))  # type: ignore[arg-type]
    assert_same_weights(two["state"], student.state_dict())

    # resumed on 3 ranks (one row of each batch per rank) and in one process
    one_dir = tmp_path / "one"
    shutil.copytree(ckpt, one_dir)
    out3 = tmp_path / "three"
    out3.mkdir()
    check_ok(run_ranks(3, "train", out3, "decoder", str(ckpt), "resume", "0"))
    for r in range(3):
        got = torch.load(out3 / f"rank{r}.pt")
        assert got["resumed_from"] == 3 and got["steps"] == 6
        assert_same_weights(got["state"], ref)
        torch.testing.assert_close(got["losses"], ref_res.losses, **TOL)
    s1, res1 = one_process("decoder", checkpoint_dir=one_dir, resume=True)
    assert res1.resumed_from == 3
    assert_same_weights(s1, ref)
    # one process wrote its own format and removed the sharded one it continued
    assert sorted(p.name for p in one_dir.iterdir()) == ["uptrain.pt"]
    # and the other way: one process's uptrain.pt resumed on 2 ranks
    out2 = tmp_path / "two-from-one"
    out2.mkdir()
    check_ok(run_ranks(2, "train", out2, "decoder", str(single), "resume", "0"))
    got = torch.load(out2 / "rank1.pt")
    assert got["resumed_from"] == 3
    assert_same_weights(got["state"], ref)
    assert sorted(p.name for p in single.iterdir()) == ["uptrain.dcp"]


def test_whole_batches_per_rank_for_a_loss_over_the_whole_batch(tmp_path: Path) -> None:
    """Hidden-state distillation on padded sentences is a ratio of sums over a batch, so each of
    2 ranks takes whole batches of a 3-batch step (2 and 1); checkpoints on the way."""
    ref, ref_res = one_process("encoder")
    check_ok(run_ranks(2, "train", tmp_path, "encoder", str(tmp_path / "ck"), "new", "0"))
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["steps"] == 6
        assert_same_weights(got["state"], ref)
        torch.testing.assert_close(got["losses"], ref_res.losses, **TOL)


def test_a_rank_that_dies_mid_training_fails_every_other_rank(tmp_path: Path) -> None:
    t0 = time.monotonic()
    ranks = run_ranks(3, "train_dies", tmp_path, timeout=30, deadline=120)
    assert ranks[1].returncode == 17
    for r in (0, 2):
        assert ranks[r].returncode == 3, ranks[r].stderr[-2000:]
        assert f"DistributedError: rank {r}/3: all_reduce of the" in ranks[r].stderr
        assert "another rank died" in ranks[r].stderr
    assert time.monotonic() - t0 < 120  # run_ranks killed nothing: every rank ended by itself


def test_a_loss_that_needs_whole_batches_needs_as_many_per_step_as_ranks() -> None:
    student, _, data = train_setup("encoder")
    with pytest.raises(ConfigError, match=r"give grad_accum >= 2 \(--grad-accum\), got 1"):
        DataParallel(World(rank=0, size=2), student, data, "hidden", 1, {})
    with pytest.raises(ConfigError, match=r"grad_accum >= 3"):
        DataParallel(World(rank=0, size=3), student, data, "ce", 2, {})
