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


def _check_accumulator(label: str, tensor: object, shape: tuple[int, ...], x: torch.Tensor,
                       allow_float64: bool) -> torch.Tensor:
    """The checks ``acc`` and ``colsum`` share: a tensor, an accumulator dtype, ``shape``, x's device."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{label} must be a torch.Tensor or None, got {type(tensor).__name__}")
    allowed = _accumulator_dtypes(allow_float64)
    if tensor.dtype not in allowed:
        names = " or ".join(str(t) for t in allowed)
        raise ValueError(f"{label} must be {names} for this backend, got {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        d = x.shape[1]
        raise ValueError(f"{label} must have shape {shape} to match x with d={d}, got {tuple(tensor.shape)}")
    if tensor.device != x.device:
        raise ValueError(f"{label} is on {tensor.device} but x is on {x.device}; both must be on one device")
    return tensor


def check_acc(acc: torch.Tensor | None, x: torch.Tensor, *, allow_float64: bool) -> torch.Tensor:
    """Validate (or allocate, zeroed float32) the ``d x d`` accumulator for ``x``."""
    d = x.shape[1]
    if acc is None:
        return torch.zeros((d, d), dtype=torch.float32, device=x.device)
    return _check_accumulator("acc", acc, (d, d), x, allow_float64)


def check_colsum(colsum: torch.Tensor | None, x: torch.Tensor, *, allow_float64: bool) -> torch.Tensor | None:
    """Validate the optional column-sum vector (length ``d``) for ``x``."""
    if colsum is None:
        return None
    return _check_accumulator("colsum", colsum, (x.shape[1],), x, allow_float64)


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
