"""The process group: sums over ranks, and every failure is an error on every surviving rank
within the timeout (a rank that dies, stalls, never starts, or runs another configuration),
with no process left behind."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from headcount.distributed import World
from tests.distributed.launch import check_ok, run_ranks


def test_all_sum_and_parts_on_three_ranks(tmp_path: Path) -> None:
    check_ok(run_ranks(3, "sum", tmp_path))
    for r in range(3):
        got = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(got["sum"], torch.full((2, 3), 6.0, dtype=torch.float64))
        assert got["part"] == list(World(rank=r, size=3).part(5))


def test_a_rank_that_dies_fails_the_others(tmp_path: Path) -> None:
    ranks = run_ranks(2, "dies", tmp_path, deadline=60)
    assert ranks[1].returncode == 17
    assert ranks[0].returncode == 3
    assert "DistributedError: rank 0/2: all_reduce of partial sums failed" in ranks[0].stderr


def test_a_rank_that_stalls_times_out(tmp_path: Path) -> None:
    t0 = time.monotonic()
    ranks = run_ranks(2, "stalls", tmp_path, timeout=10, deadline=90)
    assert [r.returncode for r in ranks] == [3, 3]  # rank 1 fails too once it comes back
    assert "timeout of 10 s" in ranks[0].stderr and "Timed out" in ranks[0].stderr
    assert time.monotonic() - t0 < 90


def test_a_rank_that_never_starts(tmp_path: Path) -> None:
    ranks = run_ranks(2, "sum", tmp_path, start=[0], timeout=3, deadline=60)
    assert ranks[0].returncode == 3
    assert "the process group did not form within 3 s" in ranks[0].stderr


def test_a_configuration_that_differs(tmp_path: Path) -> None:
    ranks = run_ranks(2, "mismatch", tmp_path)
    assert [r.returncode for r in ranks] == [3, 3]
    for r in ranks:
        assert (
            'configuration differs across ranks (rank 0: {"chunk": 512}; rank 1: {"chunk": 256})'
            in r.stderr
        )
