"""Per-layer ranks at chosen energies (or for a parameter budget), and the factorized model.

For each layer counted in the MLU (the Linear/Conv layers inside the blocks; patch embedding, classifier
head and grouped convolutions stay dense), at energies ``(e_in, e_out)``:

    k_in = k(e_in) of C_in,  k_out = k(e_out) of C_out,  r = min(k_in, k_out),

and the layer is replaced by the thin pair ``L R = W' = P_out W P_in`` (:func:`analysis.projection.factorize`)
only when that saves parameters, ``r (d_in + d_out) < d_in d_out``; otherwise it keeps its original dense
weight (projecting without saving would only lose accuracy). Model-level "parameters kept" is
``sum params_kept / sum params_dense`` over the counted layers, the same count as the analysis table's
``params_factorized`` column.

``W`` is the effective weight the forward applies (:mod:`analysis.capture`): a weight-standardised
convolution becomes a pair of plain convolutions carrying it. Only layers whose analysis status is ok are
counted; a counted layer that cannot be swapped for a thin pair (its weight is used through ``F.linear`` by
another module, as BEiT's fused qkv) stays dense and keeps all its parameters.

Budget mode: "parameters kept" is non-decreasing in the energy ``e = e_in = e_out``, so the largest energy on a
fine grid whose count fits the budget is the least lossy choice with one energy for every layer.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from .. import metrics
from ..errors import SettingsError
from ..models import weight_matrix
from ..projection import factorize, rotated_and_errors
from ..result import ENERGY_GRID, check_energy
from .thin_layers import factorized_layer, replace_module
from .subspaces import LayerSubspace

BUDGET_ENERGIES: tuple[float, ...] = tuple(
    sorted(set(ENERGY_GRID) | {round(float(e), 5) for e in np.arange(0.05, 1.0, 0.0005)} | {0.99995, 0.99999, 1.0})
)
"""Candidate energies for budget mode (every 0.0005 from 0.05, plus the analysis grid)."""


@dataclass(frozen=True)
class LayerRank:
    """The compression decision for one counted layer."""

    layer: str
    kind: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int
    rank: int
    factorized: bool
    params_dense: int
    params_kept: int

    def as_dict(self) -> dict:
        return asdict(self)


def choose_ranks(subspaces: dict[str, LayerSubspace], energy_in: float, energy_out: float) -> list[LayerRank]:
    """The decision for every counted layer at ``(energy_in, energy_out)``, in model order."""
    e_in, e_out = check_energy(energy_in, "energy_in"), check_energy(energy_out, "energy_out")
    ranks = []
    for name, sub in subspaces.items():
        spec = sub.spec
        if not sub.is_counted:
            continue
        k_in = metrics.k_at_energy(sub.eig_in.values.numpy(), e_in)
        k_out = metrics.k_at_energy(sub.eig_out.values.numpy(), e_out)
        rank = metrics.utilized_rank(k_in, k_out)
        ranks.append(LayerRank(
            layer=name, kind=spec.kind, d_in=spec.d_in, d_out=spec.d_out, k_in=k_in, k_out=k_out, rank=rank,
            factorized=sub.swappable and rank * (spec.d_in + spec.d_out) < spec.d_in * spec.d_out,
            params_dense=metrics.dense_params(spec.d_in, spec.d_out, spec.has_bias),
            params_kept=(metrics.factorized_params(rank, spec.d_in, spec.d_out, spec.has_bias) if sub.swappable
                         else metrics.dense_params(spec.d_in, spec.d_out, spec.has_bias)),
        ))
    return ranks


def kept_fraction(ranks: list[LayerRank]) -> float:
    """:func:`analysis.metrics.kept_fraction` of these decisions (the one definition of "parameters kept")."""
    return metrics.kept_fraction(sum(r.params_kept for r in ranks), sum(r.params_dense for r in ranks))


def energy_for_budget(subspaces: dict[str, LayerSubspace], keep: float) -> float:
    """The largest ``e`` in :data:`BUDGET_ENERGIES` with ``kept_fraction(choose_ranks(e, e)) <= keep``."""
    try:
        keep = float(keep)
    except (TypeError, ValueError):
        raise SettingsError(f"--keep must be a fraction in (0, 1], got {keep!r}") from None
    if not (0.0 < keep <= 1.0):
        raise SettingsError(f"--keep must be a fraction in (0, 1], got {keep}")

    def kept_at(index: int) -> float:
        energy = BUDGET_ENERGIES[index]
        return kept_fraction(choose_ranks(subspaces, energy, energy))

    floor = kept_at(0)
    if floor > keep:
        raise SettingsError(
            f"cannot keep only {keep:.1%} of the parameters: even at energy {BUDGET_ENERGIES[0]} the layers keep "
            f"{floor:.1%}"
        )
    lo, hi = 0, len(BUDGET_ENERGIES) - 1
    while lo < hi:  # the largest index whose kept fraction fits (monotone in e)
        mid = (lo + hi + 1) // 2
        if kept_at(mid) <= keep:
            lo = mid
        else:
            hi = mid - 1
    return BUDGET_ENERGIES[lo]


def preservation_error(sub: LayerSubspace, k_in: int, k_out: int) -> float:
    """Exact ``||(W - W') X||^2 / ||W X||^2`` on the analysed data (see :mod:`analysis.projection`)."""
    _rotated, table = rotated_and_errors(_weight(sub), sub.eig_in, sub.eig_out, np.array([k_out]), np.array([k_in]))
    return float(table[0, 0])


def _weight(sub: LayerSubspace):
    """The effective ``d_out x d_in`` weight of a layer (the module's own when none was captured)."""
    return sub.weight if sub.weight is not None else weight_matrix(sub.spec.module).detach().cpu()


def factorize_model(model: nn.Module, subspaces: dict[str, LayerSubspace], ranks: list[LayerRank]) -> nn.Module:
    """A deep copy of ``model`` with every ``factorized`` layer replaced by its thin pair (float32, CPU)."""
    compressed = copy.deepcopy(model).cpu()
    for decision in ranks:
        if not decision.factorized:
            continue
        sub = subspaces[decision.layer]
        original = compressed.get_submodule(decision.layer)
        weight = sub.weight if sub.weight is not None else weight_matrix(original).detach()
        left, right = factorize(weight, sub.eig_in.vectors, sub.eig_out.vectors,
                                decision.k_in, decision.k_out, rank=decision.rank)
        replace_module(compressed, decision.layer, factorized_layer(original, left, right, decision.kind, sub.bias))
    return compressed.eval()


def rank_map(ranks: list[LayerRank]) -> dict[str, int]:
    """``{layer: rank}`` for the factorized layers (what an exported file needs to be rebuilt)."""
    return {r.layer: r.rank for r in ranks if r.factorized}
