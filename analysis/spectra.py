"""Second moments to spectra: the analytic output moment and symmetric eigen-decompositions.

Output second moment of an affine layer ``y = W x + b`` over the same N inputs, exactly, with no hook:

    C_out = sum_x (W x + b)(W x + b)^T = W C_in W^T + W s b^T + b s^T W^T + N b b^T

Eigen-decomposition: ``C`` is symmetrized (``(C + C^T) / 2``), promoted to float64, given a tiny jitter
``1e-12 * trace / d`` on the diagonal (so exactly singular moments decompose stably) and decomposed with
``torch.linalg.eigh``; on a GPU, matrices of one shape are stacked and decomposed in one batched call
(on the CPU, LAPACK gains nothing from stacking, so each is decomposed alone and no stack is built). If
the device solver fails, the CPU solver is used. CPU decompositions run on one thread: LAPACK's
multi-threaded ``syevd`` gains little on a few cores and collapses when the cores are shared (measured
here on 2 busy cores: 36 matrices of d <= 768 took 40 s on 2 threads, 6 s on 1). Eigenvalues are returned in descending order, clipped at 0
(a second moment is positive semi-definite; negative values are rounding), with their eigenvectors as
columns in the same order.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

JITTER = 1e-12


def output_second_moment(
    weight: torch.Tensor, c_in: torch.Tensor, column_sum: torch.Tensor, count: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``C_out = W C_in W^T + W s b^T + b s^T W^T + N b b^T`` in float64 (W is ``d_out x d_in``)."""
    w = weight.to(torch.float64)
    c_out = w @ c_in.to(torch.float64) @ w.T
    if bias is not None:
        b = bias.to(torch.float64)
        ws = w @ column_sum.to(torch.float64)
        cross = torch.outer(ws, b)
        c_out = c_out + cross + cross.T + count * torch.outer(b, b)
    return c_out


def layer_output_second_moment(spec, c_in: torch.Tensor, column_sum: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`output_second_moment` of an analysed layer (a :class:`~analysis.models.layers.LayerSpec`): its
    weight as ``d_out x d_in`` (convolutions flattened like unfold) and its bias, if any, read on the CPU."""
    from .models.layers import weight_matrix

    bias = spec.module.bias.detach().cpu() if spec.has_bias else None
    return output_second_moment(weight_matrix(spec.module).detach().cpu(), c_in, column_sum, count, bias)


@dataclass
class Eigen:
    """Descending eigenvalues (float64, >= 0) and matching eigenvectors (columns)."""

    values: torch.Tensor
    vectors: torch.Tensor


def _prepare(matrix: torch.Tensor) -> torch.Tensor:
    m = matrix.to(torch.float64)
    m = 0.5 * (m + m.T)
    d = m.shape[0]
    trace = torch.diagonal(m).sum().clamp_min(0.0)
    jitter = JITTER * (trace / d if trace > 0 else 1.0)
    return m + jitter * torch.eye(d, dtype=m.dtype, device=m.device)


def _eigh(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        values, vectors = torch.linalg.eigh(stack)
    except RuntimeError:  # e.g. a GPU solver that fails to converge: fall back to the CPU
        values, vectors = torch.linalg.eigh(stack.cpu())
    return values.flip(-1).clamp_min(0.0), vectors.flip(-1)


@contextmanager
def _cpu_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def eigen_batched(matrices: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> tuple[dict[str, Eigen], float]:
    """Decompose every matrix, batched by shape. Returns the decompositions (on the CPU) and seconds spent."""
    start = time.perf_counter()
    by_shape: dict[int, list[str]] = defaultdict(list)
    for name, matrix in matrices.items():
        by_shape[matrix.shape[0]].append(name)
    out: dict[str, Eigen] = {}
    batched = torch.device(device).type != "cpu"
    groups = by_shape.values() if batched else [[n] for names in by_shape.values() for n in names]
    with _cpu_threads(1):
        for names in groups:
            stack = torch.stack([_prepare(matrices[n].to(device)) for n in names])
            values, vectors = _eigh(stack)
            for i, name in enumerate(names):
                out[name] = Eigen(values=values[i].cpu(), vectors=vectors[i].cpu())
    return out, time.perf_counter() - start
