r"""How sure a result is: split-half error bars and a convergence curve, both from stored eigenvalues.

**Split half.** Every analysed image belongs to one of two halves, fixed by its index ``i`` in the analysed
selection (not by batch, rank or order of arrival, so batch size, resumption and torchrun do not move it):
``half(i)`` is the top bit of ``(i * 2654435769) mod 2^32`` (Fibonacci hashing: balanced, and well spread over
runs of consecutive indices, as class-sorted folders have). The collector accumulates ``C_in, s, N`` of each
half separately (their sum is the whole run's statistics), and the spectra step stores the eigenvalues of
both halves' input and output moments. For a quantity ``theta`` (a layer's ``k_in``, ``k_out``,
utilization, or the MLU) with half estimates ``theta_a``, ``theta_b``, the error bar is

    err(theta) = |theta_a - theta_b| / 2,

the standard error at N samples estimated from two independent estimates at N/2 (variance ~ 1/N:
``Var(theta_a - theta_b) = 2 sigma_{N/2}^2 = 4 sigma_N^2``). It measures sampling noise, not the bias of a
too-small sample (k tends to grow with N); the convergence curve shows that.

**Convergence.** Snapshots of the running sums are decomposed during the data pass when the images seen
reach ``N / 2^j`` (``j = SNAPSHOTS .. 1``, at least one batch, on batch boundaries) and the last point is the
whole run. Each snapshot stores every layer's input and output eigenvalues (:func:`eigenvalues`), so the
curve (MLU and per-layer k against images seen) re-thresholds at any energy like everything else.

**Eigenvalues only** (:func:`eigenvalues`): ``eigvalsh`` of ``C_in``; for the output, when
``d_out > m`` (``m = d_in + 1`` with a bias), the non-zero eigenvalues of ``C_out = M G M^T`` are those of
``L^T M^T M L`` with ``G = L L^T`` (Cholesky; for a singular ``G`` the symmetric square root
``Q diag(sqrt(g))`` of its eigen-decomposition, as in :mod:`analysis.spectra`: no jitter enters ``C_out``),
padded with zeros; otherwise ``eigvalsh(C_out)`` directly. Every ``eigvalsh`` uses the jitter of
:mod:`analysis.spectra` and removes it again.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from . import metrics
from .spectra import (CPU_EIGH_THREADS, AffineLayer, augmented, cpu_dict, cpu_threads, decomposition_cost,
                      eigvalsh_without_jitter, gram_factor, output_second_moment)

SNAPSHOTS = 6
"""Snapshots before the whole run: at N/64, N/32, ..., N/2 images."""

_GOLDEN = 2654435769


def half_of(image_ids: torch.Tensor) -> torch.Tensor:
    """``0``/``1`` half of each image index (int64 tensor of indices into the analysed selection)."""
    return ((image_ids.to(torch.int64) * _GOLDEN) % (1 << 32)) >> 31


def half_order(image_ids: torch.Tensor) -> torch.Tensor:
    """The permutation that puts a batch's half-0 images first and its half-1 images after, each in their
    original order: with it, each half's vectors are one contiguous slice of every layer's input and the
    statistics add them without gathering a copy (:class:`~analysis.statistics.MomentCollector`)."""
    return torch.argsort(half_of(image_ids), stable=True)


def snapshot_batches(n_batches: int, batch_size: int, n_images: int) -> list[int]:
    """Batch counts after which to snapshot: the first batch boundary at or past ``N / 2^j`` images,
    ``j = SNAPSHOTS .. 1``; distinct, and before the last batch (the whole run is the final point)."""
    marks = []
    for j in range(SNAPSHOTS, 0, -1):
        batches = max(1, math.ceil(n_images / 2**j / batch_size))
        if batches < n_batches and batches not in marks:
            marks.append(batches)
    return marks


def _eigvalsh(matrix: torch.Tensor) -> np.ndarray:
    """Descending, clipped eigenvalues with the same symmetrization and jitter (removed again) as
    :mod:`analysis.spectra`."""
    return eigvalsh_without_jitter(matrix).numpy()


def eigenvalues(layer: AffineLayer) -> tuple[np.ndarray, np.ndarray]:
    """Descending eigenvalues of ``C_in`` and ``C_out`` (float64, clipped at 0; see the module docstring), on
    the same LAPACK thread count as every other decomposition (reproducible bits)."""
    with cpu_threads(CPU_EIGH_THREADS):
        return _eigenvalues(layer)


def _eigenvalues(layer: AffineLayer) -> tuple[np.ndarray, np.ndarray]:
    lam_in = _eigvalsh(layer.c_in)
    if not layer.uses_small_problem():
        c_out = output_second_moment(layer.weight, layer.c_in, layer.column_sum, layer.count, layer.bias)
        return lam_in, _eigvalsh(c_out)
    w, g = augmented(layer)  # M = [W b], G = [[C_in, s], [s^T, N]]
    k = w @ gram_factor(g)
    small = _eigvalsh(k.T @ k)
    return lam_in, np.concatenate([small, np.zeros(layer.d_out - len(small))])


class Snapshots:
    """Eigenvalues of every layer at each snapshot (images seen -> ``{layer: (eig_in, eig_out)}``)."""

    def __init__(self) -> None:
        self.images: list[int] = []
        self.values: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        self.seconds = 0.0

    def take(self, images: int, layers: dict[str, AffineLayer]) -> None:
        start = time.perf_counter()
        self.images.append(int(images))
        self.values.append(cpu_dict(lambda name: eigenvalues(layers[name]), list(layers),
                                    cost=lambda name: decomposition_cost(layers[name])))
        self.seconds += time.perf_counter() - start

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a partial checkpoint (``snap|<j>|images``, ``snap|<j>|<layer>|in``/``out``)."""
        state = {}
        for j, (images, values) in enumerate(zip(self.images, self.values)):
            state[f"snap|{j}|images"] = torch.tensor(images, dtype=torch.int64)
            for name, (lam_in, lam_out) in values.items():
                state[f"snap|{j}|{name}|in"] = torch.from_numpy(np.ascontiguousarray(lam_in))
                state[f"snap|{j}|{name}|out"] = torch.from_numpy(np.ascontiguousarray(lam_out))
        return state

    def load_state(self, state: dict[str, torch.Tensor], names: list[str]) -> None:
        """Restore what :meth:`state` saved (a snapshot missing any layer is dropped)."""
        self.images, self.values = [], []
        j = 0
        while f"snap|{j}|images" in state:
            try:
                values = {n: (state[f"snap|{j}|{n}|in"].numpy(), state[f"snap|{j}|{n}|out"].numpy()) for n in names}
            except KeyError:
                break
            self.images.append(int(state[f"snap|{j}|images"]))
            self.values.append(values)
            j += 1


# ------------------------------------------------------------------------------ derived at any energies


def has_halves(spectrum) -> bool:
    return "half.a.eig_in" in spectrum.extras


def half_rows(spectrum, energy_in: float, energy_out: float) -> list[dict]:
    """``k_in``, ``k_out``, ``rank``, ``utilization`` of each half (empty without half spectra)."""
    if not has_halves(spectrum):
        return []
    rows = []
    for half in ("a", "b"):
        k_in = metrics.k_at_energy(spectrum.extras[f"half.{half}.eig_in"], energy_in)
        k_out = metrics.k_at_energy(spectrum.extras[f"half.{half}.eig_out"], energy_out)
        rank = metrics.utilized_rank(k_in, k_out)
        rows.append({"k_in": k_in, "k_out": k_out, "rank": rank,
                     "utilization": metrics.utilization(rank, spectrum.d_in, spectrum.d_out)})
    return rows


def layer_errors(spectrum, energy_in: float, energy_out: float) -> dict[str, float]:
    """``k_in_err``, ``k_out_err``, ``utilization_err`` (half the split-half difference; NaN without halves)."""
    rows = half_rows(spectrum, energy_in, energy_out)
    names = ("k_in", "k_out", "utilization")
    if not rows:
        return {f"{n}_err": float("nan") for n in names}
    return {f"{n}_err": abs(float(rows[0][n]) - float(rows[1][n])) / 2 for n in names}


def mlu_error(result) -> float:
    """Half the difference of the two halves' MLU over the layers counted in the MLU (NaN without halves)."""
    counted = [s for s in result.spectra if s.in_mlu]
    if not counted or not all(has_halves(s) for s in counted):
        return float("nan")
    halves = [half_rows(s, result.energy_in, result.energy_out) for s in counted]
    mlu_a = float(np.mean([h[0]["utilization"] for h in halves]))
    mlu_b = float(np.mean([h[1]["utilization"] for h in halves]))
    return abs(mlu_a - mlu_b) / 2


def convergence(result) -> pd.DataFrame:
    """Per snapshot and layer: ``images, layer, k_in, k_out, rank, utilization, in_mlu`` at the result's
    energies, plus one ``layer == "MLU"`` row per snapshot (the mean over counted layers). Empty when the
    result stored no snapshots."""
    images = list(result.meta.snapshot_images)
    rows = []
    for j, seen in enumerate(images):
        utilizations = []
        for s in result.spectra:
            if "snap.eig_in" not in s.extras or s.extras["snap.eig_in"].shape[0] != len(images):
                continue
            k_in = metrics.k_at_energy(s.extras["snap.eig_in"][j], result.energy_in)
            k_out = metrics.k_at_energy(s.extras["snap.eig_out"][j], result.energy_out)
            rank = metrics.utilized_rank(k_in, k_out)
            u = metrics.utilization(rank, s.d_in, s.d_out)
            rows.append({"images": seen, "layer": s.name, "k_in": k_in, "k_out": k_out, "rank": rank,
                         "utilization": u, "in_mlu": s.in_mlu})
            if s.in_mlu:
                utilizations.append(u)
        if utilizations:
            rows.append({"images": seen, "layer": "MLU", "k_in": np.nan, "k_out": np.nan, "rank": np.nan,
                         "utilization": float(np.mean(utilizations)), "in_mlu": True})
    return pd.DataFrame(rows, columns=["images", "layer", "k_in", "k_out", "rank", "utilization", "in_mlu"])
