"""What a run will cost, estimated from the layer shapes before any data is read or any forward is run.

For the analysed layers (``d_in``, ``d_out``, and ``T`` input vectors per image) and the settings:

Memory (bytes, peak of the run):

- running statistics: ``C_in`` (``d_in^2``) and ``s`` per layer, float64 on the CPU, float32 on a GPU
  (where the float64 CPU copy, ``8 d_in^2``, is made once the pass is over);
- during the first batch, the self-check's sums (:mod:`analysis.capture`): ``C_in`` again and the real
  outputs' ``Y^T Y`` (``d_out^2``), or the rows ``Y`` themselves while fewer than ``d_out`` (``B T d_out``);
- transient unfold of a convolution's input in one chunk: ``rows x d_in`` float32, twice (unfold and its
  contiguous copy), with ``rows = min(B T, max(65536, T))`` (the collector's chunking);
- after the pass, all at once: the eigenvectors of ``C_in`` (``8 d_in^2``) and the output side, which is
  ``C_out`` and its eigenvectors (``2 * 8 d_out^2``) where ``d_out <= m = d_in + 1`` (with a bias; ``d_in``
  without), and only the ``m``-sized problem where ``d_out > m`` (:func:`analysis.spectra.output_eigen`: ``G``,
  ``8 m^2``, and the ``d_out x m`` eigenvectors, ``8 d_out m``; no ``d_out x d_out`` matrix: a 21,841-class head
  on 320 features costs 56 MB, not 7.6 GB); plus the eigen-solver's stacked copy and workspace of the
  largest problem (``2 * 8 d^2``, ``d`` the largest of ``d_in`` and the output problem's size, plus
  ``2 * 8 d_out m`` for the small problem's ``K`` and QR), once per CPU worker
  (:data:`analysis.spectra.CPU_WORKERS`) on the CPU;
- the model's parameters (float32).

The peak is the parameters and running sums plus the larger of the first batch's extra and the spectra
stage's.

Time (seconds, rough): statistics ``sum_layers N T d_in^2 / R_stats`` and eigen-decompositions
``sum_layers (d_in^3 + o^3 + d_out o^2) / R_eig`` (``o`` the output problem's size; ``d_out o^2``, the small
problem's products, only where ``o = m < d_out``), with rates measured on a busy 2-core CPU (about 4e9 and
1e9 per second) and nominal GPU rates. The figures are meant for "about X s, Y GB" and for refusing runs that
cannot fit; they are not benchmarks.

``T`` comes from a shape-only pass: the model runs once on a meta-device input (no memory, no arithmetic),
hooks record each layer's input shape; if a model cannot run on the meta device, a convolution is assumed
to see ``H W / 16`` positions and a Linear layer ``H W / 256`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .durations import rough_duration
from .errors import AnalysisError
from .models.layers import LayerSpec
from . import spectra

MAX_ROWS_PER_CHUNK = 1 << 16
"""The statistics collector's chunk of unfolded rows (kept equal to :mod:`analysis.statistics`)."""

RATES = {
    "cpu": {"stats": 4e9, "eig": 1e9},
    "cuda": {"stats": 5e11, "eig": 2e10},
}
"""Rough throughputs: rows*d^2 per second for statistics, d^3 per second for eigen-decompositions."""

USABLE_FRACTION = 0.85
"""A run may plan to use at most this share of the memory available now."""


class CostError(AnalysisError):
    """A run that would not fit the machine (refused before any work)."""


@dataclass(frozen=True)
class LayerCost:
    name: str
    d_in: int
    d_out: int
    tokens_per_image: int
    memory_bytes: int
    m: int = 0
    """Size of the augmented input problem (``d_in + 1`` with a bias)."""


@dataclass(frozen=True)
class CostEstimate:
    """Estimated peak memory (bytes) and time (seconds) of one run, and the layers that dominate them."""

    memory_bytes: int
    gpu_memory_bytes: int
    seconds: float
    stats_seconds: float
    eigen_seconds: float
    widest_layer: str
    widest_d: int
    layers: tuple[LayerCost, ...] = field(default=(), repr=False)
    available_bytes: int | None = None
    available_gpu_bytes: int | None = None

    @property
    def fits(self) -> bool:
        cpu_ok = self.available_bytes is None or self.memory_bytes <= USABLE_FRACTION * self.available_bytes
        gpu_ok = self.available_gpu_bytes is None or self.gpu_memory_bytes <= USABLE_FRACTION * self.available_gpu_bytes
        return cpu_ok and gpu_ok

    def summary(self) -> str:
        """One line: ``about 12 s, 0.4 GB (widest layer blocks.0.mlp.fc1, d 3072)``."""
        gpu = f" + {_gb(self.gpu_memory_bytes)} on the GPU" if self.gpu_memory_bytes else ""
        return (f"about {rough_duration(self.seconds)}, {_gb(self.memory_bytes)}{gpu} "
                f"(widest layer {self.widest_layer}, d {self.widest_d})")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def available_memory() -> int | None:
    """Bytes of RAM available now (``MemAvailable`` of /proc/meminfo, or psutil), None if unknown."""
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_gpu_memory(device: str) -> int | None:
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def tokens_per_image(model: nn.Module, specs: list[LayerSpec], input_size: tuple[int, int, int]) -> dict[str, int]:
    """Input vectors one image gives each layer, from a shape-only (meta-device) forward; see the module doc."""
    from .models.shapes import meta_forward

    channels, height, width = (int(v) for v in input_size)
    found: dict[str, int] = {}

    def hook_for(spec: LayerSpec):
        def hook(module, args):
            x = args[0]
            if isinstance(module, nn.Conv2d):
                h, w = x.shape[-2:]
                kh, kw = module.kernel_size
                sh, sw = module.stride
                ph, pw = (module.padding if isinstance(module.padding, tuple) else (0, 0))
                out_h = max(1, (int(h) + 2 * int(ph) - kh) // sh + 1)
                out_w = max(1, (int(w) + 2 * int(pw) - kw) // sw + 1)
                found.setdefault(spec.name, out_h * out_w)
            else:
                found.setdefault(spec.name, max(1, int(x[0].numel()) // int(x.shape[-1])) if x.dim() > 1 else 1)
        return hook

    handles = [s.module.register_forward_pre_hook(hook_for(s)) for s in specs]
    try:
        meta_forward(model, (channels, height, width))  # a model that cannot run there: the fallback below
    finally:
        for handle in handles:
            handle.remove()
    for spec in specs:
        if spec.name not in found:
            conv = isinstance(spec.module, nn.Conv2d)
            found[spec.name] = max(1, height * width // (16 if conv else 256))
    return found


def estimate(
    model: nn.Module,
    specs: list[LayerSpec],
    *,
    input_size: tuple[int, int, int],
    images: int,
    batch_size: int,
    device: str = "cpu",
    tokens_cap: int | None = None,
    tokens: dict[str, int] | None = None,
    uncertainty: bool = False,
) -> CostEstimate:
    """The cost of analysing ``specs`` (applicable, selected layers) of ``model`` on ``images`` images
    (``tokens``: :func:`tokens_per_image` when already known). ``uncertainty`` (:mod:`analysis.uncertainty`)
    doubles the running sums (two halves) and adds eigenvalue-only decompositions: two halves and up to
    :data:`~analysis.uncertainty.SNAPSHOTS` snapshots, each about a fifth of a decomposition with vectors."""
    from .uncertainty import SNAPSHOTS

    halves = 2 if uncertainty else 1
    specs = [s for s in specs if s.applicable]
    on_gpu = str(device).startswith("cuda")
    if tokens is None:
        tokens = tokens_per_image(model, specs, input_size) if specs else {}
    acc_bytes = 4  # the GPU accumulator (the CPU one is the float64 C_in counted below)
    params = sum(p.numel() for p in model.parameters()) * 4
    layers, sums, gpu_resident, transient, check, spectra_bytes, largest = [], 0, 0, 0, 0, 0, 0
    stats_work = eig_work = 0.0
    for spec in specs:
        t = tokens.get(spec.name, 1)
        used = min(t, tokens_cap) if tokens_cap else t
        out_size, out_bytes, workspace = output_problem(spec)
        sq_in = spec.d_in ** 2
        sums += 8 * halves * sq_in  # C_in (its float64 CPU copy on a GPU run)
        gpu_resident += halves * acc_bytes * sq_in if on_gpu else 0
        check += 8 * (sq_in + min(batch_size * used, spec.d_out) * spec.d_out)
        own = 8 * sq_in + out_bytes  # the eigenvectors of C_in and the output side
        spectra_bytes += own
        largest = max(largest, 16 * sq_in, workspace)
        if isinstance(spec.module, nn.Conv2d):
            rows = min(batch_size * t, max(MAX_ROWS_PER_CHUNK, t))
            transient = max(transient, 2 * 4 * rows * spec.d_in)
        stats_work += images * used * sq_in
        small = out_size < spec.d_out
        eig = spec.d_in ** 3 + out_size ** 3 + (spec.d_out * out_size ** 2 if small else 0)
        eig_work += eig * (1 + 0.2 * (2 + SNAPSHOTS) * (halves - 1))
        layers.append(LayerCost(spec.name, spec.d_in, spec.d_out, t, 8 * halves * sq_in + own,
                                spec.d_in + spec.has_bias))
    after = spectra_bytes + largest * (1 if on_gpu else spectra.CPU_WORKERS)
    memory = int(params + sums + max(check + transient, after))
    rates = RATES["cuda" if on_gpu else "cpu"]
    stats_s, eig_s = stats_work / rates["stats"], eig_work / rates["eig"]
    widest = max(specs, key=lambda s: s.width, default=None)
    return CostEstimate(
        memory_bytes=memory, gpu_memory_bytes=int(gpu_resident + (transient if on_gpu else 0)),
        seconds=stats_s + eig_s, stats_seconds=stats_s, eigen_seconds=eig_s,
        widest_layer=widest.name if widest else "", widest_d=widest.width if widest else 0,
        layers=tuple(layers), available_bytes=available_memory(), available_gpu_bytes=available_gpu_memory(device),
    )


def check_fits(estimate_: CostEstimate, specs: list[LayerSpec], model_id: str, rebuild) -> None:
    """Raise :class:`CostError` with a one-line message when ``estimate_`` does not fit this machine.

    ``rebuild(max_width)`` returns the estimate with layers wider than ``max_width`` skipped; it is used to
    name the largest width limit (``max_width``) that fits."""
    if estimate_.fits:
        return
    limit = estimate_.available_bytes if estimate_.memory_bytes > USABLE_FRACTION * (estimate_.available_bytes or 0) \
        else estimate_.available_gpu_bytes
    where = "RAM" if limit == estimate_.available_bytes else "GPU memory"
    need = estimate_.memory_bytes if where == "RAM" else estimate_.gpu_memory_bytes
    widths = sorted({s.width for s in specs if s.applicable}, reverse=True)
    suggestion = None
    for width in widths[1:]:
        if rebuild(width).fits:
            skipped = sum(1 for s in specs if s.applicable and s.width > width)
            suggestion = (f"skip layers wider than {width} (max_width={width}; skips {skipped} "
                          f"layer{'s' * (skipped != 1)})")
            break
    if suggestion is None:
        suggestion = ("analyse only some layers with a layer filter such as 'blocks.*.attn.qkv' (layers=...), or use "
                      "a machine with more memory")
    else:
        suggestion += ", or analyse only some layers with a layer filter (layers=...)"
    raise CostError(
        f"{model_id} would need about {_gb(need)} of {where} but {_gb(limit or 0)} is available; its widest layer "
        f"{estimate_.widest_layer} (d {estimate_.widest_d}) alone needs about {_gb(_alone(estimate_))}: "
        f"{suggestion}"
    )


def _alone(estimate_: CostEstimate) -> int:
    """The widest layer's own statistics, vectors and eigen-solver workspace."""
    layer = next((c for c in estimate_.layers if c.name == estimate_.widest_layer), None)
    if layer is None:
        return 0
    _size, _bytes, workspace = _output_problem(layer.d_in, layer.d_out, layer.m)
    return layer.memory_bytes + max(16 * layer.d_in ** 2, workspace)


def output_problem(spec: LayerSpec) -> tuple[int, int, int]:
    """``(size, bytes, workspace)`` of a layer's output decomposition (see the module docstring)."""
    return _output_problem(spec.d_in, spec.d_out, spec.d_in + spec.has_bias)


def _output_problem(d_in: int, d_out: int, m: int) -> tuple[int, int, int]:
    if spectra.uses_small_problem(d_out, m):
        return m, 8 * (m ** 2 + d_out * m), 16 * m ** 2 + 16 * d_out * m
    return d_out, 2 * 8 * d_out ** 2, 16 * d_out ** 2


def estimate_run(model_id: str, dataset_id: str, settings) -> CostEstimate:
    """The cost of ``analyze(model_id, dataset_id, settings)`` (loads the model and the dataset handle, reads
    no image): for showing "about X s, Y GB" before a run."""
    from .engine import plan

    the_plan = plan(model_id, dataset_id, settings)
    return estimate_plan(the_plan)


def estimate_plan(the_plan, specs: list[LayerSpec] | None = None, tokens: dict[str, int] | None = None) -> CostEstimate:
    """The cost of a :class:`analysis.engine.Plan` (its selected layers, or ``specs``)."""
    settings = the_plan.settings
    if specs is None:
        _all, specs = selected_layers(the_plan)
    return estimate(
        the_plan.loaded.model, specs, input_size=tuple(the_plan.loaded.data_config["input_size"]),
        images=len(the_plan.dataset), batch_size=settings.effective_batch_size(), device=str(settings.device),
        tokens_cap=settings.tokens_per_image, tokens=tokens, uncertainty=settings.uncertainty,
    )


def selected_layers(the_plan) -> tuple[list[LayerSpec], list[LayerSpec]]:
    """Every layer of the plan's model and the ones its settings select (``max_width``, ``layers``); a
    selection that leaves nothing to analyse is a :class:`~analysis.errors.SettingsError` naming the options."""
    from .errors import SettingsError
    from .models import describe_layers
    from .models.layers import select_layers

    settings = the_plan.settings
    all_specs = describe_layers(the_plan.loaded.model, the_plan.loaded.data_config.get("input_size"))
    selected, _ = select_layers(all_specs, settings.max_width, settings.layers)
    if not any(s.applicable for s in selected):
        raise SettingsError(
            f"no layer of {the_plan.loaded.model_id} is left to analyse with "
            + " and ".join(o for o in (settings.layers and f"the layer filter '{','.join(settings.layers)}'",
                                       settings.max_width and f"the width limit {settings.max_width}") if o)
            + f"; its layers are named like {next((s.name for s in all_specs if s.applicable), '?')}"
        )
    return all_specs, selected


def guard_plan(the_plan) -> CostEstimate:
    """Estimate the plan's cost and refuse it at once (:class:`CostError`) if it cannot fit this machine."""
    from .models.layers import select_layers

    settings = the_plan.settings
    all_specs, selected = selected_layers(the_plan)
    tokens = tokens_per_image(the_plan.loaded.model, [s for s in selected if s.applicable],
                              tuple(the_plan.loaded.data_config["input_size"]))
    result = estimate_plan(the_plan, selected, tokens)

    def rebuild(width: int) -> CostEstimate:
        narrower = min(width, settings.max_width) if settings.max_width else width
        return estimate_plan(the_plan, select_layers(all_specs, narrower, settings.layers)[0], tokens)

    check_fits(result, selected, the_plan.loaded.model_id, rebuild)
    return result
