r"""One image against the dataset's subspaces: how much of each layer's input it puts there, its own rank,
and where on the image the projected layer would lose it.

For one analysed layer ``y = W x + b`` (effective ``W``, ``d_out x d_in``) the image gives ``T`` input
vectors, the rows of ``X`` (``T x d_in``, float64): every token of a ViT's sequence, every output position's
unfolded patch of a convolution (exactly what the analysis captured, :class:`analysis.capture.LayerCapture`:
functional calls, padding inside the forward and the effective weight included). The dataset gives the
eigenvectors ``V_in`` of ``C_in`` and ``V_out`` of ``C_out`` (:mod:`analysis.compression.subspaces`);
``V_k`` are the top ``k_in = k(e_in)`` of ``V_in`` and ``U_k`` the top ``k_out = k(e_out)`` of ``V_out``.
With ``X_c = X - 1 mu^T`` for a centred analysis (``mu = s / N`` the dataset's mean input) and ``X_c = X``
otherwise:

- **energy fraction** ``f = ||X_c V_k||_F^2 / ||X_c||_F^2``: the share of the image's input energy inside the
  dataset's subspace (1 when every vector lies in it);
- **own rank** ``k_img(e_in)``: the smallest k whose top-k eigenvalues of ``X_c^T X_c`` hold ``e_in`` of its
  trace (the same rule as the dataset's ``k_in``, :func:`analysis.metrics.k_at_energy`);
- **per-vector loss** of the projected layer ``W' = P_out W P_in`` (``P_in = V_k V_k^T``, ``P_out = U_k U_k^T``),
  applied in factored form, ``W' x = U_k ((U_k^T W V_k)(V_k^T x))``, never as ``d x d`` projectors:

      l_t = ||(W - W') x_t||^2 / ||W X_c||_F^2,      sum_t l_t = ||(W - W') X_c||_F^2 / ||W X_c||_F^2,

  normalised by the image's own ``||W X_c||_F^2`` (the bias excluded: ``W'`` keeps ``b``, so the bias is never
  lost), which makes the sum this image's output-preservation error in the same definition as the table's
  ``preservation_error`` (which is the same ratio over the whole dataset). NaN when ``W X_c = 0``.

**Where the vectors lie** (:class:`TokenGrid`, from the call's input shape and the model):

- a convolution: its output grid ``H_out x W_out`` (``F.unfold`` order is row-major), from the input's
  ``H x W`` and the geometry of the real call, ``H_out = (H + p_top + p_bottom - dil (k - 1) - 1) // stride + 1``;
- a linear layer on ``(1, H, W, C)`` (Swin, ConvNeXt blocks): the ``H x W`` grid;
- a linear layer on a ViT sequence ``(1, T, C)`` with ``T = P + g_h g_w`` (``P`` = timm's
  ``num_prefix_tokens``: class, distillation, register tokens, reported separately by name) or ``T = g_h g_w``,
  ``(g_h, g_w)`` = ``patch_embed.grid_size``: the patch grid, row-major;
- anything else (one pooled vector, windowed attention, a sequence of another length, a layer called several
  times per forward): no heatmap, with the reason.

The image is run in float32 on the CPU whatever precision the analysis used; the dataset's subspaces come from
all the vectors the analysis counted (its token set), while the image's numbers are over all its vectors.
Consistency with the analysis: over the analysed images, ``sum_i l(i) ||W X_i||^2 / sum_i ||W X_i||^2`` is the
table's ``preservation_error``, and at ``e_in = 1`` every analysed image has ``f = 1`` up to the float32
rounding of the stored moments (about 1e-7).

Use::

    measured = open_analysis("3f2a")                 # the cached analysis and its layers' subspaces
    report = one_image(measured, 7, 0.95, 0.99)      # image 7 of the analysed selection
    report.table()                                   # layer, energy_fraction, own_rank, loss, ...
    report.layer("blocks.5.mlp.fc1").heatmap()       # (rows, cols) per-vector losses, or None
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .capture import ConvGeometry, LayerCapture, effective_parameters, rows_per_image
from .compression.subspaces import LayerSubspace, Measured, checked_plan, measure_plan, moments_key
from .cache import ResultCache
from .errors import AnalysisError, CacheError, SettingsError
from .metrics import k_at_energy
from .models.layers import LayerSpec
from .progress import ProgressCallback
from .result import Result, check_energy
from .spectra import CPU_EIGH_THREADS, SpectraProgress, cpu_threads

TABLE_COLUMNS = ["layer", "kind", "d_in", "vectors", "k_in", "own_rank", "energy_fraction", "loss",
                 "dataset_error", "grid", "status"]
"""Columns of :meth:`OneImage.table` (``loss``: this image's preservation error; ``dataset_error``: the dataset's)."""


# ------------------------------------------------------------------------------------------ where vectors lie
@dataclass(frozen=True)
class TokenGrid:
    """Where one layer's ``T`` input vectors of the image lie: ``prefix`` (names of the leading non-spatial
    tokens), then ``shape = (rows, cols)`` row-major; ``shape`` None when they have no place (``reason``)."""

    prefix: tuple[str, ...] = ()
    shape: tuple[int, int] | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        if self.shape is None:
            return f"no grid: {self.reason}"
        grid = f"{self.shape[0]}x{self.shape[1]}"
        return f"{', '.join(self.prefix)} + {grid}" if self.prefix else grid


def prefix_token_names(model: nn.Module) -> tuple[str, ...]:
    """Names of a timm ViT's prefix tokens in sequence order (class, distillation, registers), from
    ``num_prefix_tokens``; ``()`` for a model without them."""
    count = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if count <= 0:
        return ()
    names = []
    if getattr(model, "cls_token", None) is not None:
        names.append("class")
    if getattr(model, "dist_token", None) is not None:
        names.append("distillation")
    registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    names += [f"register {i + 1}" for i in range(registers)]
    if len(names) != count:  # a layout this rule does not know: name them by position
        names = [f"prefix {i}" for i in range(count)]
    return tuple(names)


def patch_grid(model: nn.Module) -> tuple[int, int] | None:
    """``patch_embed.grid_size`` of a timm ViT-like model, else None."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return None
    try:
        rows, cols = (int(g) for g in grid)
    except (TypeError, ValueError):
        return None
    return rows, cols


def token_grid(input_shape: tuple[int, ...], geometry: ConvGeometry | None, vectors: int,
               prefix: tuple[str, ...] = (), patches: tuple[int, int] | None = None, calls: int = 1) -> TokenGrid:
    """The :class:`TokenGrid` of one layer from the shape of its call's input (batch of one image), the
    convolution geometry (None for a linear layer), the number of vectors ``T``, the model's prefix-token names
    and patch grid (:func:`prefix_token_names`, :func:`patch_grid`), and how many calls the forward made."""
    if calls != 1:
        return TokenGrid(reason=f"the forward used this layer {calls} times; its vectors have no single grid")
    if vectors == 1:
        return TokenGrid(reason="one vector per image (pooled)")
    if geometry is not None:
        rows, cols = geometry.output_grid(int(input_shape[-2]), int(input_shape[-1]))
        if rows * cols != vectors:
            return TokenGrid(reason=f"{vectors} vectors do not fill the {rows}x{cols} output grid")
        return TokenGrid(shape=(rows, cols))
    if len(input_shape) == 4 and input_shape[0] == 1:
        rows, cols = int(input_shape[1]), int(input_shape[2])
        if rows * cols == vectors:
            return TokenGrid(shape=(rows, cols))
    if len(input_shape) == 3 and input_shape[0] == 1 and patches is not None:
        cells = patches[0] * patches[1]
        if vectors == cells + len(prefix):
            return TokenGrid(prefix=prefix, shape=patches)
        if vectors == cells:
            return TokenGrid(shape=patches)
    return TokenGrid(reason=f"its {vectors} vectors (input shape {tuple(input_shape)}) have no known place on the image")


# ------------------------------------------------------------------------------------------ capture
_CAPTURE_LOCK = threading.Lock()
"""A capture registers hooks on the model's modules; an app serves several sessions from threads that share
one loaded model, so captures run one at a time."""

@dataclass
class ImageInput:
    """One layer's input vectors for the image: ``rows`` ``(T, d_in)`` float64, the first call's input shape
    and geometry, and how many calls fed it."""

    rows: torch.Tensor
    input_shape: tuple[int, ...]
    geometry: ConvGeometry | None
    calls: int


def capture_image(model: nn.Module, specs: list[LayerSpec], image: torch.Tensor
                  ) -> tuple[dict[str, ImageInput], dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
    """Run ``model`` (CPU, float32, eval) on one image (``image.unsqueeze(0)`` is the model's input) and
    return each reached layer's exact input vectors (:class:`ImageInput`) and effective ``(W, b)`` (float64)
    from the same forward."""
    by_name = {s.name: s for s in specs}
    inputs: dict[str, ImageInput] = {}

    def collect(name: str, x: torch.Tensor, geometry: ConvGeometry | None) -> None:
        grouped = rows_per_image(x.detach().float(), geometry)
        rows = grouped.reshape(-1, grouped.shape[-1]).to(torch.float64)
        seen = inputs.get(name)
        if seen is None:
            inputs[name] = ImageInput(rows, tuple(x.shape), geometry, 1)
        else:
            seen.rows, seen.calls = torch.cat([seen.rows, rows]), seen.calls + 1

    with _CAPTURE_LOCK:  # hooks live on the (shared) modules: one capture at a time per process
        model.cpu().eval()
        with LayerCapture(specs, collect, check=False) as capture, torch.inference_mode():
            model(image.unsqueeze(0).float())
        capture.end_discovery()
    effective = {name: effective_parameters(by_name[name], capture.findings.get(name)) for name in inputs}
    return inputs, effective


# ------------------------------------------------------------------------------------------ the maths
@dataclass
class LayerImage:
    """One layer's numbers for the image (see the module docstring). ``losses`` has one entry per vector, in
    the order of ``grid`` (prefix tokens first)."""

    layer: str
    kind: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int
    energy_fraction: float
    own_rank: int
    loss: float
    losses: np.ndarray
    grid: TokenGrid
    norm: float
    """``||W X_c||_F^2``: what the losses are divided by."""
    dataset_error: float = float("nan")
    status: str = "ok"

    @property
    def vectors(self) -> int:
        return int(self.losses.size)

    def heatmap(self) -> np.ndarray | None:
        """The losses of the spatial vectors on their grid ``(rows, cols)``, or None (``grid.reason``)."""
        if self.grid.shape is None:
            return None
        return self.losses[len(self.grid.prefix):].reshape(self.grid.shape)

    def prefix_losses(self) -> dict[str, float]:
        """The loss of each prefix token, by name."""
        return {name: float(self.losses[i]) for i, name in enumerate(self.grid.prefix)}


def layer_image(rows: torch.Tensor, weight: torch.Tensor, subspace: LayerSubspace, energy_in: float,
                energy_out: float, grid: TokenGrid | None = None) -> LayerImage:
    """The energy fraction, own rank and per-vector losses of one layer for one image (module docstring):
    ``rows`` ``(T, d_in)`` its input vectors, ``weight`` the effective ``d_out x d_in`` weight."""
    x = rows.to(torch.float64)
    if subspace.mean is not None:
        x = x - subspace.mean.to(torch.float64)[None, :]
    w = weight.to(torch.float64)
    k_in = k_at_energy(subspace.eig_in.values.numpy(), energy_in)
    k_out = k_at_energy(subspace.eig_out.values.numpy(), energy_out)
    v_in = subspace.eig_in.vectors[:, :k_in].to(torch.float64)
    v_out = subspace.eig_out.vectors[:, :k_out].to(torch.float64)
    total = float(x.square().sum())
    coordinates = x @ v_in  # T x k_in
    fraction = float(coordinates.square().sum()) / total if total > 0 else float("nan")
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # the smaller Gram: same non-zero eigenvalues
    with cpu_threads(CPU_EIGH_THREADS):  # LAPACK on shared cores: one thread is ~10x faster (analysis.spectra)
        own = torch.linalg.eigvalsh(gram).flip(0).numpy()
    own_rank = k_at_energy(own, energy_in)
    outputs = x @ w.T  # T x d_out: W x_t
    projected = (coordinates @ (v_in.T @ w.T @ v_out)) @ v_out.T  # W' x_t = U_k (U_k^T W V_k) V_k^T x_t
    per_vector = (outputs - projected).square().sum(1)
    norm = float(outputs.square().sum())
    losses = (per_vector / norm).numpy() if norm > 0 else np.full(x.shape[0], np.nan)
    spec = subspace.spec
    return LayerImage(layer=spec.name, kind=spec.kind, d_in=spec.d_in, d_out=spec.d_out, k_in=k_in, k_out=k_out,
                      energy_fraction=fraction, own_rank=own_rank, loss=float(np.sum(losses)), losses=losses,
                      grid=grid or TokenGrid(reason="no grid given"), norm=norm)


# ------------------------------------------------------------------------------------------ one image, every layer
@dataclass
class OneImage:
    """Every analysed layer's numbers for image ``index`` of the analysis ``key`` (at ``energy_in/out``);
    ``image`` is the model's input ``(C, H, W)``, ``missing`` the layers the image's forward did not reach."""

    key: str
    index: int
    label: int
    image: torch.Tensor
    energy_in: float
    energy_out: float
    layers: list[LayerImage]
    missing: dict[str, str] = field(default_factory=dict)

    def layer(self, name: str) -> LayerImage:
        for item in self.layers:
            if item.layer == name:
                return item
        if name in self.missing:
            raise SettingsError(f"layer {name!r} has no numbers for this image: {self.missing[name]}")
        known = ", ".join(item.layer for item in self.layers[:8])
        raise SettingsError(f"unknown layer {name!r} for this image; analysed layers include {known}"
                            + (" ..." if len(self.layers) > 8 else ""))

    def table(self) -> pd.DataFrame:
        """One row per layer, :data:`TABLE_COLUMNS`."""
        return pd.DataFrame([{
            "layer": item.layer, "kind": item.kind, "d_in": item.d_in, "vectors": item.vectors, "k_in": item.k_in,
            "own_rank": item.own_rank, "energy_fraction": item.energy_fraction, "loss": item.loss,
            "dataset_error": item.dataset_error, "grid": item.grid.label, "status": item.status,
        } for item in self.layers], columns=TABLE_COLUMNS)


def analyse_image(model: nn.Module, subspaces: dict[str, LayerSubspace], image: torch.Tensor, energy_in: float,
                  energy_out: float, *, layers: list[str] | None = None) -> tuple[list[LayerImage], dict[str, str]]:
    """:func:`layer_image` of every layer in ``subspaces`` (or of ``layers``) for one image, with grids;
    returns them in depth order and the layers the image's forward never reached (name -> reason)."""
    check_energy(energy_in, "energy_in")
    check_energy(energy_out, "energy_out")
    if layers is not None:
        unknown = [name for name in layers if name not in subspaces]
        if unknown:
            raise SettingsError(f"unknown layer {unknown[0]!r}; analysed layers: "
                                f"{', '.join(list(subspaces)[:8])}{' ...' if len(subspaces) > 8 else ''}")
        subspaces = {name: subspaces[name] for name in layers}
    inputs, effective = capture_image(model, [s.spec for s in subspaces.values()], image)
    prefix, patches = prefix_token_names(model), patch_grid(model)
    found, missing = [], {}
    for name, subspace in subspaces.items():
        seen = inputs.get(name)
        if seen is None:
            missing[name] = "the image's forward never reached it"
            continue
        grid = token_grid(seen.input_shape, seen.geometry, seen.rows.shape[0], prefix, patches, seen.calls)
        found.append(layer_image(seen.rows, effective[name][0], subspace, energy_in, energy_out, grid))
    return found, missing


def open_analysis(key: str, *, cache_dir: str | None = None, compute_missing: bool = True,
                  progress: ProgressCallback | None = None, eigen_progress: SpectraProgress | None = None) -> Measured:
    """The cached analysis ``key`` (a unique prefix is enough) with its layers' subspaces: from its stored
    moments, or those of its keep-moments twin (computed and stored here when absent and ``compute_missing``;
    else :class:`~analysis.compression.subspaces.MomentsMissing`). A missing or damaged entry: :class:`CacheError`.
    ``progress`` follows that data pass, ``eigen_progress(layers_done, layers_total, elapsed_s)`` the
    decompositions."""
    cache = ResultCache(cache_dir)
    full = cache.resolve(key)
    result = cache.load(full)
    if result is None:
        raise CacheError(f"cache entry {full} is damaged or incomplete; run the analysis again to recompute it")
    measured = measure_plan(checked_plan(result), cache_dir=cache_dir, compute_missing=compute_missing,
                            progress=progress, eigen_progress=eigen_progress)
    measured.result = result  # the analysis asked for (its twin holds the same spectra and the moments)
    return measured


def subspaces_ready(result: Result, cache_dir: str | None = None) -> tuple[bool, str]:
    """``(whether the moments giving result's eigenvectors are stored, the key that holds or will hold them)``;
    looks for the files only (no model, no moments read)."""
    key = moments_key(result)
    folder = ResultCache(cache_dir).entry_dir(key)  # cheap: the sha256 check of the files happens on load
    return (folder / "manifest.json").is_file() and (folder / "moments.safetensors").is_file(), key


def one_image(measured: Measured, index: int, energy_in: float | None = None, energy_out: float | None = None,
              *, layers: list[str] | None = None) -> OneImage:
    """Image ``index`` (0-based, into the analysed dataset selection) of ``measured`` (:func:`open_analysis`)
    against its subspaces at ``energy_in``/``energy_out`` (default: the analysis' own)."""
    result = measured.result
    dataset = measured.dataset
    size = len(dataset)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < size:
        raise SettingsError(f"image index {index!r} is out of range: the analysis has {size} images (0 to {size - 1})")
    e_in = result.energy_in if energy_in is None else float(energy_in)
    e_out = result.energy_out if energy_out is None else float(energy_out)
    image, label = dataset[int(index)]
    found, missing = analyse_image(measured.loaded.model, measured.subspaces, image, e_in, e_out, layers=layers)
    table = result.at_energy(e_in, e_out).layers.set_index("layer")
    for item in found:
        if item.layer in table.index:
            item.dataset_error = float(table.at[item.layer, "preservation_error"])
            item.status = str(table.at[item.layer, "status"])
    return OneImage(key=result.key, index=int(index), label=int(label), image=image, energy_in=e_in,
                    energy_out=e_out, layers=found, missing=missing)


def display_image(image: torch.Tensor, data_config: dict | None) -> np.ndarray:
    """The model's input ``(C, H, W)`` as the model sees it, de-normalised with the data config's ``mean`` and
    ``std``: ``(H, W, 3)`` uint8 (one channel repeated to three)."""
    x = image.detach().to(torch.float64).cpu()
    config = data_config or {}
    channels = x.shape[0]
    mean = torch.as_tensor(config.get("mean", (0.0,) * channels), dtype=torch.float64).reshape(-1, 1, 1)
    std = torch.as_tensor(config.get("std", (1.0,) * channels), dtype=torch.float64).reshape(-1, 1, 1)
    x = (x * std + mean).clamp(0.0, 1.0)
    if channels == 1:
        x = x.repeat(3, 1, 1)
    return (x[:3].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


__all__ = ["AnalysisError", "ImageInput", "LayerImage", "OneImage", "TokenGrid", "analyse_image", "capture_image",
           "display_image", "layer_image", "one_image", "open_analysis", "patch_grid",
           "prefix_token_names", "subspaces_ready", "token_grid"]
