"""The Learn page's synthetic example (pure numpy; no Streamlit): 2-D inputs of a layer, their second moment
and its eigen-directions, so the method can be shown on a picture before it is shown on a network."""

from __future__ import annotations

import numpy as np

from analysis import metrics


def synthetic_inputs(spread: float, n: int = 300, angle_deg: float = 30.0, seed: int = 0) -> np.ndarray:
    """``n`` points in the plane (rows): unit spread along a direction at ``angle_deg``, ``spread`` across it
    (``spread = 0`` puts every point on a line: a layer that uses one of its two input directions)."""
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, 2)) * np.array([1.0, float(spread)])
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return local @ rotation.T


def eigen(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the uncentred second moment ``C = X^T X``."""
    values, vectors = np.linalg.eigh(points.T @ points)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def k_for(values: np.ndarray, energy: float) -> int:
    """``k(e)``: the fewest top eigenvalues holding a fraction ``e`` of the trace (the library's definition)."""
    return metrics.k_at_energy(values, energy)
