"""The subspaces a model's layers use on a dataset: eigenvectors of C_in and C_out per analysed layer.

The analysis result stores eigenvalues only; compression also needs the eigenvectors ``V_in``, ``V_out``.
They come from the raw statistics (``C_in``, ``s``, ``N`` per layer), which an analysis run with
``keep_moments=True`` stores in its cache entry: a second compression of the same model and data reads
them back instead of re-reading the dataset. ``C_out`` is the exact affine formula of
:func:`analysis.spectra.layer_output_second_moment`; both are decomposed by :func:`analysis.spectra.eigen_batched`
(float64, descending).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import ResultCache
from ..engine import compute, plan
from ..models import describe_layers
from ..models.layers import LayerSpec
from ..models.registry import LoadedModel
from ..progress import ProgressCallback
from ..result import Result
from ..settings import AnalysisSettings
from ..spectra import Eigen, eigen_batched, layer_output_second_moment


@dataclass
class LayerSubspace:
    """One analysed layer of the loaded model with the eigen-decompositions of its two second moments."""

    spec: LayerSpec
    eig_in: Eigen
    eig_out: Eigen


@dataclass
class Measured:
    """A loaded model, the analysed dataset selection (with the model's transform), its analysis
    :class:`Result` and the per-layer subspaces (keyed by layer name)."""

    loaded: LoadedModel
    dataset: object
    result: Result
    subspaces: dict[str, LayerSubspace]
    from_cache: bool


def measure(
    model_id: str,
    dataset_id: str,
    samples: int | None = None,
    seed: int = 0,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    tokens_per_image: int | None = None,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
) -> Measured:
    """Analyse ``model_id`` on ``dataset_id`` keeping the raw moments, then decompose them with vectors."""
    settings = AnalysisSettings(samples=samples, seed=seed, device=device, batch_size=batch_size,
                                tokens_per_image=tokens_per_image, keep_moments=True)
    the_plan = plan(model_id, dataset_id, settings)
    cache = ResultCache(cache_dir)
    result, moments = cache.load(the_plan.key), cache.load_moments(the_plan.key)
    from_cache = result is not None and moments is not None
    if not from_cache:
        result, moments = compute(the_plan, progress=progress)
        cache.store(the_plan.key, result, moments)
    model = the_plan.loaded.model
    specs = [s for s in describe_layers(model) if s.applicable]
    c_in = {s.name: moments[f"{s.name}|C_in"] for s in specs}
    c_out = {s.name: layer_output_second_moment(s, c_in[s.name], moments[f"{s.name}|s"], int(moments[f"{s.name}|N"][0]))
             for s in specs}
    eig_device = torch.device(device) if str(device).startswith("cuda") else torch.device("cpu")
    eig_in, _ = eigen_batched(c_in, eig_device)
    eig_out, _ = eigen_batched(c_out, eig_device)
    subspaces = {s.name: LayerSubspace(s, eig_in[s.name], eig_out[s.name]) for s in specs}
    return Measured(loaded=the_plan.loaded, dataset=the_plan.dataset, result=result, subspaces=subspaces,
                    from_cache=from_cache)
