"""Head-parallel decoding on 2 and 3 gloo processes gives the one-process logits (prefill and
cached decode), for SmolLM2's head shape (9 query heads, 3 KV groups) and a pruned model whose
groups differ in size; each rank caches only its KV heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headcount.distributed.tensor_parallel import plan_layer
from tests.distributed import workers
from tests.distributed.launch import check_ok, run_ranks


def test_plan_smollm2_shape() -> None:
    three = [plan_layer((3, 3, 3), 3, r) for r in range(3)]
    assert [(s.heads, s.groups) for s in three] == [
        (range(0, 3), range(0, 1)),
        (range(3, 6), range(1, 2)),
        (range(6, 9), range(2, 3)),
    ]
    two = [plan_layer((3, 3, 3), 2, r) for r in range(2)]  # group 1 split, its KV head on both
    assert [(s.heads, s.groups, s.group_sizes) for s in two] == [
        (range(0, 4), range(0, 2), (3, 1)),
        (range(4, 9), range(1, 3), (2, 3)),
    ]
    whole = [plan_layer((3, 3, 3), 2, r, "groups") for r in range(2)]
    assert [s.heads for s in whole] == [range(0, 3), range(3, 9)]


def test_plan_uneven_groups() -> None:
    # groups (2, 2, 4, 4) over 2 ranks: whole groups give 8 | 4 or 4 | 8 > 6: split heads 6 | 6
    split = [plan_layer((2, 2, 4, 4), 2, r) for r in range(2)]
    assert [(s.heads, s.groups, s.group_sizes) for s in split] == [
        (range(0, 6), range(0, 3), (2, 2, 2)),
        (range(6, 12), range(2, 4), (2, 4)),
    ]
    for sizes in [(2, 3, 1), (1, 1, 1, 6), (5,), (1, 2)]:
        for n in range(1, sum(sizes) + 1):
            shards = [plan_layer(sizes, n, r) for r in range(n)]
            assert [h for s in shards for h in s.heads] == list(range(sum(sizes)))
            for s in shards:
                assert sum(s.group_sizes) == len(s.heads) and len(s.group_sizes) == len(s.groups)


@pytest.mark.parametrize(
    ("kind", "n", "kv_heads"),
    [
        ("llama", 3, [[1, 1], [1, 1], [1, 1]]),  # one KV group per rank
        ("llama", 2, [[2, 2], [2, 2]]),  # the middle group's KV head on both ranks
        ("pruned", 2, [[1, 2], [2, 1]]),  # groups (2, 1, 2) and (1, 1, 3): whole groups
        ("pruned", 3, [[1, 1], [1, 2], [1, 1]]),  # layer 1: heads split, KV head 2 on 2 ranks
    ],
)
def test_logits_equal_one_process(
    tmp_path: Path, kind: str, n: int, kv_heads: list[list[int]]
) -> None:
    check_ok(run_ranks(n, "tp", tmp_path, kind, "auto"))
    model = workers.tp_model(kind)
    ref = workers.tp_logits(model)
    torch.testing.assert_close(ref["decode"], ref["prefill"], rtol=1e-5, atol=1e-5)
    heads = []
    for r in range(n):
        got = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(got["prefill"], ref["prefill"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["decode"], ref["decode"], rtol=1e-5, atol=1e-5)
        assert got["kv_heads"] == kv_heads[r]  # this rank's cache: its KV heads only
        heads.append(got["heads"])
    for layer, a in enumerate(model.attention_layers()):  # every query head on exactly one rank
        assert sorted(h for r in range(n) for h in heads[r][layer]) == list(range(a.n_heads))
        assert [len(plan_layer(a.group_sizes, n, r).groups) for r in range(n)] == [
            kv_heads[r][layer] for r in range(n)
        ]


@pytest.mark.parametrize("n", [2, 3])
def test_analysis_of_a_sharded_model(tmp_path: Path, n: int) -> None:
    """Each rank scores its heads (GQA 6/2, MHA 4/4, MQA 3/1 layers); the gathered tables,
    KV groups and roles equal the one-process analysis."""
    from headcount.heads import analyze

    check_ok(run_ranks(n, "tp_analyze", tmp_path))
    model = workers.analysis_model(d_ff=48)
    ref = analyze(model, workers.TEXT, config=workers.analysis_config(60))  # type: ignore[arg-type]
    for r in range(n):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["scores"].keys() == ref.scores.keys()
        for name, t in ref.scores.items():
            torch.testing.assert_close(got["scores"][name], t, rtol=1e-4, atol=1e-5, equal_nan=True)
        assert got["kv_groups"] == ref.kv_groups
        assert got["roles"] == ref.roles
