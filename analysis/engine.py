"""The analysis pipeline: model -> data -> statistics -> spectra -> metrics -> cache.

:func:`analyze` is the public entry point (README, section Python). A cache hit reads no data: the content
key is built from the model's weight fingerprint, the dataset's fingerprint (source identity and selected
indices), the settings that change statistics and the schema version.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch.utils.data import Subset

import kernels

from . import __version__, distributed, heads
from .cache import ResultCache, content_key
from .data import load_dataset, make_loader
from .errors import AnalysisError, ForwardError
from .cost import guard_plan
from .meta import ResultMeta, Timings
from .models import describe_layers, load as load_loaded_model
from .models.layers import Coverage, LayerSpec, coverage, select_layers
from .partial import PartialStore
from .progress import Progress, ProgressCallback, StageClock
from .result import LayerSpectrum, Result
from .settings import PRECISIONS, AnalysisSettings
from .capture import effective_parameters, layer_status
from .spectra import AffineLayer, layer_eigen
from .statistics import LayerMoments, MomentCollector

__all__ = ["Cancelled", "Plan", "Progress", "ProgressCallback", "analyze", "compute", "plan", "run_plan"]


class Cancelled(AnalysisError):
    """The caller asked the analysis to stop."""


@dataclass
class Plan:
    """Everything decided before the data pass: what to load, and the cache key."""

    loaded: object
    dataset: object
    settings: AnalysisSettings
    key: str
    key_parts: dict


def plan(model_id: str, dataset_id: str, settings: AnalysisSettings) -> Plan:
    """Validate settings, load the model and dataset handle (no images read), and compute the key."""
    settings = settings.validated()
    loaded = load_loaded_model(model_id)
    dataset = load_dataset(dataset_id, data_config=loaded.data_config, samples=settings.samples, seed=settings.seed)
    parts = {
        "code": __version__,
        "model_id": loaded.model_id,
        "weights": loaded.fingerprint,
        "dataset_id": dataset.dataset_id,
        "dataset": dataset.fingerprint,
        "input": list(loaded.data_config.get("input_size", ())),
        **settings.key_parts(),
    }
    return Plan(loaded=loaded, dataset=dataset, settings=settings, key=content_key(parts), key_parts=parts)


def analyze(
    model: str,
    dataset: str,
    samples: int | None = None,
    seed: int = 0,
    energy_in: float = 0.99,
    energy_out: float = 0.99,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    tokens_per_image: int | None = None,
    precision: str = "fp32",
    keep_moments: bool = False,
    max_width: int | None = None,
    layers: str | tuple[str, ...] | None = None,
    token_set: str = "all",
    centred: bool = False,
    uncertainty: bool = True,
    use_cache: bool = True,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Analyse ``model`` on ``dataset`` and return the :class:`Result` at the given energies."""
    settings = AnalysisSettings(
        samples=samples, seed=seed, energy_in=energy_in, energy_out=energy_out, device=device,
        batch_size=batch_size, tokens_per_image=tokens_per_image, precision=precision, keep_moments=keep_moments,
        max_width=max_width, layers=layers, token_set=token_set, centred=centred, uncertainty=uncertainty,
    )
    return run_plan(plan(model, dataset, settings), use_cache=use_cache, cache_dir=cache_dir,
                    progress=progress, should_stop=should_stop)


def run_plan(
    the_plan: Plan,
    *,
    use_cache: bool = True,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Return the cached result of ``the_plan`` or compute and store it.

    Partial statistics are checkpointed under the cache root while computing (:mod:`analysis.partial`), so
    a killed run started again resumes. Under torchrun (:mod:`analysis.distributed`) rank 0 decides about the
    cache and stores the entry; every rank returns the same result.
    """
    settings = the_plan.settings
    cache = ResultCache(cache_dir)
    rank, world_size = distributed.world()
    if use_cache:
        cached = cache.load(the_plan.key) if rank == 0 else None
        cached = distributed.broadcast_from_rank0(cached)
        if cached is not None:
            return cached.at_energy(settings.energy_in, settings.energy_out)
    guard_plan(the_plan)  # refuse a run that cannot fit before any data is read
    partial = None
    if use_cache:
        if rank == 0:
            cache.check_writable()
        partial = PartialStore(cache.root, the_plan.key, settings.effective_batch_size(), rank, world_size)
    result, moments = compute(the_plan, progress=progress, should_stop=should_stop, partial=partial)
    if use_cache and rank == 0:
        cache.store(the_plan.key, result, moments if settings.keep_moments else None)
    if partial is not None:
        partial.clear()
    return result


def compute(
    the_plan: Plan,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    partial: PartialStore | None = None,
) -> tuple[Result, dict[str, torch.Tensor]]:
    """The data pass and everything after it (no cache involved; ``partial`` checkpoints the running sums).

    Steps: :func:`stream_statistics` (this process's shard) -> :func:`merge_across_processes` (under torchrun)
    -> :func:`compute_spectra` (rank 0) -> :func:`result_meta`. Every rank returns rank 0's result; the raw
    moments (``{"<layer>|C_in" | "<layer>|s" | "<layer>|N": tensor}``) are only returned on rank 0."""
    device = torch.device(the_plan.settings.device)
    model = the_plan.loaded.model.to(device)
    try:
        all_specs = describe_layers(model)
        specs, deselected = select_layers(all_specs, the_plan.settings.max_width, the_plan.settings.layers)
        applicable = [s for s in specs if s.applicable]
        streamed = stream_statistics(the_plan, model, applicable, device, progress=progress,
                                     should_stop=should_stop, partial=partial)
        streamed = merge_across_processes(streamed, device)
        if distributed.world()[0] != 0:
            return distributed.broadcast_from_rank0(None), {}
        attention = heads.attention_layouts(model, applicable, the_plan.loaded.data_config.get("input_size"), device)
        spectra, timings = compute_spectra(applicable, streamed, device, the_plan.settings, progress=progress,
                                           attention=attention)
    finally:
        model.to("cpu")
    result = Result(meta=result_meta(the_plan, streamed, timings, coverage(model, applicable)), spectra=spectra,
                    not_applicable=not_applicable_layers(specs, deselected, all_specs),
                    energy_in=the_plan.settings.energy_in, energy_out=the_plan.settings.energy_out)
    return distributed.broadcast_from_rank0(result), raw_moments(streamed.moments)


@dataclass
class Streamed:
    """The statistics of one data pass: per-layer moments, images seen, where it resumed, seconds spent."""

    collector: MomentCollector
    moments: dict[str, LayerMoments]
    images: int
    first_batch: int
    seconds: float


def stream_statistics(
    the_plan: Plan,
    model: torch.nn.Module,
    applicable: list[LayerSpec],
    device: torch.device,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    partial: PartialStore | None = None,
) -> Streamed:
    """Run ``model`` over this process's shard, summing each applicable layer's input moments.

    Resumes from ``partial``'s checkpoint when there is one; a checkpoint of other layers or shapes is
    discarded and the pass starts from the first batch. Moments are per shard (not yet merged)."""
    settings, dataset = the_plan.settings, the_plan.dataset
    rank, world_size = distributed.world()
    shard = distributed.shard(dataset, rank, world_size)
    batch_size = settings.effective_batch_size()
    while True:
        resumed = partial.load() if partial is not None else None
        collector = MomentCollector(applicable, device, tokens_per_image=settings.tokens_per_image, seed=settings.seed)
        if resumed is not None:
            try:
                collector.load_state(resumed.state, batches_done=resumed.batches_done)
            except (KeyError, RuntimeError):  # a checkpoint of other layers or shapes: start over
                partial.clear()
                continue
        break
    first_batch = resumed.batches_done if resumed is not None else 0
    images = resumed.images_done if resumed is not None else 0
    loader = make_loader(Subset(shard, range(min(len(shard), first_batch * batch_size), len(shard))),
                         batch_size=batch_size, device=device)
    clock = StageClock(progress, "statistics", total=-(-len(shard) // batch_size), items_total=len(shard))
    autocast_dtype = PRECISIONS[settings.precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    with collector, torch.inference_mode(), autocast, kernels.layer_precision(autocast_dtype):
        for batch_index, (batch, _labels) in enumerate(loader, start=first_batch):
            if should_stop is not None and should_stop():
                raise Cancelled("analysis cancelled")
            _forward(model, batch.to(device, non_blocking=True), the_plan)
            collector.next_batch()
            images += batch.shape[0]
            if partial is not None and partial.due(batch_index + 1):
                partial.save(collector.state(), batch_index + 1, images)
            clock.report(batch_index + 1, images)
    collector.next_batch()  # final finiteness check of the running sums
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Streamed(collector, {}, images, first_batch, time.perf_counter() - clock.start)


def _forward(model: torch.nn.Module, batch: torch.Tensor, the_plan: Plan) -> None:
    """One forward pass; a failure of the model on this input becomes a one-line :class:`ForwardError`."""
    try:
        model(batch)
    except (RuntimeError, AssertionError, ValueError) as exc:
        if isinstance(exc, AnalysisError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForwardError(
            f"{the_plan.loaded.model_id} failed on a batch of {the_plan.dataset.dataset_id} "
            f"(input {tuple(batch.shape)}): {reason}"
        ) from exc


def merge_across_processes(streamed: Streamed, device: torch.device) -> Streamed:
    """Sum every rank's running sums and image count (a no-op in one process); then read the moments."""
    start = time.perf_counter()
    images = streamed.images
    if distributed.world()[1] > 1:
        streamed.collector.merge_across(distributed.all_reduce_sum)
        images = distributed.all_reduce_int(images, device)
    moments = streamed.collector.moments()
    return replace(streamed, moments=moments, images=images, seconds=streamed.seconds + time.perf_counter() - start)


def compute_spectra(
    applicable: list[LayerSpec], streamed: Streamed, device: torch.device, settings: AnalysisSettings,
    progress: ProgressCallback | None = None, attention: heads.AttentionLayouts | None = None,
) -> tuple[list[LayerSpectrum], Timings]:
    """Eigendecompose C_in and C_out = W C_in W^T (+ bias terms) of every layer and derive what is stored.

    W and b are the effective ones the forward applied, and each layer gets its status (ok / not reached /
    not exact / too few samples) from the first batch's self-check (:mod:`analysis.capture`). The eigen phase
    reports stage ``"spectra"``, layer i of n (:func:`analysis.spectra.layer_eigen`). ``attention``: the
    verified head layouts (:func:`analysis.heads.attention_layouts`), whose per-part and per-head eigenvalues
    go into the layers' ``extras``."""
    moments = streamed.moments
    start = time.perf_counter()
    findings = streamed.collector.findings()
    effective = {spec.name: effective_parameters(spec, findings.get(spec.name)) for spec in applicable}
    statuses = {spec.name: layer_status(spec, moments[spec.name].count, findings.get(spec.name)) for spec in applicable}
    affine = {
        spec.name: AffineLayer(effective[spec.name][0], effective[spec.name][1], moments[spec.name].second_moment,
                               moments[spec.name].column_sum, moments[spec.name].count)
        for spec in applicable
    }
    eig_device = device if device.type == "cuda" else torch.device("cpu")
    # the images behind the statistics are all in: the spectra stage carries them, so a job's final record
    # still says how many images the analysis saw
    clock = StageClock(progress, "spectra", total=len(affine), items_total=streamed.images)
    eig_in, eig_out, eig_s = layer_eigen(affine, eig_device,
                                         progress=lambda done, _total, _s: clock.report(done, streamed.images))
    extra = (settings.energy_in, settings.energy_out)
    spectra = [
        LayerSpectrum.from_statistics(spec, moments[spec.name].count, eig_in[spec.name], eig_out[spec.name], extra,
                                      weight=effective[spec.name][0], status=statuses[spec.name][0],
                                      status_reason=statuses[spec.name][1])
        for spec in applicable
    ]
    heads.add_head_extras(spectra, affine, attention)
    timings = Timings(statistics_s=streamed.seconds, eigen_s=eig_s,
                      spectra_s=time.perf_counter() - start)
    return spectra, timings


def result_meta(the_plan: Plan, streamed: Streamed, timings: Timings, covered: Coverage | None = None) -> ResultMeta:
    """Ids, fingerprints, settings and timings of the analysis (and the share of the weights analysed)."""
    settings, loaded, dataset = the_plan.settings, the_plan.loaded, the_plan.dataset
    return ResultMeta(
        key=the_plan.key,
        key_parts=the_plan.key_parts,
        model_id=loaded.model_id,
        model_description=loaded.description,
        arch=loaded.arch,
        weights_fingerprint=loaded.fingerprint,
        dataset_id=dataset.dataset_id,
        dataset_description=getattr(dataset, "description", dataset.dataset_id),
        dataset_fingerprint=dataset.fingerprint,
        n_images=streamed.images,
        samples=settings.samples,
        seed=settings.seed,
        tokens_per_image=settings.tokens_per_image,
        token_set=settings.token_set,
        centred=settings.centred,
        uncertainty=settings.uncertainty,
        precision=settings.precision,
        device=str(torch.device(settings.device)),
        batch_size=settings.effective_batch_size(),
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in loaded.data_config.items()},
        timings=timings,
        world_size=distributed.world()[1],
        resumed_from_batch=streamed.first_batch,
        version=__version__,
        weights_analysed_fraction=covered.fraction if covered is not None else None,
        skipped_module_types=dict(covered.skipped) if covered is not None else {},
    )


def not_applicable_layers(specs: list[LayerSpec], deselected: dict[str, str] | None = None,
                          all_specs: list[LayerSpec] | None = None) -> list[dict]:
    """The layers reported but not analysed, with the reason (grouped convolutions; layers left out by
    ``--layers``/``--max-width``: ``deselected`` maps their names to the reason)."""
    deselected = deselected or {}
    return [
        {"layer": s.name, "kind": s.kind, "block": s.block, "d_in": s.d_in, "d_out": s.d_out,
         "status": "not applicable", "reason": "depthwise/grouped convolution: each group is too small to analyse"}
        for s in specs if not s.applicable
    ] + [
        {"layer": s.name, "kind": s.kind, "block": s.block, "d_in": s.d_in, "d_out": s.d_out,
         "reason": deselected[s.name]}
        for s in (all_specs or specs) if s.name in deselected
    ]


def raw_moments(moments: dict[str, LayerMoments]) -> dict[str, torch.Tensor]:
    """``{"<layer>|C_in": C_in, "<layer>|s": column sums, "<layer>|N": [count]}`` (what ``keep_moments`` stores)."""
    raw = {}
    for name, m in moments.items():
        raw[f"{name}|C_in"] = m.second_moment
        raw[f"{name}|s"] = m.column_sum
        raw[f"{name}|N"] = torch.tensor([m.count], dtype=torch.int64)
    return raw
