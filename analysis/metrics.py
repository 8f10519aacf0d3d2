"""Numbers from spectra: k at an energy, utilized rank, utilization, parameter counts, weight ranks.

- ``k(e)``: the smallest k whose top-k eigenvalues hold a fraction ``e`` of the trace (0 when the trace is 0).
- Utilized rank ``r = min(k_in, k_out)``; layer utilization ``u = r / min(d_in, d_out)``.
- Parameters if factorized at rank r: ``r (d_in + d_out)`` (+ bias), used only where smaller than
  ``d_in d_out``.
- Stable rank of W: ``||W||_F^2 / ||W||_2^2 = sum s_i^2 / s_1^2``.
- Effective rank of W (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum s_j``.
"""

from __future__ import annotations

import numpy as np

ENERGY_TOLERANCE = 1e-12
"""Relative slack when comparing cumulative energy with ``e`` (so e = 1 is reachable despite rounding)."""


def cumulative_energy(eigenvalues: np.ndarray) -> np.ndarray:
    """Fraction of the trace held by the top-k eigenvalues, for k = 1..d (descending input)."""
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return np.zeros_like(values)
    return np.cumsum(values) / total


def k_at_energy(eigenvalues: np.ndarray, energy: float) -> int:
    """Smallest k with ``sum_{i<k} lambda_i >= energy * trace`` (eigenvalues in descending order)."""
    cumulative = cumulative_energy(eigenvalues)
    if cumulative.size == 0 or cumulative[-1] <= 0:
        return 0
    target = energy * (1.0 - ENERGY_TOLERANCE)
    return int(min(np.searchsorted(cumulative, target, side="left") + 1, cumulative.size))


def utilized_rank(k_in: int, k_out: int) -> int:
    return min(k_in, k_out)


def utilization(rank: int, d_in: int, d_out: int) -> float:
    return rank / min(d_in, d_out)


def dense_params(d_in: int, d_out: int, has_bias: bool) -> int:
    return d_in * d_out + (d_out if has_bias else 0)


def factorized_params(rank: int, d_in: int, d_out: int, has_bias: bool) -> int:
    """``min(r (d_in + d_out), d_in d_out)`` plus the bias: factorize only where it saves parameters."""
    return min(rank * (d_in + d_out), d_in * d_out) + (d_out if has_bias else 0)


KEPT_DEFINITION = (
    "parameters kept = the counted layers' parameters after factorizing each at its utilized rank (only where "
    "that is smaller), divided by their dense parameters; layers outside the MLU (patch embedding, head) are in "
    "neither count"
)
"""The one definition of "parameters kept" that every page, table and summary uses (see :func:`kept_fraction`)."""


def kept_fraction(params_kept: int, params_dense: int) -> float:
    """``sum factorized_params / sum dense_params`` over the counted layers (NaN when there are none).

    Both sums are over the same layers: those counted in the MLU, each counted by :func:`factorized_params`
    (so a layer that would not shrink keeps its dense count). This is :data:`KEPT_DEFINITION`; two numbers
    computed by it differ only if their analyses (data, images, energies) differ.
    """
    return params_kept / params_dense if params_dense else float("nan")


def stable_rank(singular_values: np.ndarray) -> float:
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0 or s[0] <= 0:
        return 0.0
    return float(np.sum(s**2) / s[0] ** 2)


def effective_rank(singular_values: np.ndarray) -> float:
    s = np.clip(np.asarray(singular_values, dtype=np.float64), 0.0, None)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))
