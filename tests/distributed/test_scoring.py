"""Data-parallel scoring on 2 and 3 gloo processes equals one process: head analysis and Michel
importance, shards of unequal size, and a text shorter than one chunk per rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headcount.distributed import World
from tests.distributed import workers
from tests.distributed.launch import check_ok, run_ranks


@pytest.mark.parametrize(
    ("n", "tokens"),
    [
        (2, 200),  # 9 chunks of 23 text tokens: shares of 4 and 5
        (3, 200),  # 3 + 3 + 3, and 5 induction rows over 3 ranks: 1 + 2 + 2
        (3, 30),  # 2 chunks for 3 ranks: rank 0 scores no text chunk
    ],
)
def test_analyze_equals_one_process(tmp_path: Path, n: int, tokens: int) -> None:
    check_ok(run_ranks(n, "analyze", tmp_path, str(tokens)))
    ref = workers.run_analyze(World(), str(tokens))
    assert ref["meta"]["chunks"] == (9 if tokens == 200 else 2)
    for r in range(n):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["scores"].keys() == ref["scores"].keys()
        for name, t in ref["scores"].items():
            torch.testing.assert_close(got["scores"][name], t, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert got["patterns"] == (ref["patterns"] if r == 0 else 0)  # thumbnails: rank 0 only


@pytest.mark.parametrize(("n", "tokens", "window"), [(2, 96, 16), (3, 40, 16)])
def test_importance_equals_one_process(tmp_path: Path, n: int, tokens: int, window: int) -> None:
    """6 windows over 2 ranks; 2 windows over 3 ranks (one rank has no batch)."""
    check_ok(run_ranks(n, "importance", tmp_path, str(tokens), str(window)))
    ref = workers.run_importance(World(), str(tokens), str(window))
    for r in range(n):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["n"] == ref["n"]
        for key in ("heads", "groups"):
            for a, b in zip(got[key], ref[key], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_part_covers_every_item_once() -> None:
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [World(rank=r, size=size).part(n) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
