"""How long an analysis takes here: rates measured once per machine and build, refined by every finished run.

:mod:`analysis.cost` says how much work a run is (from the layer shapes, before any image is read); this module
turns work into seconds for *this* machine. The time model of one analysis job::

    T = T_start + c_pass * N * (F / R_fwd + S / R_stats) + c_post * (E + V + H) / R_eig

- ``N`` images; ``F`` the forward FLOPs of one image (counted on the meta device, :func:`forward_flops`);
- ``S = sum_l t_l d_in^2``: each analysed layer's input vectors per image times the statistics' ``d_in^2``;
- ``E = sum_l (d_in^3 + o_l^3)`` the eigen-decompositions (``o_l = min(d_out, d_in + 1)``, the size of the
  output problem actually solved, :func:`analysis.spectra.decomposition_cost`), ``V = sum_l d_in d_out
  (d_in + d_out)`` the SVD of W and the preservation grid, ``H = 0.2 (2 + SNAPSHOTS) E`` the eigenvalue-only
  decompositions of the split halves and snapshots when error bars are on (:mod:`analysis.uncertainty`);
- ``R_fwd``, ``R_stats``, ``R_eig``: rates measured by :func:`measure` in a few seconds (a float32 matrix
  product, the statistics kernel on rows of width 384, ``eigh`` of 384 x 384 float64 on the eigen workers);
- ``T_start`` (worker start: imports, loading the model and the dataset, the shape pass; and storing),
  ``c_pass`` and ``c_post`` are learnt from finished runs (:func:`record_run`): the median of what the runs of
  the same architecture observed, else of every run here, else the defaults below.

The estimate is shown as a range ``[T / s, T * s]``: ``s = 1.3`` once this architecture has run here, ``1.6``
when only other runs refined the rates, ``2`` before any run. Rates and runs are kept in
``<cache root>/_calibration/<machine and build>.json`` (written atomically); a build or machine change starts
a new file, because the rates change with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics as stats
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__

FOLDER = "_calibration"
MAX_RUNS = 200
"""Runs kept per file (the oldest are dropped)."""
DEFAULTS = {"start_s": 8.0, "c_pass": 1.0, "c_post": 1.0}
"""Before any run: worker start and storing about 8 s (imports of torch and timm on a busy CPU), rates as measured."""
FORWARD_EFFICIENCY = 0.35
"""A network's forward reaches this share of a large matrix product's FLOP rate on average (convolutions,
attention, normalisation and small matrices run slower); ``c_pass`` corrects it per architecture."""
SPREAD = {"same architecture": 1.3, "other runs": 1.6, "measured rates only": 2.0}
LONG_RUN_S = 600.0
"""Runs estimated above this ask for a confirmation in the app."""

_lock = threading.Lock()


@dataclass(frozen=True)
class Rates:
    """Measured throughputs: FLOP/s of a float32 matrix product, statistics rows*d^2 per second, eigen d^3 per
    second (all eigen workers together)."""

    forward: float
    stats: float
    eig: float
    measured_s: float = 0.0


@dataclass(frozen=True)
class Work:
    """What one analysis computes, from shapes alone (see the module docstring)."""

    images: int
    forward_flops: float
    """Per image."""
    stats: float
    """Per image: sum over layers of vectors x d_in^2."""
    eigen: float
    """Whole run: eigen-decompositions, SVDs, halves and snapshots, in d^3 units."""
    arch: str = ""
    """The architecture at its input size (``vit_tiny_patch16_224@28x28``): runs of the same one teach most."""
    device: str = "cpu"


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds of one run: ``seconds`` central, ``low``-``high`` the range shown, the parts of the model, and
    ``basis`` (what refined it: ``same architecture``, ``other runs`` or ``measured rates only``)."""

    seconds: float
    low: float
    high: float
    start_s: float
    pass_s: float
    post_s: float
    basis: str

    @property
    def long(self) -> bool:
        """Whether the app should ask before starting it (:data:`LONG_RUN_S`)."""
        return self.seconds > LONG_RUN_S


# ------------------------------------------------------------------------------------------------ work
def forward_flops(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    """FLOPs of one image's forward (``2 x`` multiply-adds), counted on the meta device: no memory, no arithmetic.
    0 when the model cannot run on the meta device (the pass is then predicted from its statistics alone)."""
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = {name: torch.empty_like(t, device="meta") for name, t in
                list(model.named_parameters()) + list(model.named_buffers())}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, meta, (torch.empty(1, *input_size, device="meta"),), strict=False)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - any model that cannot trace on meta: no forward term
        return 0.0


def work_of(the_plan) -> Work:
    """The :class:`Work` of a :class:`analysis.engine.Plan` (loads nothing more than the plan did)."""
    from .cost import selected_layers, tokens_per_image
    from .uncertainty import SNAPSHOTS

    settings = the_plan.settings
    model = the_plan.loaded.model
    input_size = tuple(int(v) for v in the_plan.loaded.data_config["input_size"])
    _all, selected = selected_layers(the_plan)
    specs = [s for s in selected if s.applicable]
    tokens = tokens_per_image(model, specs, input_size) if specs else {}
    per_image = eigen = 0.0
    for spec in specs:
        used = tokens.get(spec.name, 1)
        if settings.tokens_per_image:
            used = min(used, settings.tokens_per_image)
        per_image += used * spec.d_in ** 2
        bias = getattr(spec.module, "bias", None) is not None
        out_size = min(spec.d_out, spec.d_in + bias)
        decompositions = spec.d_in ** 3 + out_size ** 3
        eigen += decompositions * (1 + (0.2 * (2 + SNAPSHOTS) if settings.uncertainty else 0.0))
        eigen += spec.d_in * spec.d_out * (spec.d_in + spec.d_out)
    arch = f"{the_plan.loaded.arch or the_plan.loaded.model_id}@{input_size[1]}x{input_size[2]}"
    return Work(images=len(the_plan.dataset), forward_flops=forward_flops(model, input_size), stats=per_image,
                eigen=eigen, arch=arch, device=str(torch.device(settings.device).type))


# ------------------------------------------------------------------------------------------------ rates
def _best_of(repeats: int, fn) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def measure(device: str = "cpu") -> Rates:
    """Measure this machine's rates (a few seconds on a CPU; see the module docstring)."""
    import kernels

    from .spectra import CPU_WORKERS, cpu_map

    start = time.perf_counter()
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 768, generator=generator).to(dev)
    b = torch.randn(768, 1536, generator=generator).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def matmul() -> None:
        a @ b
        sync()

    forward = 2 * 2048 * 768 * 1536 / _best_of(3, matmul)
    d, rows_n = 384, 16384
    rows = torch.randn(rows_n, d, generator=generator).to(dev)
    acc = torch.zeros(d, d, dtype=torch.float64 if dev.type == "cpu" else torch.float32, device=dev)
    colsum = torch.zeros(d, dtype=acc.dtype, device=dev)

    def statistics() -> None:
        kernels.second_moment(rows, acc, colsum)
        sync()

    stats_rate = rows_n * d * d / _best_of(3, statistics)
    n = 384
    x = torch.randn(n, n, dtype=torch.float64, generator=generator)
    spd = x @ x.T + n * torch.eye(n, dtype=torch.float64)
    count = max(2, CPU_WORKERS)

    def eigen() -> None:
        list(cpu_map(lambda _i: torch.linalg.eigh(spd), list(range(count))))

    eig_rate = count * n ** 3 / _best_of(2, eigen)
    return Rates(forward=forward, stats=stats_rate, eig=eig_rate, measured_s=time.perf_counter() - start)


def fingerprint(device: str = "cpu") -> str:
    """This machine and build: processor, cores, torch and analysis versions, device kind."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}|{cores}|{torch.__version__}|{__version__}|{torch.device(device).type}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _path(cache_root: str | Path, device: str) -> Path:
    return Path(cache_root) / FOLDER / f"{fingerprint(device)}.json"


def _load(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _save(path: Path, value: dict) -> None:
    from .cache import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def rates(cache_root: str | Path, device: str = "cpu") -> Rates:
    """This machine's rates: read from the calibration file, measured (once) when it has none."""
    path = _path(cache_root, device)
    with _lock:
        data = _load(path)
        try:
            return Rates(**data["rates"])
        except (KeyError, TypeError):
            pass
        measured = measure(device)
        data["rates"] = asdict(measured)
        data.setdefault("runs", [])
        _save(path, data)
        return measured


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Observed:
    """What a finished run measured: seconds before the first batch and after the data pass, and the pass."""

    start_s: float
    pass_s: float
    post_s: float


def _parts(work: Work, r: Rates) -> tuple[float, float]:
    """Predicted ``(pass, post)`` seconds at ``c_pass = c_post = 1``."""
    per_image = work.forward_flops / (FORWARD_EFFICIENCY * r.forward) + work.stats / r.stats
    return work.images * per_image, work.eigen / r.eig


def record_run(cache_root: str | Path, work: Work, observed: Observed) -> None:
    """Keep a finished run's timings, so the next estimates learn from it (see the module docstring)."""
    path = _path(cache_root, work.device)
    r = rates(cache_root, work.device)
    pass_s, post_s = _parts(work, r)
    if pass_s <= 0 or post_s <= 0 or observed.pass_s <= 0:
        return
    entry = {"arch": work.arch, "images": work.images, "when": time.time(), "start_s": round(observed.start_s, 3),
             "c_pass": observed.pass_s / pass_s, "c_post": max(observed.post_s, 1e-3) / post_s,
             "observed": asdict(observed)}
    with _lock:
        data = _load(path)
        data.setdefault("rates", asdict(r))
        data["runs"] = (data.get("runs") or [])[-(MAX_RUNS - 1):] + [entry]
        _save(path, data)


def _learnt(runs: list[dict], arch: str) -> tuple[dict[str, float], str]:
    """The start time and correction factors to use, and what they come from."""
    same = [run for run in runs if run.get("arch") == arch]
    chosen, basis = (same, "same architecture") if same else (runs, "other runs") if runs else ([], "measured rates only")
    if not chosen:
        return dict(DEFAULTS), basis
    return {name: float(stats.median(float(run[name]) for run in chosen[-20:])) for name in DEFAULTS}, basis


def predict(work: Work, cache_root: str | Path) -> TimeEstimate:
    """The time of a run of ``work`` on this machine (see the module docstring)."""
    r = rates(cache_root, work.device)
    learnt, basis = _learnt(_load(_path(cache_root, work.device)).get("runs") or [], work.arch)
    pass_s, post_s = _parts(work, r)
    pass_s *= learnt["c_pass"]
    post_s *= learnt["c_post"]
    total = learnt["start_s"] + pass_s + post_s
    spread = SPREAD[basis]
    return TimeEstimate(seconds=total, low=total / spread, high=total * spread, start_s=learnt["start_s"],
                        pass_s=pass_s, post_s=post_s, basis=basis)


def estimate_run_time(model_id: str, dataset_id: str, settings, cache_root: str | Path | None = None) -> TimeEstimate:
    """The time :func:`analysis.analyze` of these ids and settings would take here, as a job."""
    from .cache import ResultCache
    from .engine import plan

    root = ResultCache(cache_root).root
    return predict(work_of(plan(model_id, dataset_id, settings)), root)
