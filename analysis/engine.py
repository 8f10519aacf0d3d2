"""The analysis pipeline: model -> data -> statistics -> spectra -> metrics -> cache.

:func:`analyze` is the public entry point (DESIGN.md section 7). A cache hit reads no data: the content
key is built from the model's weight fingerprint, the dataset's fingerprint (source identity and selected
indices), the settings that change statistics and the schema version.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Subset

from . import __version__, distributed
from .cache import ResultCache, content_key
from .data import load_dataset, make_loader
from .errors import AnalysisError, ForwardError
from .cost import guard_plan
from .models import describe_layers, load as load_loaded_model
from .models.layers import coverage, select_layers
from .partial import PartialStore
from .result import LayerSpectrum, Result
from .settings import PRECISIONS, AnalysisSettings
from .spectra import eigen_batched, layer_output_second_moment
from .statistics import MomentCollector


@dataclass
class Progress:
    """What a running analysis reports after each batch."""

    stage: str
    batches_done: int
    batches_total: int
    images_done: int
    images_total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        if self.batches_done == 0 or self.batches_total == 0:
            return None
        return self.elapsed_s / self.batches_done * (self.batches_total - self.batches_done)

    @property
    def fraction(self) -> float:
        return self.batches_done / self.batches_total if self.batches_total else 0.0


class Cancelled(AnalysisError):
    """The caller asked the analysis to stop."""


ProgressCallback = Callable[[Progress], None]


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
    use_cache: bool = True,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Analyse ``model`` on ``dataset`` and return the :class:`Result` at the given energies."""
    settings = AnalysisSettings(
        samples=samples, seed=seed, energy_in=energy_in, energy_out=energy_out, device=device,
        batch_size=batch_size, tokens_per_image=tokens_per_image, precision=precision, keep_moments=keep_moments,
        max_width=max_width, layers=layers,
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

    Under torchrun each rank sums its shard, the sums are all-reduced, rank 0 computes the spectra and
    every rank returns rank 0's result (the raw moments are only returned on rank 0)."""
    settings, loaded, dataset = the_plan.settings, the_plan.loaded, the_plan.dataset
    device = torch.device(settings.device)
    model = loaded.model.to(device)
    all_specs = describe_layers(model)
    specs, deselected = select_layers(all_specs, settings.max_width, settings.layers)
    applicable = [s for s in specs if s.applicable]
    rank, world_size = distributed.world()
    shard = distributed.shard(dataset, rank, world_size)
    batch_size = settings.effective_batch_size()
    resumed = partial.load() if partial is not None else None
    first_batch = resumed.batches_done if resumed is not None else 0
    loader = make_loader(Subset(shard, range(min(len(shard), first_batch * batch_size), len(shard))),
                         batch_size=batch_size)
    total_batches = -(-len(shard) // batch_size)
    autocast_dtype = PRECISIONS[settings.precision]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )

    start = time.perf_counter()
    images = resumed.images_done if resumed is not None else 0
    with MomentCollector(applicable, device, tokens_per_image=settings.tokens_per_image, seed=settings.seed) as collector:
        if resumed is not None:
            try:
                collector.load_state(resumed.state, batches_done=first_batch)
            except (KeyError, RuntimeError):  # a checkpoint of other layers or shapes: start over
                partial.clear()
                return compute(the_plan, progress=progress, should_stop=should_stop, partial=partial)
        with torch.inference_mode(), autocast:
            for batch_index, (batch, _labels) in enumerate(loader, start=first_batch):
                if should_stop is not None and should_stop():
                    raise Cancelled("analysis cancelled")
                try:
                    model(batch.to(device, non_blocking=True))
                except (RuntimeError, AssertionError, ValueError) as exc:
                    if isinstance(exc, AnalysisError):
                        raise
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ForwardError(
                        f"{loaded.model_id} failed on a batch of {dataset.dataset_id} "
                        f"(input {tuple(batch.shape)}): {reason}"
                    ) from exc
                collector.next_batch()
                images += batch.shape[0]
                if partial is not None and partial.due(batch_index + 1):
                    partial.save(collector.state(), batch_index + 1, images)
                if progress is not None:
                    progress(Progress("statistics", batch_index + 1, total_batches, images, len(shard),
                                      time.perf_counter() - start))
        collector.next_batch()  # final finiteness check of the running sums
        if world_size > 1:
            collector.merge_across(distributed.all_reduce_sum)
            images = distributed.all_reduce_int(images, device)
        moments = collector.moments()
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats_s = time.perf_counter() - start
    if rank != 0:
        model.to("cpu")
        return distributed.broadcast_from_rank0(None), {}

    start = time.perf_counter()
    c_out = {
        spec.name: layer_output_second_moment(spec, moments[spec.name].second_moment, moments[spec.name].column_sum,
                                              moments[spec.name].count)
        for spec in applicable
    }
    eig_device = device if device.type == "cuda" else torch.device("cpu")
    eig_in, eig_in_s = eigen_batched({n: m.second_moment for n, m in moments.items()}, eig_device)
    eig_out, eig_out_s = eigen_batched(c_out, eig_device)
    extra = (settings.energy_in, settings.energy_out)
    spectra = [
        LayerSpectrum.from_statistics(spec, moments[spec.name].count, eig_in[spec.name], eig_out[spec.name], extra)
        for spec in applicable
    ]
    spectra_s = time.perf_counter() - start
    model.to("cpu")
    covered = coverage(model, applicable)

    meta = {
        "key": the_plan.key,
        "key_parts": the_plan.key_parts,
        "model_id": loaded.model_id,
        "model_description": loaded.description,
        "arch": loaded.arch,
        "weights_fingerprint": loaded.fingerprint,
        "dataset_id": dataset.dataset_id,
        "dataset_description": getattr(dataset, "description", dataset.dataset_id),
        "dataset_fingerprint": dataset.fingerprint,
        "n_images": images,
        "samples": settings.samples,
        "seed": settings.seed,
        "tokens_per_image": settings.tokens_per_image,
        "precision": settings.precision,
        "device": str(device),
        "batch_size": settings.effective_batch_size(),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in loaded.data_config.items()},
        "timings": {"statistics_s": stats_s, "eigen_s": eig_in_s + eig_out_s, "spectra_s": spectra_s},
        "world_size": world_size,
        "resumed_from_batch": first_batch,
        "version": __version__,
        "weights_analysed_fraction": covered.fraction,
        "skipped_module_types": covered.skipped,
    }
    not_applicable = [
        {"layer": s.name, "kind": s.kind, "block": s.block, "d_in": s.d_in, "d_out": s.d_out,
         "reason": "depthwise/grouped convolution: each group is too small to analyse"}
        for s in specs if not s.applicable
    ] + [
        {"layer": s.name, "kind": s.kind, "block": s.block, "d_in": s.d_in, "d_out": s.d_out,
         "reason": deselected[s.name]}
        for s in all_specs if s.name in deselected
    ]
    result = Result(meta=meta, spectra=spectra, not_applicable=not_applicable,
                    energy_in=settings.energy_in, energy_out=settings.energy_out)
    raw = {}
    for name, m in moments.items():
        raw[f"{name}|C_in"] = m.second_moment
        raw[f"{name}|s"] = m.column_sum
        raw[f"{name}|N"] = torch.tensor([m.count], dtype=torch.int64)
    return distributed.broadcast_from_rank0(result), raw
