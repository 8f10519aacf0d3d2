"""Energy sweeps: model- and layer-level numbers at ``e_in = e_out = e`` for a grid of energies, from stored
spectra only (no data pass). Used by the Compress page's sweep chart and the Spectra page's "sweep the
energy" animation.

Definitions (DESIGN.md section 1): ``k(e)`` is the smallest k whose top-k eigenvalues hold a fraction ``e`` of
the trace; ``r = min(k_in, k_out)``; ``u = r / min(d_in, d_out)``; the mean preservation error is the plain
mean of the per-layer output-preservation errors ``tr((W-W') C_in (W-W')^T) / tr(W C_in W^T)`` over the
layers counted in the MLU (exact on :data:`~analysis.result.ENERGY_GRID`, NaN elsewhere).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from . import metrics
from .result import ENERGY_GRID, WPRIME_ENERGIES, LayerSpectrum, Result


def mean_preservation_error(result: Result) -> float:
    """Mean output-preservation error over the layers counted in the MLU at the result's energies (NaN when
    none is counted or an error is not stored for these energies)."""
    counted = result.layers[result.layers["in_mlu"]]
    return float(counted["preservation_error"].mean()) if len(counted) else float("nan")


def energy_sweep(result: Result, energies: Iterable[float] = ENERGY_GRID) -> pd.DataFrame:
    """One row per energy ``e``: ``energy``, ``kept`` (parameters kept over the counted layers), ``mlu`` and
    ``mean_error`` at ``e_in = e_out = e``."""
    rows = []
    for energy in energies:
        at = result.at_energy(energy, energy)
        rows.append({"energy": float(energy), "kept": at.parameters()["kept"], "mlu": at.mlu,
                     "mean_error": mean_preservation_error(at)})
    return pd.DataFrame(rows, columns=["energy", "kept", "mlu", "mean_error"])


def layer_energy_sweep(spectrum: LayerSpectrum, energies: Iterable[float] = WPRIME_ENERGIES) -> pd.DataFrame:
    """One row per energy for one layer: ``energy, k_in, k_out, rank, utilization, wprime_rank`` where
    ``wprime_rank`` counts the stored singular values of W' above ``1e-12`` of W's largest (NaN when W' is
    not stored at that energy). ``wprime_rank <= rank`` always: W' = P_out W P_in has rank at most r."""
    top = float(spectrum.w_singular[0]) if len(spectrum.w_singular) else 0.0
    rows = []
    for energy in energies:
        k_in = metrics.k_at_energy(spectrum.eig_in, energy)
        k_out = metrics.k_at_energy(spectrum.eig_out, energy)
        rank = metrics.utilized_rank(k_in, k_out)
        stored = spectrum.wprime_singular.get(energy)
        wprime_rank = (int(np.sum(np.asarray(stored) > 1e-12 * top)) if stored is not None and top > 0
                       else float("nan"))
        rows.append({"energy": float(energy), "k_in": k_in, "k_out": k_out, "rank": rank,
                     "utilization": metrics.utilization(rank, spectrum.d_in, spectrum.d_out),
                     "wprime_rank": wprime_rank})
    return pd.DataFrame(rows)
