"""How long an analysis takes here: a short measurement of the run itself and of this machine, refined by
every finished run.

:mod:`analysis.cost` says how much work a run is (from the layer shapes, before any image is read); this module
turns it into seconds for *this* machine and load. The time model of one analysis job::

    T = T_start + c_first * B * t_image + c_pass * (N - B) * t_image + L * t_layer + c_post * (E + V + H) / R_eig

- ``N`` images; ``t_image`` the seconds of one image's data pass (forward and statistics, every hook and the
  data loading included), *measured* by :func:`probe_pass`: the run's own model, settings and data, in
  batches of up to the run's batch size (the first, which discovers the layers, is not timed; then about
  three seconds of batches), so that a probe costs a few seconds whatever the model;
- ``B`` the images of the run's first batch, which also discovers the layers and runs the exactness self-check:
  ``c_first`` times a batch's usual cost, learnt from finished runs (the first batch is timed apart from the
  rest of the pass, so a short run's discovery is not learnt as a slower time per image);
- ``L`` analysed layers and ``t_layer`` the fixed seconds each costs after the pass (derived spectra, head
  layouts, storing);
- ``E = sum_l (d_in^3 + o_l^3)`` the eigen-decompositions (``o_l = min(d_out, d_in + 1)``, the size of the
  output problem actually solved, :func:`analysis.spectra.decomposition_cost`), ``V = sum_l d_in d_out
  (d_in + d_out)`` the SVD of W and the preservation grid, ``H = 0.2 (2 + SNAPSHOTS) E`` the eigenvalue-only
  decompositions of the split halves and snapshots when error bars are on (:mod:`analysis.uncertainty`);
- ``R_eig``: ``eigh`` of 384 x 384 float64 on the eigen workers, measured by :func:`measure` once per machine
  and build (with a float32 matrix product and the statistics kernel, kept for reference); ``F``, the forward
  FLOPs (:func:`forward_flops`), sizes the probe;
- when runs of the same architecture and settings finished here, the pass is also predicted from their whole
  passes' time per image (a measurement of minutes, against the probe's seconds; the median of ``n`` runs
  weighs ``n`` against the probe's 2, geometrically);
- ``T_start`` (worker start: imports, loading the model and the dataset, the shape pass), ``c_first``,
  ``t_layer``, ``c_pass`` and ``c_post`` are learnt from finished runs (:func:`record_run`): medians of what the runs of the
  same architecture observed, else of every run here, pulled towards the defaults below as if two runs had
  seen those (:func:`_shrunk`), else the defaults.

A busy machine runs everything slower, by :func:`contention` (measured: the other processes' CPU time against
this run's threads and the cores):
the rates and what runs taught are kept as an idle machine's (divided by the contention of their moment) and
the estimate multiplies them by the contention now; the probe, measured now, needs no correction.

The estimate is shown as a range ``[T / s, T * s]``: ``s = 1.3`` once this architecture has run here, ``1.6``
when other runs refined the model, ``2`` before any run. Rates and runs are kept in
``<cache root>/_calibration/<machine and build>.json`` (written atomically); a build or machine change starts
a new file, because the rates change with them.
"""

from __future__ import annotations

import hashlib
import json
import math
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
DEFAULTS = {"start_s": 8.0, "c_first": 2.0, "c_pass": 1.0, "layer_s": 0.15, "c_post": 1.0}
"""Before any run: the worker's start about 8 s (imports of torch and timm on a busy CPU), a first batch twice a
usual one (the forward inside the capture's function mode, and the self-check), 0.15 s per layer after the
pass, the measured pass and eigen rates as they are."""
TIME_MODEL = 2
"""Version of the time model in the calibration file's name: runs recorded under another one are not read
(version 1 counted the first batch in the pass)."""
PROBE_FLOPS = 2e10
PROBE_MIN_IMAGES = 8
"""The probe's batches hold about ``PROBE_FLOPS`` forward FLOPs, but at least ``PROBE_MIN_IMAGES`` images (at
most the run's batch): a batch's fixed cost (hooks, data loading) spread over two images of a big model made
its time per image twice the run's."""
PROBE_SECONDS = 3.0
PROBE_BATCHES = 4
"""The probe times batches after the first until this many seconds have passed or this many are done: a
busy machine's speed varies from one batch to the next by a factor of several."""
SPREAD = {"same architecture": 1.3, "other runs": 1.6, "measured rates only": 2.0}
LONG_RUN_S = 600.0
"""Runs estimated above this ask for a confirmation in the app."""

_lock = threading.Lock()
_probe_lock = threading.Lock()


@dataclass(frozen=True)
class Rates:
    """Measured throughputs of an idle machine (measured ones times the :func:`contention` of the moment):
    FLOP/s of a float32 matrix product, statistics rows*d^2 per second, eigen d^3 per second (all eigen workers
    together)."""

    forward: float
    stats: float
    eig: float
    measured_s: float = 0.0
    contention: float = 1.0
    """:func:`contention` while they were measured; the rates above are divided back to an idle machine's."""


@dataclass(frozen=True)
class Work:
    """What one analysis computes (see the module docstring)."""

    images: int
    image_s: float
    """Measured seconds of one image's data pass (:func:`probe_pass`); 0 when not measured."""
    eigen: float
    """Whole run: eigen-decompositions, SVDs, halves and snapshots, in d^3 units."""
    layers: int
    forward_flops: float = 0.0
    """Per image, from the meta pass."""
    arch: str = ""
    """The architecture at its input size (``vit_tiny_patch16_224@28x28``): runs of the same one teach most."""
    device: str = "cpu"
    batch: int = 0
    """Images of the run's first batch (timed apart, ``c_first``); 0: none counted apart."""
    variant: str = ""
    """The settings that change the pass's cost per image (token selection, error bars, precision, layers,
    batch size): a run of the same architecture *and* variant gives the pass's time per image directly."""


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds of one run: ``seconds`` central, ``low``-``high`` the range shown, the parts of the model, and
    ``basis`` (what refined it: ``same architecture``, ``other runs`` or ``measured rates only``)."""

    seconds: float
    low: float
    high: float
    start_s: float
    """The worker's start and the first batch."""
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
    0 when the model cannot run on the meta device."""
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = {name: torch.empty_like(t, device="meta") for name, t in
                list(model.named_parameters()) + list(model.named_buffers())}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, meta, (torch.empty(1, *input_size, device="meta"),), strict=False)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - any model that cannot trace on meta: the probe sizes itself from 1 image
        return 0.0


def probe_pass(the_plan, flops: float = 0.0) -> float:
    """Seconds of one image's data pass, measured: the plan's own model, settings, layers and data, in batches
    of ``b`` images (``b`` holds about :data:`PROBE_FLOPS`, at least :data:`PROBE_MIN_IMAGES`, at most the run's
    batch size). The first batch
    (layer discovery and the exactness self-check, once per run) is not timed; the following ones are, until
    :data:`PROBE_SECONDS` have passed or :data:`PROBE_BATCHES` are done (:func:`timed_per_image`)."""
    from dataclasses import replace

    from torch.utils.data import Subset

    from .cost import selected_layers
    from .engine import Cancelled, stream_statistics

    settings = the_plan.settings
    by_flops = int(PROBE_FLOPS // flops) if flops > 0 else 1
    batch = max(1, min(settings.effective_batch_size(), max(PROBE_MIN_IMAGES, by_flops)))
    images = min(len(the_plan.dataset), (1 + PROBE_BATCHES) * batch)
    # no error bars in the probe: their snapshots would decompose every layer inside the timed batches
    head = Subset(the_plan.dataset, range(images))
    head.dataset_id = the_plan.dataset.dataset_id  # the engine names its data in errors, as for the whole set
    probe = replace(the_plan, dataset=head, settings=replace(settings, batch_size=batch, uncertainty=False))
    _all, selected = selected_layers(the_plan)
    applicable = [s for s in selected if s.applicable]
    device = torch.device(settings.device)
    with _probe_lock:  # one probe at a time per process: two at once would each time the other's load
        marks: list[tuple[int, float]] = [(0, time.perf_counter())]
        model = the_plan.loaded.model.to(device)
        try:
            stream_statistics(probe, model, applicable, device,
                              progress=lambda p: marks.append((p.items_done, time.perf_counter())),
                              should_stop=lambda: probe_done(marks[1:]))
        except Cancelled:  # enough was timed
            pass
        finally:
            model.to("cpu")
    return timed_per_image(marks[1:]) or (marks[-1][1] - marks[0][1]) / max(1, marks[-1][0])


def probe_done(marks: list[tuple[int, float]]) -> bool:
    """Whether the batches reported so far (``(images done, when)`` after each) time the pass well enough."""
    return len(marks) > PROBE_BATCHES or (len(marks) >= 2 and marks[-1][1] - marks[0][1] >= PROBE_SECONDS)


def timed_per_image(marks: list[tuple[int, float]]) -> float:
    """Seconds per image of the batches after the first (``marks``: ``(images done, when)`` after each batch,
    as far as :func:`probe_done`); 0 before the second batch is done."""
    timed = marks[: PROBE_BATCHES + 1]
    for i in range(2, len(timed) + 1):
        if probe_done(timed[:i]):
            timed = timed[:i]
            break
    if len(timed) < 2 or timed[-1][0] <= timed[0][0]:
        return 0.0
    return (timed[-1][1] - timed[0][1]) / (timed[-1][0] - timed[0][0])


def work_of(the_plan, *, probe: bool = True) -> Work:
    """The :class:`Work` of a :class:`analysis.engine.Plan`; ``probe`` measures its pass (:func:`probe_pass`,
    a few seconds), otherwise only the shapes are used (the worker's clock needs only the tail)."""
    from .cost import selected_layers
    from .uncertainty import SNAPSHOTS

    settings = the_plan.settings
    model = the_plan.loaded.model
    input_size = tuple(int(v) for v in the_plan.loaded.data_config["input_size"])
    _all, selected = selected_layers(the_plan)
    specs = [s for s in selected if s.applicable]
    eigen = 0.0
    for spec in specs:
        bias = getattr(spec.module, "bias", None) is not None
        out_size = min(spec.d_out, spec.d_in + bias)
        decompositions = spec.d_in ** 3 + out_size ** 3
        eigen += decompositions * (1 + (0.2 * (2 + SNAPSHOTS) if settings.uncertainty else 0.0))
        eigen += spec.d_in * spec.d_out * (spec.d_in + spec.d_out)
    flops = forward_flops(model, input_size)
    arch = f"{the_plan.loaded.arch or the_plan.loaded.model_id}@{input_size[1]}x{input_size[2]}"
    variant = (f"tokens={settings.token_set}/{settings.tokens_per_image or 'all'} errors={settings.uncertainty} "
               f"precision={settings.precision} batch={settings.effective_batch_size()} layers={len(specs)}")
    images = len(the_plan.dataset)
    return Work(images=images, image_s=probe_pass(the_plan, flops) if probe else 0.0, eigen=eigen,
                layers=len(specs), forward_flops=flops, arch=arch, device=str(torch.device(settings.device).type),
                batch=min(images, settings.effective_batch_size()), variant=variant)


# ------------------------------------------------------------------------------------------------ rates
def _median_of(repeats: int, fn) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds): a busy machine is measured as it is."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return max(stats.median(times), 1e-9)


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

    forward = 2 * 2048 * 768 * 1536 / _median_of(3, matmul)
    d, rows_n = 384, 16384
    rows = torch.randn(rows_n, d, generator=generator).to(dev)
    acc = torch.zeros(d, d, dtype=torch.float64 if dev.type == "cpu" else torch.float32, device=dev)
    colsum = torch.zeros(d, dtype=acc.dtype, device=dev)

    def statistics() -> None:
        kernels.second_moment(rows, acc, colsum)
        sync()

    stats_rate = rows_n * d * d / _median_of(3, statistics)
    n = 384
    x = torch.randn(n, n, dtype=torch.float64, generator=generator)
    spd = x @ x.T + n * torch.eye(n, dtype=torch.float64)
    count = max(2, CPU_WORKERS)

    def eigen() -> None:
        list(cpu_map(lambda _i: torch.linalg.eigh(spd), list(range(count))))

    eig_rate = count * n ** 3 / _median_of(3, eigen)
    busy = contention() if dev.type == "cpu" else 1.0  # rates are stored as an idle machine's
    return Rates(forward=forward * busy, stats=stats_rate * busy, eig=eig_rate * busy,
                 measured_s=time.perf_counter() - start, contention=busy)


def fingerprint(device: str = "cpu") -> str:
    """This machine and build: processor, cores, torch and analysis versions, device kind."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}|{_cores()}|{torch.__version__}|{__version__}|{torch.device(device).type}|time model {TIME_MODEL}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cpu_share(seconds: float = 0.2) -> float:
    """The share of one core this process's thread gets now (0 to 1): a busy loop's CPU time over its wall time.
    Measured, not read from the load average: niced work (background training) counts in the load but takes
    almost nothing from a normal process."""
    start_wall, start_cpu = time.perf_counter(), time.thread_time()
    while time.perf_counter() - start_wall < seconds:
        pass
    wall = time.perf_counter() - start_wall
    return min(1.0, (time.thread_time() - start_cpu) / wall) if wall > 0 else 1.0


def _processes() -> dict[int, tuple[int, int, int]]:
    """``pid -> (parent pid, nice, CPU clock ticks so far)`` of every process readable in ``/proc``."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                text = fh.read()
        except OSError:  # exited meanwhile, or not readable
            continue
        fields = text[text.rfind(b")") + 2:].split()  # the name may hold spaces and parentheses
        try:
            found[int(entry.name)] = (int(fields[1]), int(fields[16]), int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return found


def _steal_ticks() -> int:
    """Clock ticks the hypervisor has taken from this virtual machine's cores since boot (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8])


def _family(processes: dict[int, tuple[int, int, int]], root: int) -> set[int]:
    """``root`` and its descendants among ``processes``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _nice, _ticks) in processes.items():
        children.setdefault(parent, []).append(pid)
    family, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in family:
            family.add(pid)
            todo.extend(children.get(pid, []))
    return family


def other_load(seconds: float = 0.2) -> float | None:
    """Cores' worth of CPU that other processes at normal priority (and the hypervisor's steal) used over the
    next ``seconds``, from ``/proc``: every process's CPU ticks before and after, less this process and its
    descendants (a run's own loader workers, a job worker that is finishing) and niced processes (background
    training takes almost nothing from a normal process). None where ``/proc`` is missing (not Linux)."""
    try:
        before, steal, start = _processes(), _steal_ticks(), time.perf_counter()
        time.sleep(seconds)
        after, steal_after, wall = _processes(), _steal_ticks(), time.perf_counter() - start
    except (OSError, ValueError, IndexError):
        return None
    if not after or wall <= 0:
        return None
    family = _family(after, os.getpid())
    ticks = steal_after - steal
    for pid, (_parent, nice, total) in after.items():
        if pid not in family and nice <= 0:
            ticks += total - before[pid][2] if pid in before else total  # a process started meanwhile: all of it
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / wall)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def contention() -> float:
    """How many times slower than on an idle machine a run on this process's torch threads goes now, at most 20.

    With ``R`` cores' worth of other work (:func:`other_load`), ``T`` threads and ``C`` cores, the scheduler's
    fair share gives ``(R + T) / C``: 1 on an idle machine (or one busy only with niced work), 1.5 for one busy
    process beside a 2-thread run on 2 cores, 2 with one on every core. ``R`` cannot exceed ``C``, so an
    oversubscribed machine (30 runnable threads on 2 cores) is read from the other side too: a busy loop's
    share of a core (:func:`cpu_share`, 1/15 there); the larger of ``(R + T) / C`` and ``1 / share`` is used.
    (The share alone, the former measure, read 1 in the middle case: one thread got a whole core while a
    2-thread run would not.) Where ``/proc/stat`` is missing, the share alone."""
    slower = 1.0 / max(cpu_share(), 0.05)
    others = other_load()
    if others is not None:
        cores = _cores()
        threads = max(1, min(torch.get_num_threads(), cores))
        slower = max(slower, (others + threads) / cores)
    return min(20.0, max(1.0, slower))


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
    """What a finished run measured: seconds before the first batch, of the data pass after the first batch
    (``pass_images`` images; 0: the whole pass of the work's images), after the pass, and of the first batch
    (``first_images`` images)."""

    start_s: float
    pass_s: float
    post_s: float
    contention: float = 1.0
    """:func:`contention` during the run (its mean)."""
    pass_images: int = 0
    first_s: float = 0.0
    first_images: int = 0


def _eigen_s(work: Work, r: Rates) -> float:
    """Seconds of the decompositions on an idle machine."""
    return work.eigen / r.eig


def _shrunk(values: list[float], default: float, multiplicative: bool) -> float:
    """The median of what ``n`` runs taught, pulled towards ``default`` as if two runs had seen it: one run on
    a busy machine is a noisy teacher (its speed varies by a factor of two over minutes)."""
    n = len(values)
    middle = float(stats.median(values))
    if multiplicative:
        return float(math.exp((n * math.log(max(middle, 1e-9)) + 2 * math.log(default)) / (n + 2)))
    return (n * middle + 2 * default) / (n + 2)


def record_run(cache_root: str | Path, work: Work, observed: Observed) -> None:
    """Keep a finished run's timings, so the next estimates learn from it (see the module docstring). ``work``
    needs its measured ``image_s`` for the pass to teach anything (the worker measures it with the run)."""
    path = _path(cache_root, work.device)
    r = rates(cache_root, work.device)
    busy = max(1.0, observed.contention)
    eigen_s = _eigen_s(work, r)  # idle machine
    post = observed.post_s / busy  # as on an idle machine
    entry = {"arch": work.arch, "variant": work.variant, "images": work.images, "when": time.time(),
             "start_s": observed.start_s / busy, "observed": asdict(observed)}
    timed = observed.pass_images or work.images  # the images of pass_s
    if timed > 0 and observed.pass_s > 0:  # the pass's time per image, as on an idle machine
        entry["image_s"] = observed.pass_s / timed / busy
    if post >= eigen_s:  # the decompositions went at the measured rate; the rest is per layer
        entry["layer_s"] = (post - eigen_s) / max(1, work.layers)
    else:  # slower decompositions than measured: they take all of the tail
        entry["layer_s"], entry["c_post"] = 0.0, post / eigen_s
    if work.image_s > 0 and timed > 0 and observed.pass_s > 0:  # the run's pass against its probe (same load)
        entry["c_pass"] = observed.pass_s / (timed * work.image_s)
    if work.image_s > 0 and observed.first_images > 0 and observed.first_s > 0:
        entry["c_first"] = observed.first_s / (observed.first_images * work.image_s)
    with _lock:
        data = _load(path)
        data.setdefault("rates", asdict(r))
        data["runs"] = (data.get("runs") or [])[-(MAX_RUNS - 1):] + [entry]
        _save(path, data)


def _learnt(runs: list[dict], arch: str) -> tuple[dict[str, float], str]:
    """The start time, per-layer tail and correction factors to use, and what they come from."""
    same = [run for run in runs if run.get("arch") == arch]
    chosen, basis = (same, "same architecture") if same else (runs, "other runs") if runs else ([], "measured rates only")
    learnt = dict(DEFAULTS)
    for name in DEFAULTS:
        values = [float(run[name]) for run in chosen[-20:] if name in run]
        if values:
            learnt[name] = _shrunk(values, DEFAULTS[name], multiplicative=name.startswith("c_"))
    return learnt, basis


def predict(work: Work, cache_root: str | Path) -> TimeEstimate:
    """The time of a run of ``work`` on this machine (see the module docstring)."""
    r = rates(cache_root, work.device)
    runs = _load(_path(cache_root, work.device)).get("runs") or []
    learnt, basis = _learnt(runs, work.arch)
    busy = contention() if work.device == "cpu" else 1.0  # the probe's image_s was measured at this load already
    first = min(work.batch, work.images)
    timed = work.images - first  # the pass after the first batch
    pass_s = learnt["c_pass"] * timed * work.image_s
    alike = [float(run["image_s"]) for run in runs[-MAX_RUNS:]
             if run.get("arch") == work.arch and run.get("variant") == work.variant and run.get("image_s")][-20:]
    if alike and timed > 0:  # whole passes of this very model and settings: minutes of measurement, not seconds
        history = float(stats.median(alike)) * busy * timed
        n = len(alike)
        pass_s = math.exp((n * math.log(history) + 2 * math.log(pass_s)) / (n + 2)) if pass_s > 0 else history
    post_s = busy * (work.layers * learnt["layer_s"] + learnt["c_post"] * _eigen_s(work, r))
    start_s = busy * learnt["start_s"] + learnt["c_first"] * first * work.image_s
    total = start_s + pass_s + post_s
    spread = SPREAD[basis]
    return TimeEstimate(seconds=total, low=total / spread, high=total * spread, start_s=start_s,
                        pass_s=pass_s, post_s=post_s, basis=basis)


def estimate_run_time(model_id: str, dataset_id: str, settings, cache_root: str | Path | None = None) -> TimeEstimate:
    """The time :func:`analysis.analyze` of these ids and settings would take here, as a job (plans the run and
    measures its pass on a few images: seconds)."""
    from .cache import ResultCache
    from .jobs.api import plan_request

    root = ResultCache(cache_root).root
    return predict(work_of(plan_request(model_id, dataset_id, settings)), root)
