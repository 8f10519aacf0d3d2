"""Argument checks shared by every backend of :func:`kernels.second_moment`.

The contract (see :mod:`kernels`):

* ``x``: a 2-D tensor ``n x d`` of dtype bfloat16, float16 or float32, ``n >= 0``, ``d >= 1``. Any row
  stride is accepted as long as ``x.stride(1) == 1`` (a row-slice view of a wider buffer); a tensor whose
  columns are not unit-stride is copied to a contiguous one.
* ``acc``: ``None`` (allocated zeroed, float32, on x's device) or a ``d x d`` float tensor on x's device.
  float32 always; float64 only where the caller says so (the pure-torch path).
* ``colsum``: ``None`` or a length-``d`` 1-D float tensor on x's device, same dtype rules as ``acc``.

Every failure is a :class:`ValueError` whose message names the argument, what it got and what it needs.
"""

from __future__ import annotations

import torch

INPUT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


def _accumulator_dtypes(allow_float64: bool) -> tuple[torch.dtype, ...]:
    return (torch.float32, torch.float64) if allow_float64 else (torch.float32,)


def check_x(x: object) -> torch.Tensor:
    """Validate the activation matrix and return it with unit column stride (a copy only when needed)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (n tokens x d features), got shape {tuple(x.shape)}")
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column (d >= 1), got shape {tuple(x.shape)}")
    if x.shape[0] > 0 and x.stride(1) != 1:
        x = x.contiguous()
    return x


def check_acc(acc: torch.Tensor | None, x: torch.Tensor, *, allow_float64: bool) -> torch.Tensor:
    """Validate (or allocate, zeroed float32) the ``d x d`` accumulator for ``x``."""
    d = x.shape[1]
    if acc is None:
        return torch.zeros((d, d), dtype=torch.float32, device=x.device)
    if not isinstance(acc, torch.Tensor):
        raise ValueError(f"acc must be a torch.Tensor or None, got {type(acc).__name__}")
    allowed = _accumulator_dtypes(allow_float64)
    if acc.dtype not in allowed:
        names = " or ".join(str(t) for t in allowed)
        raise ValueError(f"acc must be {names} for this backend, got {acc.dtype}")
    if tuple(acc.shape) != (d, d):
        raise ValueError(f"acc must have shape ({d}, {d}) to match x with d={d}, got {tuple(acc.shape)}")
    if acc.device != x.device:
        raise ValueError(f"acc is on {acc.device} but x is on {x.device}; both must be on one device")
    return acc


def check_colsum(colsum: torch.Tensor | None, x: torch.Tensor, *, allow_float64: bool) -> torch.Tensor | None:
    """Validate the optional column-sum vector (length ``d``) for ``x``."""
    if colsum is None:
        return None
    d = x.shape[1]
    if not isinstance(colsum, torch.Tensor):
        raise ValueError(f"colsum must be a torch.Tensor or None, got {type(colsum).__name__}")
    allowed = _accumulator_dtypes(allow_float64)
    if colsum.dtype not in allowed:
        names = " or ".join(str(t) for t in allowed)
        raise ValueError(f"colsum must be {names} for this backend, got {colsum.dtype}")
    if tuple(colsum.shape) != (d,):
        raise ValueError(f"colsum must have shape ({d},) to match x with d={d}, got {tuple(colsum.shape)}")
    if colsum.device != x.device:
        raise ValueError(f"colsum is on {colsum.device} but x is on {x.device}; both must be on one device")
    return colsum


def check_inputs(
    x: object,
    acc: torch.Tensor | None,
    colsum: torch.Tensor | None,
    *,
    allow_float64: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All three checks in order; returns ``(x, acc, colsum)`` ready for a backend."""
    x = check_x(x)
    acc = check_acc(acc, x, allow_float64=allow_float64)
    colsum = check_colsum(colsum, x, allow_float64=allow_float64)
    return x, acc, colsum
