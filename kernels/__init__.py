r"""Second-moment kernels: the heavy inner loop of every analysis.

For activations ``x`` (``n`` tokens x ``d`` features) each call adds, in place::

    acc    += X^T X      (d x d, float32; lower triangle + diagonal defined)
    colsum += X^T 1      (length d, optional)

``x`` may be bfloat16, float16 or float32, any ``n >= 0`` and ``d >= 1``, with any row stride (a
non-contiguous row-slice view is fine; a tensor without unit column stride is copied). 16-bit values are
multiplied exactly and accumulated in float32; float32 values use full-precision products. The strict
upper triangle of ``acc`` is unspecified (Triton leaves it mostly untouched, torch fills it); call
:func:`symmetrize` for the full matrix.

Backends (see :mod:`kernels.backend`): ``"triton"`` (CUDA, or the CPU interpreter under
``TRITON_INTERPRET=1``; :mod:`kernels.triton_second_moment`), ``"torch"`` (anywhere;
:mod:`kernels.reference`, which also accepts float64 accumulators). ``backend=None``/``"auto"`` picks
Triton on CUDA; ``ANALYSIS_KERNEL_BACKEND=triton|torch|auto`` forces the choice for callers that pass
``None``. A missing Triton install falls back to torch.
"""

from __future__ import annotations

import torch

from ._validation import check_x
from .backend import BACKENDS, ENV_VAR, available_backends, resolve_backend, triton_module
from .reference import second_moment_torch, symmetrize


def second_moment(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Add ``X^T X`` into ``acc`` (lower triangle + diagonal) and ``X^T 1`` into ``colsum``; return ``acc``.

    Args:
        x: ``n x d`` activations, bfloat16/float16/float32, ``stride(1) == 1`` preferred.
        acc: ``d x d`` float32 running sum on x's device, or ``None`` to start from zeros. float64 is
            accepted by the torch backend only (``auto`` then selects torch).
        colsum: optional length-``d`` float32 running column sum, updated in the same pass.
        backend: ``"triton"``, ``"torch"``, ``"auto"`` or ``None`` (see :mod:`kernels.backend`).

    ``n == 0`` leaves ``acc`` and ``colsum`` unchanged. Bad shapes, dtypes or devices raise ``ValueError``.
    """
    x = check_x(x)
    wide = any(t is not None and isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in (acc, colsum))
    name = resolve_backend(x, backend, float64_accumulator=wide)
    if name == "triton":
        module = triton_module()
        assert module is not None  # resolve_backend only returns "triton" when it imports
        return module.second_moment_triton(x, acc, colsum)
    return second_moment_torch(x, acc, colsum)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "resolve_backend",
    "second_moment",
    "second_moment_torch",
    "symmetrize",
]
