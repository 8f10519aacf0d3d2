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

import numpy as np
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
from .provenance import code_provenance
from .progress import Progress, ProgressCallback, StageClock
from .result import LayerSpectrum, Result
from .settings import PRECISIONS, AnalysisSettings
from .capture import effective_parameters, layer_status
from . import status as layer_status_codes
from .spectra import AffineLayer, cpu_dict, decomposition_cost, layer_eigen
from .statistics import LayerMoments, MomentCollector
from .tokens import TokenLayout, TokenSet
from . import centring, uncertainty

__all__ = ["Cancelled", "Plan", "Progress", "ProgressCallback", "analyze", "compute", "plan", "run_plan"]


class Cancelled(AnalysisError):
    """The caller asked the analysis to stop."""


def stop_check(should_stop: Callable[[], bool] | None) -> Callable[[], None]:
    """A function that raises :class:`Cancelled` once ``should_stop()`` is true (a no-op without it): called at
    every layer of every batch and between eigen-decompositions, so a cancel is obeyed within seconds."""
    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("analysis cancelled")
    return check


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
    TokenLayout.of_model(loaded.model).check(TokenSet.parse(settings.token_set), loaded.model_id)
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
                                           attention=attention, should_stop=should_stop)
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
    snapshots: uncertainty.Snapshots | None = None


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
    snapshots = uncertainty.Snapshots() if settings.uncertainty else None
    layout = TokenLayout.of_model(model)
    while True:
        resumed = partial.load() if partial is not None else None
        collector = MomentCollector(applicable, device, tokens_per_image=settings.tokens_per_image, seed=settings.seed,
                                    token_set=settings.token_set, layout=layout, halves=settings.uncertainty,
                                    interrupt=stop_check(should_stop))
        if resumed is not None:
            try:
                collector.load_state(resumed.state, batches_done=resumed.batches_done)
            except (KeyError, RuntimeError):  # a checkpoint of other layers or shapes: start over
                partial.clear()
                continue
            if snapshots is not None:
                snapshots.load_state(resumed.state, [s.name for s in applicable])
        break
    first_batch = resumed.batches_done if resumed is not None else 0
    images = resumed.images_done if resumed is not None else 0
    start = min(len(shard), first_batch * batch_size)
    loader = make_loader(Subset(shard, range(start, len(shard))), batch_size=batch_size, device=device)
    clock = StageClock(progress, "statistics", total=-(-len(shard) // batch_size), items_total=len(shard))
    snapshot_at = _snapshot_schedule(len(dataset), world_size, batch_size) if snapshots is not None else []
    autocast_dtype = PRECISIONS[settings.precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    with collector, torch.inference_mode(), autocast, kernels.layer_precision(autocast_dtype):
        for batch_index, (batch, _labels) in enumerate(loader, start=first_batch):
            stop_check(should_stop)()
            positions = torch.arange(batch_index * batch_size, batch_index * batch_size + batch.shape[0])
            image_ids = rank + positions * world_size  # indices in the analysed selection
            batch = batch.to(device, non_blocking=True)
            if settings.uncertainty:  # each half's images together: the statistics slice instead of copying
                order = uncertainty.half_order(image_ids)
                batch, image_ids = batch[order.to(device)], image_ids[order]
            collector.begin_batch(image_ids)
            _forward(model, batch, the_plan)
            collector.next_batch()
            images += batch.shape[0]
            if batch_index + 1 in snapshot_at:
                _take_snapshot(snapshots, collector, applicable, settings.centred, images, device)
            if partial is not None and partial.due(batch_index + 1):
                partial.save({**collector.state(), **(snapshots.state() if snapshots else {})}, batch_index + 1, images)
            clock.report(batch_index + 1, images)
    collector.next_batch()  # final finiteness check of the running sums
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - clock.start - (snapshots.seconds if snapshots else 0.0)
    return Streamed(collector, {}, images, first_batch, seconds, snapshots)


def _snapshot_schedule(n_images: int, world_size: int, batch_size: int) -> list[int]:
    """Batch counts after which every process snapshots (within the shortest shard, so all reach them)."""
    per_rank = n_images // max(1, world_size)
    return uncertainty.snapshot_batches(-(-per_rank // batch_size), batch_size, per_rank)


def _take_snapshot(snapshots: uncertainty.Snapshots, collector: MomentCollector, applicable: list[LayerSpec],
                   centred: bool, images: int, device: torch.device) -> None:
    """Eigenvalues of every reached layer's statistics so far (summed over processes), into ``snapshots``."""
    sums = collector.snapshot_sums(distributed.all_reduce_sum if distributed.world()[1] > 1 else None)
    images = distributed.all_reduce_int(images, device) if distributed.world()[1] > 1 else images
    findings = collector.findings()
    layers = affine_layers(applicable, sums, findings, centred)
    snapshots.take(images, {name: layer for name, layer in layers.items() if layer.count > 0})


def affine_layers(applicable: list[LayerSpec], moments: dict[str, LayerMoments], findings: dict,
                  centred: bool) -> dict[str, AffineLayer]:
    """Each layer's effective weight and bias with its statistics (centred ones when ``centred``)."""
    layers = {}
    for spec in applicable:
        weight, bias = effective_parameters(spec, findings.get(spec.name))
        m = moments[spec.name]
        layer = AffineLayer(weight, bias, m.second_moment, m.column_sum, m.count)
        layers[spec.name] = centring.centred(layer) if centred else layer
    return layers


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
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[LayerSpectrum], Timings]:
    """Eigendecompose C_in and C_out = W C_in W^T (+ bias terms) of every layer and derive what is stored.

    W and b are the effective ones the forward applied, and each layer gets its status (ok / not reached /
    not exact / too few samples) from the first batch's self-check (:mod:`analysis.capture`). The eigen phase
    reports stage ``"spectra"``, layer i of n (:func:`analysis.spectra.layer_eigen`). ``attention``: the
    verified head layouts (:func:`analysis.heads.attention_layouts`), whose per-part and per-head eigenvalues
    go into the layers' ``extras``. ``should_stop`` is checked as each layer's decompositions complete."""
    check = stop_check(should_stop)
    moments = streamed.moments
    start = time.perf_counter()
    collector = streamed.collector
    findings = collector.findings()
    uncentred = affine_layers(applicable, moments, findings, centred=False)
    affine = {name: centring.centred(layer) for name, layer in uncentred.items()} if settings.centred else uncentred
    statuses = {spec.name: _status(spec, moments[spec.name].count, findings.get(spec.name), collector)
                for spec in applicable}
    eig_device = device if device.type == "cuda" else torch.device("cpu")
    # the images behind the statistics are all in: the spectra stage carries them, so a job's final record
    # still says how many images the analysis saw
    clock = StageClock(progress, "spectra", total=len(affine), items_total=streamed.images)

    def eigen_done(done: int, _total: int, _seconds: float) -> None:
        check()
        clock.report(done, streamed.images)

    eig_in, eig_out, eig_s = layer_eigen(affine, eig_device, progress=eigen_done)
    extra = (settings.energy_in, settings.energy_out)
    by_name = {spec.name: spec for spec in applicable}

    def derived(name: str) -> LayerSpectrum:
        check()
        spec = by_name[name]
        return LayerSpectrum.from_statistics(spec, moments[name].count, eig_in[name], eig_out[name], extra,
                                             weight=affine[name].weight, status=statuses[name][0],
                                             status_reason=statuses[name][1],
                                             tokens=collector.selector.rules.get(name, ""))

    def svd_cost(name: str) -> float:  # W's singular values and the preservation grid: about d_in d_out (d_in + d_out)
        spec = by_name[name]
        return float(spec.d_in * spec.d_out * (spec.d_in + spec.d_out))

    spectra = list(cpu_dict(derived, list(by_name), cost=svd_cost).values())
    for spectrum in spectra:
        share_in, share_out = centring.mean_shares(uncentred[spectrum.name])
        spectrum.extras["mean_share_in"] = np.array([share_in])
        spectrum.extras["mean_share_out"] = np.array([share_out])
    heads.add_head_extras(spectra, affine, attention)
    uncertainty_s = 0.0
    if settings.uncertainty:
        uncertainty_s = _uncertainty_extras(spectra, applicable, streamed, findings, settings.centred, check)
    timings = Timings(statistics_s=streamed.seconds, eigen_s=eig_s, spectra_s=time.perf_counter() - start,
                      uncertainty_s=uncertainty_s)
    return spectra, timings


def _status(spec: LayerSpec, count: int, finding, collector: MomentCollector) -> tuple[str, str]:
    """The layer's status (:func:`analysis.capture.layer_status`), with the token set's say: a set that
    cannot be located among its vectors makes it "not exact"; a set with no vectors at it, "not reached"."""
    problem = collector.selector.problems.get(spec.name)
    if problem is not None:
        return layer_status_codes.NOT_EXACT, f"token set: {problem}"
    status = layer_status(spec, count, finding)
    rule = collector.selector.rules.get(spec.name)
    if count == 0 and rule is not None and collector.selector.token_set.kind != "all":
        return layer_status_codes.NOT_REACHED, f"token set '{collector.selector.token_set.spec}': {rule}"
    return status


def _uncertainty_extras(spectra: list[LayerSpectrum], applicable: list[LayerSpec], streamed: "Streamed",
                        findings: dict, centred: bool, check: Callable[[], None] = lambda: None) -> float:
    """Store the halves' and the snapshots' eigenvalues in each spectrum's extras; return the seconds spent
    (the snapshots' share was spent during the data pass)."""
    start = time.perf_counter()
    halves = streamed.collector.half_moments()  # merged over processes with the running sums
    half_layers = [affine_layers([s for s in applicable if s.name in half], half, findings, centred)
                   for half in halves]
    snapshots = streamed.snapshots
    layer_of: dict[tuple[str, str], AffineLayer] = {}  # (layer, half) -> that half's statistics
    for spectrum in spectra:
        if len(half_layers) == 2 and spectrum.name in half_layers[0] and spectrum.n_samples > 0:
            for label, layers in zip(("a", "b"), half_layers):
                layer_of[(spectrum.name, label)] = layers[spectrum.name]
    def half_eigenvalues(key: tuple[str, str]):
        check()
        return uncertainty.eigenvalues(layer_of[key])

    half_values = cpu_dict(half_eigenvalues, list(layer_of), cost=lambda key: decomposition_cost(layer_of[key]))
    for spectrum in spectra:
        name = spectrum.name
        for label in ("a", "b"):
            if (name, label) in half_values:
                lam_in, lam_out = half_values[(name, label)]
                spectrum.extras[f"half.{label}.eig_in"] = lam_in
                spectrum.extras[f"half.{label}.eig_out"] = lam_out
        if snapshots is not None and all(name in values for values in snapshots.values):
            spectrum.extras["snap.eig_in"] = np.stack([v[name][0] for v in snapshots.values] + [spectrum.eig_in])
            spectrum.extras["snap.eig_out"] = np.stack([v[name][1] for v in snapshots.values] + [spectrum.eig_out])
    return time.perf_counter() - start + (snapshots.seconds if snapshots is not None else 0.0)


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
        snapshot_images=_snapshot_images(streamed),
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
        provenance=code_provenance(),
    )


def _snapshot_images(streamed: Streamed) -> tuple[int, ...]:
    """Images seen at each stored snapshot, then the whole run's (empty without snapshots)."""
    snapshots = streamed.snapshots
    return tuple(snapshots.images) + (streamed.images,) if snapshots is not None else ()


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
