"""Projection of a weight onto the subspaces the data uses, and its exact output-preservation error.

With ``V_in`` (columns: eigenvectors of C_in, descending) and ``V_out`` (of C_out), the projected weight is

    W' = P_out W P_in,   P = V_k V_k^T,

applied in factored form ``V_out_k (V_out_k^T W V_in_k) V_in_k^T``, never as dense d x d projectors.

Rotated weight ``A = V_out^T W V_in`` (d_out x d_in). Since ``V_in^T C_in V_in = diag(lambda_in)``,

    ||(W - W') X||_F^2 = tr((W - W') C_in (W - W')^T) = sum_{(i, j) outside [0, k_out) x [0, k_in)} A_ij^2 lambda_in_j

so with ``G_ij = A_ij^2 lambda_in_j`` the preservation error is

    err(k_out, k_in) = 1 - sum_{i < k_out, j < k_in} G_ij / sum_ij G_ij,

a 2-D prefix sum of G: every (k_out, k_in) pair costs O(1) once G is formed. The singular values of W'
are those of the block ``A[:k_out, :k_in]`` (the V blocks have orthonormal columns).
"""

from __future__ import annotations

import numpy as np
import torch


def rotated_weight(weight: torch.Tensor, v_in: torch.Tensor, v_out: torch.Tensor) -> torch.Tensor:
    """``A = V_out^T W V_in`` in float64."""
    w = weight.to(torch.float64)
    return v_out.to(torch.float64).T @ w @ v_in.to(torch.float64)


def preservation_error_table(
    rotated: torch.Tensor, eig_in: torch.Tensor, k_out_values: np.ndarray, k_in_values: np.ndarray,
    total: float | None = None,
) -> np.ndarray:
    """``err[a, b] = err(k_out_values[a], k_in_values[b])`` (see the module docstring). ``total``:
    ``sum_ij G_ij = tr(W C_in W^T)`` when ``rotated`` has only the first rows of ``A`` (``V_out`` of the
    small problem, :func:`analysis.spectra.output_eigen`: its rows past them may still carry energy when the
    output's null space does not hold ``W x`` alone, as with a bias); default: the sum over ``rotated``."""
    g = rotated.square() * eig_in.to(torch.float64).clamp_min(0.0)[None, :]
    total = float(g.sum()) if total is None else float(total)
    prefix = torch.zeros(g.shape[0] + 1, g.shape[1] + 1, dtype=torch.float64)
    prefix[1:, 1:] = g.cumsum(0).cumsum(1)
    kept = prefix[np.asarray(k_out_values)[:, None], np.asarray(k_in_values)[None, :]].numpy()
    if total <= 0:
        return np.zeros_like(kept)
    return np.clip(1.0 - kept / total, 0.0, 1.0)


def weight_energy(weight: torch.Tensor, v_in: torch.Tensor, eig_in: torch.Tensor) -> float:
    """``tr(W C_in W^T) = sum_j ||W v_j||^2 lambda_j`` (the preservation error's denominator) from the input side."""
    return float(((weight.to(torch.float64) @ v_in.to(torch.float64)).square()
                  * eig_in.to(torch.float64).clamp_min(0.0)[None, :]).sum())


def rotated_and_errors(weight: torch.Tensor, eig_in, eig_out, k_out_values: np.ndarray, k_in_values: np.ndarray
                       ) -> tuple[torch.Tensor, np.ndarray]:
    """``(A, err)``: the rotated weight for the eigenvectors at hand and :func:`preservation_error_table`,
    whose denominator comes from the input side when ``eig_out`` holds fewer eigenvectors than values (the
    small problem of :func:`analysis.spectra.output_eigen`). ``eig_in``, ``eig_out``:
    :class:`~analysis.spectra.Eigen`."""
    rotated = rotated_weight(weight, eig_in.vectors, eig_out.vectors)
    thin = eig_out.vectors.shape[1] < eig_out.values.shape[0]
    total = weight_energy(weight, eig_in.vectors, eig_in.values) if thin else None
    return rotated, preservation_error_table(rotated, eig_in.values, k_out_values, k_in_values, total)


def projected_singular_values(rotated: torch.Tensor, k_out: int, k_in: int) -> np.ndarray:
    """Singular values of W' at (k_out, k_in): those of ``A[:k_out, :k_in]``, descending."""
    if k_out == 0 or k_in == 0:
        return np.zeros(0)
    return torch.linalg.svdvals(rotated[:k_out, :k_in]).numpy()


def project_weight(
    weight: torch.Tensor, v_in: torch.Tensor, v_out: torch.Tensor, k_in: int, k_out: int
) -> torch.Tensor:
    """``W' = V_out_k (V_out_k^T W V_in_k) V_in_k^T`` in factored form (float64)."""
    vi = v_in[:, :k_in].to(torch.float64)
    vo = v_out[:, :k_out].to(torch.float64)
    core = vo.T @ weight.to(torch.float64) @ vi
    return vo @ core @ vi.T


def factorize(
    weight: torch.Tensor, v_in: torch.Tensor, v_out: torch.Tensor, k_in: int, k_out: int, rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin factors ``(L, R)`` with ``L @ R = W'``: L is ``d_out x r``, R is ``r x d_in``.

    ``r = min(k_in, k_out)`` by default (rank(W') <= r). Obtained from the SVD of the small core
    ``V_out_k^T W V_in_k`` so that the factors are balanced (both carry sqrt of the singular values).
    """
    vi = v_in[:, :k_in].to(torch.float64)
    vo = v_out[:, :k_out].to(torch.float64)
    core = vo.T @ weight.to(torch.float64) @ vi
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    r = min(k_in, k_out) if rank is None else rank
    root = s[:r].sqrt()
    left = (vo @ u[:, :r]) * root[None, :]
    right = root[:, None] * (vh[:r] @ vi.T)
    return left, right
