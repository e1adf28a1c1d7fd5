"""Induction sequences and the OV copying score against a brute-force eigen-decomposition."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from headcount.heads import induction_batch, induction_candidates, ov_copying


def test_candidates_drop_most_and_least_frequent() -> None:
    counts = torch.zeros(50)
    counts[1] = 1000  # the most frequent
    counts[2] = 1  # seen once
    counts[10:30] = torch.arange(2.0, 22.0)
    got = induction_candidates(counts, exclude_top=0.05, exclude=(11,))
    assert 1 not in got and 2 not in got and 11 not in got
    assert set(got.tolist()) <= set(range(10, 30))


def test_induction_batch_layout() -> None:
    tokens, (b, i, j) = induction_batch(torch.arange(100, 200), 7, n_seqs=10, length=25, repeats=4)
    assert tokens.shape == (10, 101) and bool((tokens[:, 0] == 7).all())
    assert torch.equal(tokens[:, 1:26], tokens[:, 26:51])
    assert tokens[0, 1:26].unique().numel() == 25
    assert b.numel() == 10 * 75
    assert bool((tokens[b, i] == tokens[b, j - 1]).all())  # j follows the previous occurrence
    with pytest.raises(ValueError, match="candidate"):
        induction_batch(torch.arange(5), 0, length=25)


def brute_force(W_E, W_U, W_V, W_O, kv_of=None) -> torch.Tensor:
    H, G = W_O.shape[0], W_V.shape[0]
    kv_of = kv_of or [h // (H // G) for h in range(H)]
    out = []
    for h in range(H):
        full = W_E.double() @ W_V[kv_of[h]].double() @ W_O[h].double() @ W_U.double()  # (V, V)
        lam = torch.linalg.eigvals(full)
        out.append(lam.sum().real / lam.abs().sum())
    return torch.stack(out).float()


def test_copying_matches_full_circuit() -> None:
    V, C, D, H, G = 40, 12, 4, 4, 2
    W_E = torch.randn(V, C)
    W_U = torch.randn(C, V)
    W_V, W_O = torch.randn(G, C, D), torch.randn(H, D, C)
    assert_close(
        ov_copying(W_E, W_U, W_V, W_O), brute_force(W_E, W_U, W_V, W_O), atol=1e-4, rtol=1e-4
    )


def test_copying_with_uneven_groups() -> None:
    V, C, D = 40, 12, 4
    W_E, W_U = torch.randn(V, C), torch.randn(C, V)
    W_V, W_O = torch.randn(3, C, D), torch.randn(5, D, C)
    want = brute_force(W_E, W_U, W_V, W_O, kv_of=[0, 1, 1, 1, 2])
    got = ov_copying(W_E, W_U, W_V, W_O, group_sizes=(1, 3, 1))
    assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        ov_copying(W_E, W_U, W_V, W_O, group_sizes=(1, 2, 1))
    with pytest.raises(ValueError, match="does not fit"):
        ov_copying(W_E, W_U, W_V, W_O)  # 5 heads do not split evenly over 3 KV heads


def test_copying_identity_and_negation() -> None:
    V, C = 30, 6
    W_E = torch.randn(V, C)
    eye = torch.eye(C)
    W_V = eye[None]  # (1, C, C): D = C
    W_O = torch.stack([eye, -eye])  # head 0 copies, head 1 suppresses
    got = ov_copying(W_E, W_E.T, W_V, W_O)
    assert_close(got, torch.tensor([1.0, -1.0]))
