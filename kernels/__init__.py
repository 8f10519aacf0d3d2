r"""Second-moment kernels: the heavy inner loop of every analysis.

For activations ``x`` (``n`` tokens x ``d`` features) each call adds, in place::

    acc    += X^T X      (d x d, float32; lower triangle + diagonal defined)
    colsum += X^T 1      (length d, optional)

``x`` may be bfloat16, float16 or float32, any ``n >= 0`` and ``d >= 1``, with any row stride (a
non-contiguous row-slice view is fine; a tensor without unit column stride is copied). 16-bit values are
multiplied exactly and accumulated in float32; float32 values use full-precision products. The strict
upper triangle of ``acc`` is unspecified (Triton and the default CPU method leave most of it untouched); call
:func:`symmetrize` for the full matrix.

:func:`second_moments` takes several ``(x, acc, colsum)`` at once (the collector's two split halves): on the
CPU their work is one set of single-threaded tasks (:mod:`kernels.cpu_pool`). On the Triton backend the
deterministic mode (``ANALYSIS_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``) gives the
same bits for the same input (:mod:`kernels.triton_second_moment`); ``python -m kernels.aot`` reviews the
kernel's builds for Hopper and Ampere without a GPU (:mod:`kernels.aot`).

Backends (see :mod:`kernels.backend`): ``"triton"`` (CUDA, or the CPU interpreter under
``TRITON_INTERPRET=1``; :mod:`kernels.triton_second_moment`), ``"torch"`` (anywhere;
:mod:`kernels.reference`, which also accepts float64 accumulators). ``backend=None``/``"auto"`` picks
Triton on CUDA; ``ANALYSIS_KERNEL_BACKEND=triton|torch|auto`` forces the choice for callers that pass
``None``. A missing Triton install falls back to torch.

float32 activations under an autocast (``fp32_inputs``): a Linear or Conv running under
``torch.autocast(dtype=bfloat16)`` multiplies the bf16 rounding of a float32 input (under bf16 autocast
LayerNorm outputs float32, so qkv, fc1, patch embedding and head see float32). With
``fp32_inputs="autocast"`` (the default) such inputs are rounded to the active autocast dtype (bfloat16 or
float16; or, where the caller has switched autocast off around the statistics, the dtype it declared
with :func:`layer_precision`, as the engine does) before the product, on both backends, so the statistic is that of what the layer really
multiplies, and the Triton kernel runs on the tensor cores. ``fp32_inputs="exact"`` keeps every float32
bit (the Triton kernel then multiplies in float32: slower). The environment variable
``ANALYSIS_FP32_INPUTS=exact|autocast`` sets it for callers that pass ``None``. Without an active autocast
(and for 16-bit inputs) both settings are the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Sequence

import torch

from ._validation import check_x
from .backend import BACKENDS, ENV_VAR, available_backends, resolve_backend, triton_module
from .reference import second_moment_torch, second_moments_torch, symmetrize


FP32_INPUTS_ENV: str = "ANALYSIS_FP32_INPUTS"
FP32_INPUTS: tuple[str, ...] = ("autocast", "exact")

_LAYER_PRECISION: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("layer_precision", default=None)


@contextlib.contextmanager
def layer_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Declare that the analysed layers run under an autocast to ``dtype`` (``None``: no autocast).

    The statistics switch autocast off around their own products (so that they stay float32), which hides
    the forward's autocast from :func:`fp32_rounding`; the engine therefore declares its precision here
    for the duration of the data loop."""
    token = _LAYER_PRECISION.set(dtype)
    try:
        yield
    finally:
        _LAYER_PRECISION.reset(token)


def fp32_rounding(x: torch.Tensor, fp32_inputs: str | None = None) -> torch.dtype | None:
    """The dtype float32 ``x`` is rounded to before its product (see the module docstring), or ``None``:
    the active autocast's dtype, else the one declared by :func:`layer_precision`, when 16-bit."""
    choice = fp32_inputs if fp32_inputs is not None else (os.environ.get(FP32_INPUTS_ENV, "").strip().lower() or "autocast")
    if choice not in FP32_INPUTS:
        raise ValueError(f"fp32_inputs (or {FP32_INPUTS_ENV}) must be one of {FP32_INPUTS}, got {choice!r}")
    if choice == "exact" or x.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = _LAYER_PRECISION.get()
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def second_moment(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    fp32_inputs: str | None = None,
) -> torch.Tensor:
    """Add ``X^T X`` into ``acc`` (lower triangle + diagonal) and ``X^T 1`` into ``colsum``; return ``acc``.

    Args:
        x: ``n x d`` activations, bfloat16/float16/float32, ``stride(1) == 1`` preferred.
        acc: ``d x d`` float32 running sum on x's device, or ``None`` to start from zeros. float64 is
            accepted by the torch backend only (``auto`` then selects torch).
        colsum: optional length-``d`` float32 running column sum, updated in the same pass.
        backend: ``"triton"``, ``"torch"``, ``"auto"`` or ``None`` (see :mod:`kernels.backend`).
        fp32_inputs: ``"autocast"``, ``"exact"`` or ``None`` (the environment's choice, else autocast): whether
            float32 ``x`` is rounded to the active autocast dtype first (see the module docstring).

    ``n == 0`` leaves ``acc`` and ``colsum`` unchanged. Bad shapes, dtypes or devices raise ``ValueError``.
    """
    x = check_x(x)
    wide = any(t is not None and isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in (acc, colsum))
    name = resolve_backend(x, backend, float64_accumulator=wide)
    round_to = fp32_rounding(x, fp32_inputs)
    if name == "triton":
        module = triton_module()
        assert module is not None  # resolve_backend only returns "triton" when it imports
        return module.second_moment_triton(x, acc, colsum, round_to=round_to)
    return second_moment_torch(x, acc, colsum, round_to=round_to)


def second_moments(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    *,
    backend: str | None = None,
    fp32_inputs: str | None = None,
) -> list[torch.Tensor]:
    """:func:`second_moment` of several ``(x, acc, colsum)`` with distinct accumulators (e.g. the two split
    halves of one layer call); returns their accumulators. On the CPU's default method their work is one set of
    tasks on the single-threaded workers (:func:`kernels.reference.second_moments_torch`), waited for once;
    on the Triton backend each part is one launch, as with :func:`second_moment`."""
    if not parts:
        return []
    xs = [check_x(x) for x, _, _ in parts]
    names = {resolve_backend(x, backend, float64_accumulator=any(
        isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in (acc, colsum)))
        for x, (_, acc, colsum) in zip(xs, parts)}
    if names == {"torch"} and len({fp32_rounding(x, fp32_inputs) for x in xs}) == 1:
        return second_moments_torch([(x, acc, colsum) for x, (_, acc, colsum) in zip(xs, parts)],
                                    round_to=fp32_rounding(xs[0], fp32_inputs))
    return [second_moment(x, acc, colsum, backend=backend, fp32_inputs=fp32_inputs) for x, (_, acc, colsum)
            in zip(xs, parts)]


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "FP32_INPUTS",
    "FP32_INPUTS_ENV",
    "available_backends",
    "fp32_rounding",
    "layer_precision",
    "resolve_backend",
    "second_moment",
    "second_moment_torch",
    "second_moments",
    "symmetrize",
]
