"""The data-aware conversion ``fit``: one shared K (and V) projection per new KV group, chosen by
weighted reduced-rank regression on calibration activations, with per-head adapters folded into
the query heads (for K) and into ``o_proj`` (for V).

Legend: N calibration positions, C model dim, C1 = C + 1 (inputs with a constant 1 for the
bias), D head dim, P = D / 2 rotary planes, m old KV heads covered by one new group.

Every projection is written as a ``(C1, D)`` matrix ``A`` acting on ``x1 = [x, 1]``: rows ``:C``
are the weight transposed, the last row the bias (zero when the layer has none). The only data a
layer needs are second moments of its attention inputs ``E[x1 x1^T]`` ``(C1, C1)``: plain ones
for the queries, and for a group's keys and values ones in which each position s is weighted by
the attention ``w_s = mean_h sum_t a^h_ts`` it receives from the group's query heads. For
values this makes the objective an upper bound on the error of the heads' outputs (a head's
output error at t is ``sum_s a_ts e_s``, and ``|sum_s a_ts e_s|^2 <= sum_s a_ts |e_s|^2`` since
the ``a_ts`` are convex weights); for keys it is the first-order effect of a score error on the
output (``d out_t / d score_ts`` is proportional to ``a_ts``). Attention sinks, which most heads
read most of the time, are fitted accordingly.

The objective, for one new group covering old KV heads i (keys ``K_i = X1 A_i``) with metrics
``M_i`` (D x D, positive definite): find one shared ``A'`` and per-old-head ``T_i`` (D x D) with

    min  sum_i || (X1 A_i - X1 A' T_i) L_i ||^2,    L_i L_i^T = M_i.

Its solution is the best rank-D approximation of ``Z = [X1 A_1 L_1 | ... | X1 A_m L_m]``
``(N, mD)`` (Eckart-Young): with ``U`` the top-D eigenvectors of ``Z^T Z = [L_i^T A_i^T S A_j
L_j]`` (only ``S`` is needed), ``A' = sum_i A_i L_i U_i`` and ``T_i = U_i^T L_i^{-1}`` (``U_i``
the i-th D-row block of ``U``). Mean-pooling (``T_i = I``) is one feasible point, so the fit's
error is never larger on the calibration data. ``A'`` and ``T_i`` are defined up to an
invertible ``G`` (``A' G``, ``G^-1 T_i``). We keep the new outputs uncorrelated (the principal
components of ``Z``; a gauge that aligns them with the old heads' dimensions makes them nearly
collinear, and the adapters then need large, cancelling entries) and scale each so that it and
its adapter rows sit at the old heads' scales (`_balance`). The scale matters when the model is
uptrained: AdamW moves every weight by about the same amount, so weights far from the
original's scale are swamped, or barely move, in its first steps.

* Values: ``M_i = sum_{h->i} W_O^h W_O^h^T`` (the o_proj rows of the query heads reading i), so
  the objective is the error of every head's value output after ``o_proj``, ``V_i W_O^h``; the
  adapters are folded in exactly, ``W_O^h <- T_i W_O^h``.
* Keys without RoPE (encoders): ``M_i = sum_{h->i} E[q_h q_h^T]`` (queries from the same ``S``),
  so the objective is the squared error of the attention scores ``q_h . k`` over all query/key
  pairs; keys are centred (``S`` -> covariance) because a key error shared by every key shifts
  a query's scores by a constant, which the softmax ignores. Adapters fold into the queries,
  ``q_h <- T_i q_h``.
* Keys with RoPE (decoders): the rotation ``R_t`` depends on the position but acts on each
  rotary plane ``(d, d + D/2)`` as multiplication of the complex number ``k_d + i k_{d+D/2}`` by
  ``e^{i t theta_d}``. A score is ``Re sum_d conj(q_d) k_d e^{i (s - t) theta_d}``, so adapters
  that are complex scalars per plane commute with RoPE, and fitting pre-RoPE keys is exact for
  every pair of positions. Averaged over relative positions the planes decouple and each
  plane's metric is its query energy ``m_{i,d} = sum_{h->i} E|q_{h,d}|^2``: the fit becomes,
  plane by plane, a weighted complex rank-1 approximation of the old heads' keys.

This is the SVD/"fold into the neighbouring projection" family of KV-head compression of Yu et
al. 2024, "Effectively Compress KV Heads for LLM" (arXiv:2406.07056), written as a weighted
reduced-rank regression whose weights are the query / output metrics the heads are read with,
and made RoPE-exact by restricting the adapters to per-plane complex scalars.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def as_affine(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``nn.Linear`` rows ``(D, C)`` and bias ``(D,)`` as one ``(C + 1, D)`` float64 matrix."""
    w = weight.detach().cpu().double()
    b = (
        torch.zeros(w.shape[0], dtype=torch.float64)
        if bias is None
        else bias.detach().cpu().double()
    )
    return torch.cat([w.T, b[None]], dim=0)  # (C1, D)


def second_moment(x: Tensor) -> tuple[Tensor, int]:
    """``sum x1 x1^T`` ``(C1, C1)`` over the rows of ``x (..., C)`` with a 1 appended, and N."""
    x = x.reshape(-1, x.shape[-1]).double()
    x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (N, C1)
    return x1.T @ x1, x1.shape[0]


def centred(S: Tensor) -> Tensor:
    """The covariance form of a (weighted) second moment ``S``: its last row is ``E[w x1]`` and
    its corner ``E[w]``."""
    s = S[:, -1]  # E[w x1] = [E[w x], E[w]]
    return S - s[:, None] * s[None, :] / S[-1, -1]


def root(M: Tensor) -> Tensor:
    """Lower Cholesky factor of ``M + eps I`` (a tiny ridge keeps it invertible)."""
    D = M.shape[0]
    eps = 1e-10 * float(M.diagonal().abs().mean()) + 1e-30
    return torch.linalg.cholesky(M + eps * torch.eye(D, dtype=M.dtype, device=M.device))


def _balance(p: Tensor, q: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """The diagonal gauge ``delta`` that puts a factorisation at the original's scales: new
    output ``d`` has rms ``p_d``, its adapter side ``q_d``; the old heads have ``a`` and ``b``.
    After ``A' delta``, ``delta^-1 T_i``: ``p_d delta_d / a == q_d / delta_d / b``."""
    return (a * q / (b * p.clamp_min(1e-30))).clamp_min(1e-30).sqrt()


def shared(
    A: Sequence[Tensor], M: Sequence[Tensor], S: Tensor, w: Sequence[float]
) -> tuple[Tensor, list[Tensor]]:
    """Shared projection ``A' (C1, D)`` and adapters ``T_i (D, D)`` with ``X1 A_i ~ X1 A' T_i``.

    ``A``: the old heads' ``(C1, D)`` projections, ``M``: their ``(D, D)`` metrics, ``S``: the
    ``(C1, C1)`` second moment of the inputs, ``w``: query heads reading each old head (gauge).
    """
    D = A[0].shape[1]
    L = [root(m) for m in M]
    AL = torch.cat([a @ r for a, r in zip(A, L, strict=True)], dim=1)  # (C1, mD)
    gram = AL.T @ S @ AL  # (mD, mD) = Z^T Z
    gram = (gram + gram.T) / 2
    U = torch.linalg.eigh(gram).eigenvectors[:, -D:]  # (mD, D), top-D eigenvectors
    A_new = AL @ U  # (C1, D)
    T = [
        torch.linalg.solve_triangular(r, U[i * D : (i + 1) * D].T, upper=False, left=False)
        for i, r in enumerate(L)
    ]  # U_i^T L_i^{-1}
    # gauge: uncorrelated new outputs (the top-D principal components of Z), each scaled so
    # that it and its adapter rows sit at the old heads' scales
    W = float(sum(w))
    a_old = (
        float(
            sum(wi * float(_out_scale(a, S).pow(2).mean()) for wi, a in zip(w, A, strict=True)) / W
        )
        ** 0.5
    )
    b_old = float(sum(float(m.diagonal().mean()) for m in M) / W) ** 0.5
    q = (
        torch.stack([torch.einsum("de,ef,df->d", t, m, t) for t, m in zip(T, M, strict=True)]).sum(
            0
        )
        / W
    ).sqrt()
    delta = _balance(_out_scale(A_new, S), q, a_old, b_old)
    return A_new * delta, [t / delta[:, None] for t in T]


def _out_scale(A: Tensor, S: Tensor) -> Tensor:
    """``(D,)`` root mean square of each output ``x1 A`` under the second moment ``S``."""
    return torch.einsum("cd,ce,ed->d", A.conj(), S.to(A.dtype), A).real.clamp_min(0).sqrt()


def shared_rope(
    A: Sequence[Tensor], energy: Sequence[Tensor], S: Tensor, w: Sequence[float]
) -> tuple[Tensor, list[Tensor]]:
    """`shared` with adapters restricted to complex scalars per rotary plane (they commute with
    RoPE). ``energy[i] (P,)``: the query energy of each plane of old head i."""
    D = A[0].shape[1]
    P = D // 2
    a = torch.stack([torch.complex(x[:, :P], x[:, P:]) for x in A])  # (m, C1, P)
    root_e = torch.stack(list(energy)).clamp_min(0).sqrt()  # (m, P)
    root_e = root_e + 1e-12 * root_e.mean(0, keepdim=True) + 1e-30
    Sa = torch.einsum("cd,jdp->jcp", S.to(a.dtype), a)  # (m, C1, P)
    gram = torch.einsum("icp,jcp->pij", a.conj(), Sa)  # (P, m, m)
    gram = gram * (root_e.T[:, :, None] * root_e.T[:, None, :])
    gram = (gram + gram.conj().transpose(1, 2)) / 2
    u = torch.linalg.eigh(gram).eigenvectors[..., -1]  # (P, m), top eigenvector per plane
    a_new = torch.einsum("pj,jcp->cp", u * root_e.T, a)  # (C1, P)
    c = u.conj() / root_e.T  # (P, m): old key i ~ c_i * new key, plane by plane
    # gauge: the phase that brings the c_i closest to 1 (beta = argmin sum_i w_i |beta c_i - 1|^2),
    # and the magnitude that puts the plane and its query adapters at the old heads' scales
    wt = torch.tensor(list(w), dtype=torch.float64)[None]  # (1, m)
    beta = (wt * c.conj()).sum(-1) / (wt * c.abs() ** 2).sum(-1)  # (P,)
    beta = torch.where(beta.abs() > 1e-12, beta / beta.abs(), torch.ones_like(beta))
    a_new, c = a_new / beta, c * beta[:, None]
    e = torch.stack(list(energy)).clamp_min(0).T  # (P, m)
    a_old = (
        (wt * torch.stack([_out_scale(a[i], S) for i in range(len(A))], 1) ** 2).sum(-1) / wt.sum()
    ).sqrt()
    b_old = (e.sum(-1) / wt.sum()).sqrt()  # (P,)
    q = ((c.abs() ** 2 * e).sum(-1) / wt.sum()).sqrt()  # (P,) query rms after the adapters
    delta = _balance(_out_scale(a_new, S), q, a_old, b_old)
    a_new, c = a_new * delta, c / delta[:, None]
    A_new = torch.cat([a_new.real, a_new.imag], dim=1)  # (C1, D)
    T = []
    for i in range(len(A)):  # q' = conj(c) q per plane: [[re, im], [-im, re]] on (d, d + P)
        re, im = c[:, i].real, c[:, i].imag
        t = torch.zeros(D, D, dtype=torch.float64)
        idx = torch.arange(P)
        t[idx, idx], t[idx, idx + P] = re, im
        t[idx + P, idx], t[idx + P, idx + P] = -im, re
        T.append(t)
    return A_new, T


def plane_energy(M: Tensor) -> Tensor:
    """``(P,)`` mean of a ``(D, D)`` query second moment's diagonal over each rotary plane."""
    d = M.diagonal()
    P = d.shape[0] // 2
    return (d[:P] + d[P:]) / 2
