"""The result of one analysis: per-layer spectra (stored) and the table derived from them at any energies.

Everything the product shows is recomputed from what a :class:`LayerSpectrum` stores, so changing the
energies never needs the dataset again (:meth:`Result.at_energy`):

- eigenvalues of C_in and C_out (descending) -> k_in, k_out, rank, utilization, parameter counts;
- singular values of W -> stable and effective rank (the data-free baseline);
- singular values of W' at ``e_in = e_out = e`` for e in :data:`WPRIME_ENERGIES`;
- the exact preservation error on a grid of (k_out, k_in) pairs: every pair reached by an energy in
  :data:`ENERGY_GRID` (and by the energies the analysis was run at). At energies whose k pair is not in
  that grid the preservation error is reported as NaN (never interpolated); the app's energy controls
  offer the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from . import metrics, status as layer_status, uncertainty
from .defaults import DEFAULT_ENERGY
from .errors import SettingsError
from .meta import ResultMeta
from .models.layers import LayerSpec, weight_matrix
from .projection import projected_singular_values, rotated_and_errors
from .spectra import CPU_EIGH_THREADS, Eigen, cpu_threads

ENERGY_GRID: tuple[float, ...] = tuple(
    sorted(
        {0.5, 0.6, 0.7, 0.75, 0.8, 0.85}
        | {round(0.9 + 0.01 * i, 4) for i in range(10)}
        | {round(0.99 + 0.001 * i, 4) for i in range(10)}
        | {0.9995, 0.9999, 1.0}
    )
)
"""Energies at which the exact preservation error is always available."""

WPRIME_ENERGIES: tuple[float, ...] = (0.9, 0.95, 0.99, 0.995, 0.999)
"""Energies (``e_in = e_out``) at which the singular values of W' are stored."""

TABLE_COLUMNS = [
    "layer", "kind", "block", "block_label", "d_in", "d_out", "n_samples", "k_in", "k_out", "rank", "utilization",
    "params_dense", "params_factorized", "preservation_error", "w_stable_rank", "w_effective_rank",
    "energy_in", "energy_out", "in_mlu", "status", "status_reason",
    "tokens", "mean_share_in", "mean_share_out", "k_in_err", "k_out_err", "utilization_err",
]


def check_energy(value: float, label: str) -> float:
    """Energies must lie in (0, 1]."""
    try:
        energy = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{label} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < energy <= 1.0) or math.isnan(energy):
        raise SettingsError(f"{label} must be in (0, 1], got {value}")
    return energy


@dataclass
class LayerSpectrum:
    """Everything stored for one analysed layer (arrays are float64, eigenvalues descending)."""

    name: str
    kind: str
    block: int | None
    d_in: int
    d_out: int
    has_bias: bool
    in_mlu: bool
    n_samples: int
    eig_in: np.ndarray
    eig_out: np.ndarray
    w_singular: np.ndarray
    wprime_singular: dict[float, np.ndarray]
    pres_k_out: np.ndarray
    pres_k_in: np.ndarray
    pres_error: np.ndarray
    status: str = layer_status.OK
    status_reason: str = ""
    block_label: str = ""
    """``stage.block`` name of the block (``"2.3"``), empty outside blocks."""
    tokens: str = ""
    """Which of the layer's input vectors the token set kept (:mod:`analysis.tokens`), in words."""
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Further named arrays of research views (stored as ``<i>|x|<name>`` in ``spectra.npz``): half-sample
    and snapshot spectra (:mod:`analysis.uncertainty`), attention parts (:mod:`analysis.heads`), the mean
    direction's share (:mod:`analysis.centring`). Names are plain ``[a-z0-9_.|]`` strings."""

    @classmethod
    def from_statistics(
        cls,
        spec: LayerSpec,
        n_samples: int,
        eig_in: Eigen,
        eig_out: Eigen,
        extra_energies: Iterable[float] = (),
        *,
        weight: torch.Tensor | None = None,
        status: str = layer_status.OK,
        status_reason: str = "",
        tokens: str = "",
    ) -> "LayerSpectrum":
        """``weight``: the effective ``d_out x d_in`` weight the forward applies (:mod:`analysis.capture`;
        default: the module's own). ``in_mlu`` holds only for layers the adapter counts whose ``status`` is ok."""
        with cpu_threads(CPU_EIGH_THREADS):  # LAPACK's last bits depend on the thread count: fix it
            return cls._from_statistics(spec, n_samples, eig_in, eig_out, extra_energies, weight=weight,
                                        status=status, status_reason=status_reason, tokens=tokens)

    @classmethod
    def _from_statistics(cls, spec, n_samples, eig_in, eig_out, extra_energies, *, weight, status, status_reason,
                         tokens) -> "LayerSpectrum":
        if weight is None:
            weight = weight_matrix(spec.module).detach().cpu()
        w_singular = torch.linalg.svdvals(weight.to(torch.float64)).numpy()
        lam_in, lam_out = eig_in.values.numpy(), eig_out.values.numpy()
        energies = sorted(set(ENERGY_GRID) | set(extra_energies))
        k_in_set = np.unique([metrics.k_at_energy(lam_in, e) for e in energies])
        k_out_set = np.unique([metrics.k_at_energy(lam_out, e) for e in energies])
        rotated, table = rotated_and_errors(weight, eig_in, eig_out, k_out_set, k_in_set)
        wprime = {
            e: projected_singular_values(rotated, metrics.k_at_energy(lam_out, e), metrics.k_at_energy(lam_in, e))
            for e in WPRIME_ENERGIES
        }
        return cls(
            name=spec.name, kind=spec.kind, block=spec.block, d_in=spec.d_in, d_out=spec.d_out,
            has_bias=spec.has_bias, in_mlu=spec.in_mlu and status == layer_status.OK, n_samples=n_samples,
            eig_in=lam_in, eig_out=lam_out, w_singular=w_singular, wprime_singular=wprime,
            pres_k_out=k_out_set, pres_k_in=k_in_set, pres_error=table, status=status, status_reason=status_reason,
            block_label=spec.block_label, tokens=tokens,
        )

    def row(self, energy_in: float, energy_out: float) -> dict:
        """The table row (README, section Method) at the given energies."""
        undefined = layer_status.UNDEFINED_K.get(self.status, ())
        k_in = None if "k_in" in undefined else metrics.k_at_energy(self.eig_in, energy_in)
        k_out = None if "k_out" in undefined else metrics.k_at_energy(self.eig_out, energy_out)
        if undefined:  # zero input or output energy: no k, so no rank, utilization or factorization
            return self._row(energy_in, energy_out, k_in, k_out, None, float("nan"),
                             metrics.dense_params(self.d_in, self.d_out, self.has_bias), float("nan"))
        rank = metrics.utilized_rank(k_in, k_out)
        return self._row(energy_in, energy_out, k_in, k_out, rank, metrics.utilization(rank, self.d_in, self.d_out),
                         metrics.factorized_params(rank, self.d_in, self.d_out, self.has_bias),
                         self.preservation_error(k_out, k_in))

    def _row(self, energy_in: float, energy_out: float, k_in: int | None, k_out: int | None, rank: int | None,
             utilization: float, params_factorized: int, preservation_error: float) -> dict:
        return {
            "layer": self.name,
            "kind": self.kind,
            "block": self.block,
            "block_label": self.block_label,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_samples": self.n_samples,
            "k_in": k_in,
            "k_out": k_out,
            "rank": rank,
            "utilization": utilization,
            "params_dense": metrics.dense_params(self.d_in, self.d_out, self.has_bias),
            "params_factorized": params_factorized,
            "preservation_error": preservation_error,
            "w_stable_rank": metrics.stable_rank(self.w_singular),
            "w_effective_rank": metrics.effective_rank(self.w_singular),
            "energy_in": energy_in,
            "energy_out": energy_out,
            "in_mlu": self.in_mlu,
            "status": self.status,
            "status_reason": self.status_reason,
            "tokens": self.tokens,
            "mean_share_in": self._scalar("mean_share_in"),
            "mean_share_out": self._scalar("mean_share_out"),
            **uncertainty.layer_errors(self, energy_in, energy_out),
        }

    def _scalar(self, name: str) -> float:
        value = self.extras.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size else float("nan")

    def preservation_error(self, k_out: int, k_in: int) -> float:
        """Exact error for a stored (k_out, k_in) pair, NaN otherwise (see the module docstring)."""
        a = np.searchsorted(self.pres_k_out, k_out)
        b = np.searchsorted(self.pres_k_in, k_in)
        if a < len(self.pres_k_out) and b < len(self.pres_k_in):
            if self.pres_k_out[a] == k_out and self.pres_k_in[b] == k_in:
                return float(self.pres_error[a, b])
        return float("nan")


@dataclass
class Result:
    """One analysis at one pair of energies. ``meta`` holds ids, fingerprints, settings and timings."""

    meta: ResultMeta
    spectra: list[LayerSpectrum]
    not_applicable: list[dict] = field(default_factory=list)
    energy_in: float = DEFAULT_ENERGY
    energy_out: float = DEFAULT_ENERGY
    _table: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str | None:
        return self.meta.key

    @property
    def layers(self) -> pd.DataFrame:
        """One row per analysed layer, columns :data:`TABLE_COLUMNS`, in model order."""
        if self._table is None:
            rows = [s.row(self.energy_in, self.energy_out) for s in self.spectra]
            table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
            table["block"] = table["block"].astype("Int64")
            for column in ("k_in", "k_out", "rank"):  # undefined k (zero energy) is <NA>, never a number
                if table[column].isna().any():
                    table[column] = table[column].astype("Int64")
            self._table = table
        return self._table

    @property
    def mlu(self) -> float:
        """Mean layer utilization over the layers counted in MLU (flagged layers excluded)."""
        table = self.layers
        counted = table[table["in_mlu"]]
        return float(counted["utilization"].mean()) if len(counted) else float("nan")

    @property
    def mlu_err(self) -> float:
        """Split-half error bar of the MLU (:func:`analysis.uncertainty.mlu_error`); NaN without halves."""
        return uncertainty.mlu_error(self)

    def parameters(self, counted_only: bool = True) -> dict:
        """Model-level parameter counts over the analysed layers: dense, factorized and kept fraction."""
        table = self.layers[self.layers["in_mlu"]] if counted_only else self.layers
        dense = int(table["params_dense"].sum())
        factorized = int(table["params_factorized"].sum())
        return {"params_dense": dense, "params_factorized": factorized, "kept": metrics.kept_fraction(factorized, dense)}

    def at_energy(self, energy_in: float, energy_out: float | None = None) -> "Result":
        """The same result re-thresholded from stored eigenvalues (no data pass)."""
        e_in = check_energy(energy_in, "energy_in")
        e_out = check_energy(e_in if energy_out is None else energy_out, "energy_out")
        return replace(self, energy_in=e_in, energy_out=e_out, _table=None)

    @property
    def warnings(self) -> list[str]:
        """The data note (why the result is not in the cache) when there is one, why no layer counts when the
        model has no block (:mod:`analysis.models.blocks`), then one line per flagged status
        (:mod:`analysis.status`) naming the layers withheld from the MLU."""
        notes = [self.meta.data_note] if self.meta.data_note else []
        if self.meta.blocks_reason:
            notes.append(f"{self.meta.model_id or 'the model'}: {self.meta.blocks_reason}")
        return notes + layer_status.status_warnings([(s.name, s.status, s.status_reason) for s in self.spectra])

    def layer(self, name: str) -> LayerSpectrum:
        for spectrum in self.spectra:
            if spectrum.name == name:
                return spectrum
        raise KeyError(f"no analysed layer named {name!r}")

    def status_counts(self) -> dict[str, int]:
        """Layers per status (:mod:`analysis.status`), ``ok`` first, then the layers not analysed."""
        counts: dict[str, int] = {layer_status.OK: 0}
        for spectrum in self.spectra:
            counts[spectrum.status] = counts.get(spectrum.status, 0) + 1
        if self.not_applicable:
            counts["not analysed"] = len(self.not_applicable)
        return counts

    def __repr__(self) -> str:
        error = "" if math.isnan(self.mlu_err) else f" ± {self.mlu_err:.3f}"
        return (f"Result(model={self.meta.model_id!r}, data={self.meta.dataset_id!r}, images={self.meta.n_images}, "
                f"mlu={self.mlu:.3f}{error}, energies=({self.energy_in:g}, {self.energy_out:g}), key={self.key!r})")

    def _repr_html_(self) -> str:
        """A notebook's view: the MLU with its split-half error, model, data, energies, layers per status, the
        parameters kept at the utilized rank, and the cache key (or why there is none)."""
        from html import escape

        meta, params = self.meta, self.parameters()
        error = "" if math.isnan(self.mlu_err) else f" &plusmn; {100 * self.mlu_err:.1f} pp"
        counted = int(self.layers["in_mlu"].sum())
        statuses = ", ".join(f"{count} {escape(name)}" for name, count in self.status_counts().items())
        rows = [
            ("model", f"{escape(meta.model_id)}<br><small>{escape(meta.model_description)}</small>"),
            ("data", f"{escape(meta.dataset_id)}, {meta.n_images:,} images<br>"
                     f"<small>{escape(meta.dataset_description)}</small>"),
            ("energies", f"e_in {self.energy_in:g}, e_out {self.energy_out:g}"),
            ("layers", f"{statuses}; {counted} counted in the MLU"),
            ("parameters", f"{params['params_factorized']:,} of {params['params_dense']:,} kept at the utilized "
                           f"rank ({params['kept']:.1%})"),
            ("key", escape(self.key) if self.key else f"not stored: {escape(meta.data_note or 'no cache key')}"),
        ]
        body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{name}</th><td style='text-align:left'>"
                       f"{value}</td></tr>" for name, value in rows)
        warnings = "".join(f"<li>{escape(line)}</li>" for line in self.warnings)
        return (f"<div><div style='font-size:1.3em'><b>MLU {100 * self.mlu:.1f}%</b>{error}</div>"
                f"<table>{body}</table>" + (f"<ul style='color:#a15c00'>{warnings}</ul>" if warnings else "")
                + "</div>")

    def summary(self) -> dict:
        params = self.parameters()
        return {
            "key": self.key,
            "model": self.meta.model_id,
            "dataset": self.meta.dataset_id,
            "images": self.meta.n_images,
            "energy_in": self.energy_in,
            "energy_out": self.energy_out,
            "mlu": self.mlu,
            "mlu_err": self.mlu_err,
            "layers_in_mlu": int(self.layers["in_mlu"].sum()),
            "layers_not_applicable": len(self.not_applicable),
            "layers_flagged": int(sum(s.status in layer_status.FLAGGED_STATUSES for s in self.spectra)),
            **params,
        }
