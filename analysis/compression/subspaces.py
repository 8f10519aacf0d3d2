"""The subspaces a model's layers use on a dataset: eigenvectors of C_in and C_out per analysed layer.

The analysis result stores eigenvalues only; compression also needs the eigenvectors ``V_in``, ``V_out``.
They come from the raw statistics (``C_in``, ``s``, ``N`` per layer), which an analysis run with
``keep_moments=True`` stores in its cache entry: a second compression of the same model and data reads
them back instead of re-reading the dataset. ``C_out`` is the exact affine formula of
:func:`analysis.spectra.output_second_moment` with the *effective* weight and bias the forward applies; both
are decomposed by :func:`analysis.spectra.layer_eigen` (float64, descending), as the analysis does.

The effective weights (weight standardisation, parametrizations, a bias built inside an attention block)
come from :func:`analysis.capture.discover`: one forward of the model on a couple of the analysed images,
which also tells whether a layer can be swapped for a thin pair: only when its own forward is how the model
uses it (a weight used through ``F.linear`` by another module, as BEiT's qkv, stays dense).

Any cached analysis gets its subspaces the same way (:func:`checked_plan`, :func:`measure_plan`): the analysis
with the same settings and the moments kept (:func:`moments_key`, from its stored key parts: its own key when
it kept them) is read from the cache, or computed once and stored; an analysis that planning now would not
reproduce (other weights, data or code) is refused. A centred analysis decomposes ``C_in - s s^T / N`` and ``W (C_in - s s^T / N) W^T``
from the stored raw (uncentred) sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from ..capture import LayerFinding, discover
from ..cache import ResultCache, content_key
from ..data import make_loader
from ..engine import Plan, compute, plan
from ..errors import AnalysisError
from ..models import describe_layers
from ..models.layers import LayerSpec
from ..models.registry import LoadedModel
from ..progress import ProgressCallback
from ..result import Result
from ..settings import AnalysisSettings
from ..spectra import AffineLayer, Eigen, SpectraProgress, layer_eigen


@dataclass
class LayerSubspace:
    """One analysed layer of the loaded model with the eigen-decompositions of its two second moments."""

    spec: LayerSpec
    eig_in: Eigen
    eig_out: Eigen
    weight: torch.Tensor | None = None
    """The effective ``d_out x d_in`` weight (float64); None: the module's own."""
    bias: torch.Tensor | None | str = "module"
    """The effective bias; ``"module"``: the module's own."""
    counted: bool | None = None
    """Whether the layer counts (its analysis status is ok and the adapter counts it); None: ``spec.in_mlu``."""
    swappable: bool = True
    """Whether the module can be replaced by a thin pair (its own forward is how the model uses it)."""
    mean: torch.Tensor | None = None
    """The dataset's mean input ``s / N`` (float64) when the decompositions are of centred moments, else None."""

    @property
    def is_counted(self) -> bool:
        return self.spec.in_mlu if self.counted is None else self.counted


@dataclass
class Measured:
    """A loaded model, the analysed dataset selection (with the model's transform), its analysis
    :class:`Result` and the per-layer subspaces (keyed by layer name)."""

    loaded: LoadedModel
    dataset: object
    result: Result
    subspaces: dict[str, LayerSubspace]
    from_cache: bool


def measure_settings(samples: int | None = None, seed: int = 0, *, device: str = "cpu", batch_size: int | None = None,
                     tokens_per_image: int | None = None) -> AnalysisSettings:
    """The analysis settings :func:`measure` uses (the raw moments kept), hence its cache key."""
    return AnalysisSettings(samples=samples, seed=seed, device=device, batch_size=batch_size,
                            tokens_per_image=tokens_per_image, keep_moments=True)


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
    settings = measure_settings(samples, seed, device=device, batch_size=batch_size,
                                tokens_per_image=tokens_per_image)
    return measure_plan(plan(model_id, dataset_id, settings), cache_dir=cache_dir, progress=progress)


class MomentsMissing(AnalysisError):
    """The raw moments an analysis needs for its eigenvectors are not stored, and computing them was not asked."""


def measure_plan(
    the_plan: Plan,
    *,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    compute_missing: bool = True,
    eigen_progress: SpectraProgress | None = None,
) -> Measured:
    """The analysis ``the_plan`` (its settings must keep the moments) read from the cache, or computed and
    stored when absent (unless ``compute_missing`` is False: :class:`MomentsMissing`), with its subspaces
    (``eigen_progress``: see :func:`layer_subspaces`)."""
    cache = ResultCache(cache_dir)
    result, moments = cache.load(the_plan.key), cache.load_moments(the_plan.key)
    from_cache = result is not None and moments is not None
    if not from_cache:
        if not compute_missing:
            raise MomentsMissing(
                f"the eigenvectors of {the_plan.loaded.model_id} on {the_plan.dataset.dataset_id} need the raw "
                f"moments (analysis {the_plan.key}, run with keep_moments), which are not stored yet")
        result, moments = compute(the_plan, progress=progress)
        cache.store(the_plan.key, result, moments)
    subspaces = layer_subspaces(the_plan.loaded.model, the_plan.dataset, result, moments,
                                device=the_plan.settings.device, centred=the_plan.settings.centred,
                                progress=eigen_progress)
    return Measured(loaded=the_plan.loaded, dataset=the_plan.dataset, result=result, subspaces=subspaces,
                    from_cache=from_cache)


def moments_settings(result: Result) -> AnalysisSettings:
    """The settings of ``result``'s analysis with the raw moments kept: the analysis whose stored moments
    give ``result``'s subspaces (``result`` itself when it kept them). Read from its key parts; settings an
    older entry does not record take the values it was computed with (all tokens, uncentred, no error bars).
    The device is the one it ran on when this machine has it, else the CPU (the device is not in the key)."""
    parts = result.meta.key_parts or {}
    layers = parts.get("layers")
    device = result.meta.device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    return AnalysisSettings(
        samples=parts.get("samples", result.meta.samples), seed=parts.get("seed", result.meta.seed),
        tokens_per_image=parts.get("tokens_per_image", result.meta.tokens_per_image),
        precision=parts.get("precision", result.meta.precision), keep_moments=True,
        max_width=parts.get("max_width"), layers=tuple(layers) if layers else None,
        token_set=parts.get("token_set", "all"), centred=bool(parts.get("centred", False)),
        uncertainty=bool(parts.get("uncertainty", False)), device=device,
        energy_in=result.energy_in, energy_out=result.energy_out,
    )


def moments_key(result: Result) -> str:
    """The cache key of the analysis whose stored moments give ``result``'s subspaces (``result``'s own when it
    kept them), from its recorded key parts: no model is loaded. It is :func:`result_plan`'s key as long as the
    code, weights and data are those ``result`` was made with (:func:`checked_plan` verifies it)."""
    parts = dict(result.meta.key_parts or {})
    if not parts:  # an entry without key parts: plan it
        return result_plan(result).key
    if parts.get("keep_moments"):
        return result.key
    parts["keep_moments"] = True
    return content_key(parts)


def checked_plan(result: Result) -> Plan:
    """:func:`result_plan`, refused (:class:`AnalysisError`) when its key is not :func:`moments_key`: the model,
    its weights, the data or the code version differ from those ``result`` was made with, so subspaces computed
    now would not be ``result``'s."""
    the_plan = result_plan(result)
    expected = moments_key(result)
    if the_plan.key != expected:
        changed = [name for name in ("code", "weights", "dataset", "model_id", "dataset_id", "input")
                   if the_plan.key_parts.get(name) != (result.meta.key_parts or {}).get(name)]
        raise AnalysisError(
            f"analysis {result.key} cannot be reproduced here ({', '.join(changed) or 'its settings'} differ from "
            f"when it was made); run it again to get its subspaces")
    return the_plan


def result_plan(result: Result) -> Plan:
    """:func:`analysis.engine.plan` of :func:`moments_settings` (loads the model and opens the dataset
    selection ``result`` analysed; reads no image). Its key is ``result``'s own when ``result`` kept its moments."""
    return plan(result.meta.model_id, result.meta.dataset_id, moments_settings(result))


def layer_subspaces(model, dataset, result: Result | None, moments: dict[str, torch.Tensor], *, device: str = "cpu",
                    centred: bool = False, progress: SpectraProgress | None = None) -> dict[str, LayerSubspace]:
    """Eigen-decompositions of ``C_in`` and ``C_out`` of every applicable layer of ``model`` from the raw
    ``moments`` (``{"<layer>|C_in" | "<layer>|s" | "<layer>|N": tensor}``), with the effective weights from a
    forward on ``dataset``'s first images. ``centred``: decompose the centred ``C_in - s s^T / N`` and the
    output moment of the centred inputs, ``W (C_in - s s^T / N) W^T`` (the bias drops out), as a centred
    analysis does. ``result`` says which layers count (its statuses); None: the adapter's rule alone.
    ``dataset`` yields ``(image, label)`` pairs. Both moments are decomposed by
    :func:`analysis.spectra.layer_eigen`, as the analysis does (``C_out`` through the ``d_in + 1`` problem when
    ``d_out`` is larger), calling ``progress(layers_done, layers_total, elapsed_s)``."""
    specs = [s for s in describe_layers(model) if s.applicable and f"{s.name}|C_in" in moments]
    findings = _discover(model, specs, dataset)
    effective = {s.name: effective_weight(s, findings.get(s.name)) for s in specs}
    affine, means = {}, {}
    for s in specs:
        weight, bias = effective[s.name]
        column_sum, count = moments[f"{s.name}|s"].to(torch.float64), int(moments[f"{s.name}|N"][0])
        matrix = moments[f"{s.name}|C_in"].to(torch.float64)
        if centred:
            means[s.name] = column_sum / max(count, 1)
            if count > 0:
                matrix = matrix - torch.outer(column_sum, column_sum) / count
            column_sum, bias = torch.zeros_like(column_sum), None
        affine[s.name] = AffineLayer(weight, bias, matrix, column_sum, count)
    eig_device = torch.device(device) if str(device).startswith("cuda") else torch.device("cpu")
    eig_in, eig_out, _ = layer_eigen(affine, eig_device, progress=progress)
    counted = {s.name: s.in_mlu for s in result.spectra} if result is not None else None
    return {
        s.name: LayerSubspace(s, eig_in[s.name], eig_out[s.name], weight=effective[s.name][0], bias=effective[s.name][1],
                              counted=counted.get(s.name, False) if counted is not None else None, swappable=swappable(s, findings.get(s.name)),
                              mean=means.get(s.name))
        for s in specs
    }


def _discover(model, specs: list[LayerSpec], dataset) -> dict[str, LayerFinding]:
    """:func:`analysis.capture.discover` on the first two images of ``dataset`` (on the CPU)."""
    if len(dataset) == 0:
        return {}
    first = Subset(dataset, range(min(2, len(dataset))))  # one batch: the loader starts no workers
    batch, _ = next(iter(make_loader(first, batch_size=len(first))))
    model.cpu().eval()
    return discover(model, specs, batch)


def effective_weight(spec: LayerSpec, finding: LayerFinding | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Effective ``(W, b)`` (float64, CPU) of one layer (:func:`analysis.capture.effective_parameters`)."""
    from ..capture import effective_parameters

    return effective_parameters(spec, finding)


def swappable(spec: LayerSpec, finding: LayerFinding | None) -> bool:
    """Whether replacing the module by a thin pair reproduces what the model computes with it: every call
    came from the module's own forward, the affine model holds, the input reaching the call is the forward's
    own (or padded by timm's dynamic "same" padding, which the thin pair keeps) and a bias is added exactly
    when the module has one."""
    if finding is None or finding.calls == 0 or finding.functional or finding.problem is not None:
        return False
    module = spec.module
    if finding.input_transformed and not (type(module).__name__ == "Conv2dSame" or getattr(module, "same_pad", False)
                                          or getattr(module, "padding_mode", "zeros") != "zeros"):
        return False
    return (finding.bias is not None) == spec.has_bias
