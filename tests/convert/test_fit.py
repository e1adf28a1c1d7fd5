"""The reduced-rank fit of `headcount.convert.fit` against brute force on explicit data: an SVD
of the stacked, metric-weighted outputs (real, and complex per rotary plane), its optimality
against mean-pooling, and RoPE commuting with the per-plane adapters."""

from __future__ import annotations

import torch

from headcount.convert import fit as F
from headcount.nn import RoPE

N, C, D, M = 200, 10, 4, 3  # positions, model dim, head dim, old KV heads in the group


def _data(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, C, generator=g, dtype=torch.float64) @ torch.randn(
        C, C, generator=g, dtype=torch.float64
    )
    X1 = torch.cat([X + 0.5, torch.ones(N, 1, dtype=torch.float64)], 1)  # (N, C1)
    A = [torch.randn(C + 1, D, generator=g, dtype=torch.float64) for _ in range(M)]
    B = [torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(M)]
    metrics = [b @ b.T + 0.1 * torch.eye(D, dtype=torch.float64) for b in B]
    return X1, A, metrics


def _objective(X1, A, metrics, A_new, T) -> float:
    """sum_i || (X1 A_i - X1 A' T_i) L_i ||^2 = sum_i tr(E_i M_i E_i^T)."""
    total = 0.0
    for a, m, t in zip(A, metrics, T, strict=True):
        E = X1 @ a - X1 @ A_new @ t  # (N, D)
        total += float(torch.einsum("nd,de,ne->", E, m, E))
    return total


def test_shared_equals_the_truncated_svd_of_the_weighted_stack() -> None:
    X1, A, metrics = _data()
    w = [1.0, 2.0, 1.0]
    A_new, T = F.shared(A, metrics, X1.T @ X1 / N, w)
    # brute force: Z = [X1 A_i L_i], best rank-D approximation by SVD
    L = [torch.linalg.cholesky(m) for m in metrics]
    Z = torch.cat([X1 @ a @ r for a, r in zip(A, L, strict=True)], 1)  # (N, M D)
    U, s, Vh = torch.linalg.svd(Z, full_matrices=False)
    Z_D = U[:, :D] * s[:D] @ Vh[:D]
    fitted = torch.cat([X1 @ A_new @ t @ r for t, r in zip(T, L, strict=True)], 1)
    torch.testing.assert_close(fitted, Z_D, rtol=1e-6, atol=1e-6)
    # the gauge: uncorrelated new outputs, each balanced against its adapter rows at the old
    # heads' scales: rms(new output d) / a == rms(adapted query or output side d) / b
    cov = (X1 @ A_new).T @ (X1 @ A_new) / N
    torch.testing.assert_close(
        cov, torch.diag(cov.diagonal()), rtol=0, atol=1e-8 * float(cov.max())
    )
    a = (sum(wi * (X1 @ x).pow(2).mean() for wi, x in zip(w, A, strict=True)) / sum(w)).sqrt()
    b = (sum(m.diagonal().mean() for m in metrics) / sum(w)).sqrt()
    side = (
        sum(torch.einsum("de,ef,df->d", t, m, t) for t, m in zip(T, metrics, strict=True)) / sum(w)
    ).sqrt()
    torch.testing.assert_close(cov.diagonal().sqrt() / a, side / b, rtol=1e-9, atol=0)
    # never worse than mean-pooling (A' = mean, T = I), and here much better
    mean = sum(wi * a for wi, a in zip(w, A, strict=True)) / sum(w)
    eye = [torch.eye(D, dtype=torch.float64)] * M
    assert _objective(X1, A, metrics, A_new, T) < 0.9 * _objective(X1, A, metrics, mean, eye)


def test_shared_is_exact_for_identical_heads_and_a_single_head() -> None:
    X1, A, metrics = _data(1)
    S = X1.T @ X1 / N
    for heads in ([A[0]] * M, [A[1]]):  # identical heads, or a single one: reconstructed exactly
        A_new, T = F.shared(heads, metrics[: len(heads)], S, [1.0] * len(heads))
        for a, t in zip(heads, T, strict=True):
            torch.testing.assert_close(X1 @ A_new @ t, X1 @ a, rtol=1e-8, atol=1e-8)


def _complex_keys(X1: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    k = X1 @ a  # (N, D)
    return torch.complex(k[:, : D // 2], k[:, D // 2 :])  # (N, P)


def test_shared_rope_is_a_weighted_complex_rank_one_fit_per_plane() -> None:
    X1, A, metrics = _data(2)
    energy = [F.plane_energy(m) for m in metrics]
    w = [2.0, 1.0, 1.0]
    A_new, T = F.shared_rope(A, energy, X1.T @ X1 / N, w)
    new = _complex_keys(X1, A_new)  # (N, P)
    for p in range(D // 2):
        # brute force: rank-1 SVD of [sqrt(m_i) k_i] (N, M) complex
        Z = torch.stack([energy[i][p].sqrt() * _complex_keys(X1, A[i])[:, p] for i in range(M)], 1)
        U, s, Vh = torch.linalg.svd(Z, full_matrices=False)
        Z_1 = s[0] * U[:, :1] @ Vh[:1]  # (N, M)
        for i in range(M):
            # k_i ~ T_i^T k' per plane: a complex scalar c_i times the new key
            c = torch.complex(T[i][p, p], T[i][p, p + D // 2])
            fitted = energy[i][p].sqrt() * c * new[:, p]
            torch.testing.assert_close(fitted, Z_1[:, i], rtol=1e-6, atol=1e-6)
    # the adapters commute with RoPE: scores q^T k_i ~ (T_i q)^T k' hold after rotating both
    rope = RoPE(D, base=10.0)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, N, D, generator=g, dtype=torch.float64)
    pos_q, pos_k = torch.randint(0, 50, (N,), generator=g), torch.randint(0, 50, (N,), generator=g)
    k_new = (X1 @ A_new)[None, None]
    # the gauge: each plane balanced against its query adapters at the old heads' scales
    c = torch.stack(
        [torch.complex(t.diagonal()[: D // 2], t[range(D // 2), range(D // 2, D)]) for t in T], 1
    )  # (P, M)
    e = torch.stack(energy, 1)  # (P, M)
    a = (
        sum(wi * _complex_keys(X1, x).abs().pow(2).mean(0) for wi, x in zip(w, A, strict=True))
        / sum(w)
    ).sqrt()
    b = (e.sum(1) / sum(w)).sqrt()
    side = ((c.abs() ** 2 * e).sum(1) / sum(w)).sqrt()
    torch.testing.assert_close(new.abs().pow(2).mean(0).sqrt() / a, side / b, rtol=1e-9, atol=0)
    for i in range(M):
        lhs = (rope(q @ T[i].T, pos_q) * rope(k_new, pos_k)).sum(-1)
        rhs = (rope(q, pos_q) * rope(k_new @ T[i], pos_k)).sum(-1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


def test_centred_and_second_moment() -> None:
    X1, _, _ = _data(4)
    S, n = F.second_moment(X1[:, :-1].reshape(4, N // 4, C))
    assert n == N
    torch.testing.assert_close(S, X1.T @ X1, rtol=1e-12, atol=1e-9)
    cov = F.centred(S / n)
    X = X1[:, :-1]
    torch.testing.assert_close(cov[:-1, :-1], torch.cov(X.T, correction=0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cov[-1], torch.zeros(C + 1, dtype=torch.float64), rtol=0, atol=1e-9)
