"""The analysis pipeline: model -> data -> statistics -> spectra -> metrics -> cache.

:func:`analyze` is the public entry point (README, section Python). The model and the data are ids or
objects (a ``torch.nn.Module``; a ``Dataset``, ``DataLoader`` or iterable of image batches). The content key
is built from the model's weight fingerprint (:mod:`analysis.models.model_objects` for objects), the data's
fingerprint (source identity and selected indices for an id; the tensors read for an object,
:mod:`analysis.data.data_objects`), the settings that change statistics and the schema version. A cache hit
reads no data for an id, and no more than one fingerprinting read for an object.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Subset

import kernels

from . import __version__, distributed, heads
from .cache import ResultCache, content_key
from .data import device_batches, load_dataset, make_loader
from .data.data_objects import DataObject
from .errors import AnalysisError, ForwardError, SettingsError
from .cost import guard_plan
from .meta import ResultMeta, Timings
from .models import load as load_loaded_model
from .models.layers import describe_model
from .models.model_objects import check_module, load_object, object_session, prepared
from .models.layers import Coverage, LayerSpec, coverage, select_layers
from .partial import PartialStore
from .provenance import code_provenance
from .progress import Progress, ProgressCallback, StageClock
from .result import LayerSpectrum, Result
from .settings import PRECISIONS, AnalysisSettings
from .capture import TF32_UNIT, effective_parameters, layer_status
from . import status as layer_status_codes
from .spectra import AffineLayer, cpu_dict, decomposition_cost, energy_status, layer_eigen
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
    """Everything decided before the data pass: what to load, and the cache key (None when the data cannot
    be identified before reading it: the result is then not stored)."""

    loaded: object
    dataset: object
    settings: AnalysisSettings
    key: str | None
    key_parts: dict


def plan(model, dataset, settings: AnalysisSettings, *, data_id: str | None = None,
         data_config: dict | None = None, read_data: bool = True) -> Plan:
    """Validate settings, load the model and the dataset handle, and compute the key.

    ``model``: a model id or a ``torch.nn.Module``; ``dataset``: a dataset id (no image is read) or a data
    object (read once to fingerprint it unless ``read_data`` is False or it cannot be identified that way;
    ``data_id`` names it instead). ``data_config`` overrides the model's own preprocessing of dataset ids."""
    settings = settings.validated()
    if isinstance(model, str):
        loaded = load_loaded_model(model)
        if data_config is not None:
            loaded = replace(loaded, data_config=dict(data_config))
    else:
        loaded = load_object(model, data_config)
    TokenLayout.of_model(loaded.model).check(TokenSet.parse(settings.token_set), loaded.model_id)
    if isinstance(dataset, str):
        if data_id is not None:
            raise SettingsError(f"data_id names a data object; the dataset id {dataset!r} names itself")
        if "input_size" not in loaded.data_config:
            raise SettingsError(
                f"{loaded.model_id} names no preprocessing of its own: pass data_config={{'input_size': (3, H, W), "
                "'mean': ..., 'std': ...}, or give the data as a Dataset or DataLoader with its own transforms"
            )
        dataset = load_dataset(dataset, data_config=loaded.data_config, samples=settings.samples, seed=settings.seed)
    else:
        if distributed.world()[1] > 1:
            raise SettingsError("data given as an object cannot be sharded over processes; under torchrun use a "
                                "dataset id")
        dataset = DataObject(dataset, samples=settings.samples, seed=settings.seed,
                             batch_size=settings.effective_batch_size(), data_id=data_id)
        dataset.prepare(read=read_data)
        loaded = replace(loaded, data_config={"input_size": dataset.image_shape})  # the data's own transforms
    parts = {
        "code": __version__,
        "model_id": loaded.model_id,
        "weights": loaded.fingerprint,
        "dataset_id": dataset.dataset_id,
        "dataset": dataset.fingerprint,
        "input": list(loaded.data_config.get("input_size", ())),
        **settings.key_parts(),
    }
    key = content_key(parts) if getattr(dataset, "cacheable", True) else None
    return Plan(loaded=loaded, dataset=dataset, settings=settings, key=key, key_parts=parts)


def analyze(
    model,
    data=None,
    settings: AnalysisSettings | int | None = None,
    *legacy,
    data_id: str | None = None,
    data_config: dict | None = None,
    use_cache: bool = True,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    dataset=None,
    **changes,
) -> Result:
    """Analyse ``model`` on ``data`` and return the :class:`Result` at the settings' energies.

    ``model``: a model id (``timm:...``, ``tv:resnet18``, ``hf:/folder``, ...) or any ``torch.nn.Module``
    (left as it was: mode and device are restored). ``data``: a dataset id or a ``Dataset``, ``DataLoader`` or
    iterable of image batches or ``(images, labels)`` (:mod:`analysis.data.data_objects`; ``dataset=`` is the
    old name of this argument). ``settings`` (:class:`AnalysisSettings`) describes the run; any of its fields
    may also be given as a keyword argument (``samples=500``, ``energy_in=0.95``, ...), which overrides it. For
    calls written before settings existed, ``analyze(model, dataset, samples, seed, energy_in, energy_out)``
    still works. ``data_id`` names a data object for the cache (the caller vouches for its identity);
    ``data_config`` gives a model object's preprocessing for a dataset id."""
    if dataset is not None:
        if data is not None:
            raise TypeError("analyze() got both data and dataset (the old name of data)")
        data = dataset
    if data is None:
        raise TypeError("analyze() needs the data: a dataset id, a Dataset, a DataLoader or an iterable of images")
    settings = AnalysisSettings.of_call(settings, legacy, changes)
    session = contextlib.nullcontext() if isinstance(model, str) else object_session(check_module(model))
    with session:
        the_plan = plan(model, data, settings, data_id=data_id, data_config=data_config, read_data=use_cache)
        return run_plan(the_plan, use_cache=use_cache, cache_dir=cache_dir, progress=progress,
                        should_stop=should_stop)


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
    use_cache = use_cache and the_plan.key is not None  # data that cannot be identified: never stored
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
    if use_cache and rank == 0 and result.key is not None:  # None: the data changed between two reads
        cache.store(result.key, result, moments if settings.keep_moments else None)
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
        all_specs, structure = describe_model(model, the_plan.loaded.data_config.get("input_size"))
        specs, deselected = select_layers(all_specs, the_plan.settings.max_width, the_plan.settings.layers)
        applicable = [s for s in specs if s.applicable]
        with prepared(model):
            streamed = stream_statistics(the_plan, model, applicable, device, progress=progress,
                                         should_stop=should_stop, partial=partial)
            streamed = merge_across_processes(streamed, device)
            the_plan = settled(the_plan)
            if distributed.world()[0] != 0:
                return distributed.broadcast_from_rank0(None), {}
            attention = heads.attention_layouts(model, applicable, the_plan.loaded.data_config.get("input_size"),
                                                device)
        spectra, timings = compute_spectra(applicable, streamed, device, the_plan.settings, progress=progress,
                                           attention=attention, should_stop=should_stop)
    finally:
        model.to("cpu")
    meta = result_meta(the_plan, streamed, timings, coverage(model, applicable)).replace(blocks_reason=structure.reason)
    result = Result(meta=meta, spectra=spectra,
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
    batch_size = settings.effective_batch_size()
    snapshots = uncertainty.Snapshots() if settings.uncertainty else None
    layout = TokenLayout.of_model(model)
    total_batches, total_images = _totals(the_plan, batch_size)
    while True:
        resumed = partial.load() if partial is not None else None
        collector = MomentCollector(applicable, device, tokens_per_image=settings.tokens_per_image, seed=settings.seed,
                                    token_set=settings.token_set, layout=layout, halves=settings.uncertainty,
                                    verify_batch=MomentCollector.verification_batch(total_batches, settings.seed),
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
    loader, positions = _batches(the_plan, batch_size, first_batch, device, halves=settings.uncertainty)
    clock = StageClock(progress, "statistics", total=total_batches, items_total=total_images)
    if snapshots is not None and not len(dataset):  # an iterator of unknown length: no convergence curve
        snapshots = None
    snapshot_at = _snapshot_schedule(len(dataset), world_size, _uniform_batch(dataset, batch_size)) \
        if snapshots is not None else []
    autocast_dtype = PRECISIONS[settings.precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    with collector, torch.inference_mode(), autocast, kernels.layer_precision(autocast_dtype):
        for batch_index, (batch, _labels) in enumerate(device_batches(loader, device), start=first_batch):
            stop_check(should_stop)()
            if positions is None:  # a data object, read in its own order: this process's images so far
                image_ids = rank + torch.arange(images, images + batch.shape[0]) * world_size
                if settings.uncertainty:  # each half's images together: the statistics slice instead of copying
                    order = uncertainty.half_order(image_ids)
                    batch, image_ids = batch[order.to(batch.device)], image_ids[order]
            else:  # the loader already put each batch's half-0 images first
                offset = (batch_index - first_batch) * batch_size
                image_ids = rank + torch.tensor(positions[offset : offset + batch.shape[0]]) * world_size
            collector.begin_batch(image_ids)
            _forward(model, batch, the_plan)
            collector.next_batch()
            images += batch.shape[0]
            if batch_index + 1 in snapshot_at:
                collector.finish()
                _take_snapshot(snapshots, collector, applicable, settings.centred, images, device)
            if partial is not None and partial.due(batch_index + 1):
                collector.finish()
                partial.save({**collector.state(), **(snapshots.state() if snapshots else {})}, batch_index + 1, images)
            clock.report(batch_index + 1, images)
    collector.finish()  # final finiteness check of the running sums (waits for the GPU's answer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - clock.start - (snapshots.seconds if snapshots else 0.0)
    return Streamed(collector, {}, images, first_batch, seconds, snapshots)


def _totals(the_plan: Plan, batch_size: int) -> tuple[int, int]:
    """``(batches in all, images in all)`` of this process's share (0, 0 for a data object of unknown length)."""
    dataset = the_plan.dataset
    if isinstance(dataset, DataObject):
        total = dataset.n_images or 0
        return -(-total // _uniform_batch(dataset, batch_size)), total
    images = len(distributed.shard(dataset, *distributed.world()))
    return -(-images // batch_size), images


def _batches(the_plan: Plan, batch_size: int, first_batch: int, device: torch.device, *, halves: bool
             ) -> tuple[Iterable, list[int] | None]:
    """Batches of ``(images, labels)`` of this process's share from batch ``first_batch`` on, and the shard
    positions they deliver in order: a shard of a dataset id's selection (with ``halves``, each batch's half-0
    images first, see :func:`_halves_in_order`), or a data object read in its own order (positions ``None``)."""
    dataset = the_plan.dataset
    if isinstance(dataset, DataObject):
        return dataset.batches(skip=first_batch), None
    rank, world_size = distributed.world()
    shard = distributed.shard(dataset, rank, world_size)
    start = min(len(shard), first_batch * batch_size)
    positions = list(range(start, len(shard)))  # in the shard, batch after batch
    if halves:
        positions = _halves_in_order(positions, batch_size, rank, world_size)
    return make_loader(Subset(shard, positions), batch_size=batch_size, device=device), positions


def _uniform_batch(dataset, batch_size: int) -> int:
    """Images per batch: a data object's own (a DataLoader's batch size), else the settings'."""
    return (dataset.batch_size or batch_size) if isinstance(dataset, DataObject) else batch_size


def settled(the_plan: Plan) -> Plan:
    """After the data pass: a data object's fingerprint of what was read, and no key when it cannot be stored
    (:meth:`~analysis.data.data_objects.DataObject.settle`); a dataset id's plan unchanged."""
    dataset = the_plan.dataset
    if not isinstance(dataset, DataObject):
        return the_plan
    dataset.settle()
    return replace(the_plan, key=the_plan.key if dataset.cacheable else None,
                   key_parts={**the_plan.key_parts, "dataset": dataset.fingerprint})


def _halves_in_order(positions: list[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    """``positions`` with each batch's images put in :func:`analysis.uncertainty.half_order` (half 0 first, each
    half in its original order), so the loader delivers every batch ready for sliced halves: nothing is
    gathered on the device and no index tensor is copied to it."""
    ordered = []
    for first in range(0, len(positions), batch_size):
        chunk = torch.tensor(positions[first : first + batch_size], dtype=torch.int64)
        ordered.extend(chunk[uncertainty.half_order(rank + chunk * world_size)].tolist())
    return ordered


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
    unit, fixed = run_unit(settings, device), collector.fixed_inputs()
    statuses = {spec.name: _status(spec, moments[spec.name].count, findings.get(spec.name), collector,
                                   affine[spec.name], unit, fixed) for spec in applicable}
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


def _status(spec: LayerSpec, count: int, finding, collector: MomentCollector, layer: AffineLayer,
            unit: float, fixed: set[str]) -> tuple[str, str]:
    """The layer's status (:func:`analysis.capture.layer_status`), with the token set's say: a set that
    cannot be located among its vectors makes it "not exact"; a set with no vectors at it, "not reached".
    A measured layer whose input energy (of ``layer``, the statistics its spectra come from) is zero is "zero
    input"; else one whose input was the same for every image is "fixed input"; else one whose output energy is
    zero, "zero output"
    (:func:`analysis.spectra.energy_status`, ``unit``: the run's unit roundoff; ``fixed``: the collector's
    :meth:`~analysis.statistics.MomentCollector.fixed_inputs`)."""
    problem = collector.selector.problems.get(spec.name)
    if problem is not None:
        return layer_status_codes.NOT_EXACT, f"token set: {problem}"
    status = layer_status(spec, count, finding)
    rule = collector.selector.rules.get(spec.name)
    if count == 0 and rule is not None and collector.selector.token_set.kind != "all":
        return layer_status_codes.NOT_REACHED, f"token set '{collector.selector.token_set.spec}': {rule}"
    if status[0] not in (layer_status_codes.OK, layer_status_codes.TOO_FEW_SAMPLES):
        return status
    degenerate = energy_status(layer, unit)
    if degenerate is not None and degenerate[0] == layer_status_codes.ZERO_INPUT:  # the same (zero) for all too
        return degenerate
    if spec.name in fixed:
        return layer_status_codes.FIXED_INPUT, ("its input is the same for every image (it does not depend on "
                                                "the image), so its subspaces say nothing about the data")
    return degenerate or status


def run_unit(settings: AnalysisSettings, device: torch.device) -> float:
    """Unit roundoff of what the run's layers multiply: the autocast dtype's, TF32's on CUDA in float32 (as
    :func:`analysis.capture.operand_unit`), else float32's."""
    dtype = PRECISIONS[settings.precision] or torch.float32
    unit = torch.finfo(dtype).eps / 2
    if dtype == torch.float32 and device.type == "cuda":
        unit = max(unit, TF32_UNIT)
    return unit


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
        batch_size=_uniform_batch(dataset, settings.effective_batch_size()),
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in loaded.data_config.items()},
        timings=timings,
        world_size=distributed.world()[1],
        resumed_from_batch=streamed.first_batch,
        version=__version__,
        weights_analysed_fraction=covered.fraction if covered is not None else None,
        skipped_module_types=dict(covered.skipped) if covered is not None else {},
        provenance=code_provenance(),
        data_note=getattr(dataset, "note", ""),
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
