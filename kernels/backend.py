"""Which implementation runs :func:`kernels.second_moment`: ``"triton"`` or ``"torch"``.

Rules, first match wins:

1. an explicit ``backend="triton"`` or ``backend="torch"`` argument;
2. the environment variable ``ANALYSIS_KERNEL_BACKEND`` (``triton``, ``torch`` or ``auto``), read at every
   call, which forces the choice for every caller that passes ``backend=None``/``"auto"`` (the statistics
   engine does);
3. ``auto``: Triton when ``x`` is on CUDA and Triton imports, or when ``TRITON_INTERPRET=1`` is set and the
   kernel module was (or now is) imported in interpreter mode; torch otherwise. A float64 accumulator
   also selects torch under ``auto`` (the Triton kernel accumulates into float32 only).

Triton is imported lazily, on the first call that may use it. If it is missing (``ImportError``) the
torch backend is used: silently under ``auto``, with a :class:`RuntimeWarning` when ``"triton"`` was asked
for by name. Asking for ``"triton"`` with a CPU tensor outside the interpreter is a :class:`ValueError`.
"""

from __future__ import annotations

import functools
import os
import warnings
from types import ModuleType

import torch

ENV_VAR: str = "ANALYSIS_KERNEL_BACKEND"
BACKENDS: tuple[str, ...] = ("triton", "torch")
CHOICES: tuple[str, ...] = ("triton", "torch", "auto")


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def triton_module() -> ModuleType | None:
    """The Triton kernel module, or ``None`` when Triton cannot be imported (cached; tests may clear it)."""
    try:
        import triton  # noqa: F401  (the probe: a missing or broken install raises ImportError here)

        from . import triton_second_moment
    except ImportError:
        return None
    return triton_second_moment


def available_backends() -> tuple[str, ...]:
    """Backends that can run here: always ``"torch"``; ``"triton"`` when it imports and either a CUDA
    device is present or the kernel runs in the interpreter (``TRITON_INTERPRET=1``)."""
    names = ["torch"]
    if torch.cuda.is_available() or _interpret_requested():
        module = triton_module()
        if module is not None and (torch.cuda.is_available() or module.INTERPRETED):
            names.insert(0, "triton")
    return tuple(names)


def _requested(backend: str | None) -> str:
    if backend is not None:
        choice = backend.strip().lower()
        if choice not in CHOICES:
            raise ValueError(f"backend must be one of {CHOICES} or None, got {backend!r}")
        if choice != "auto":
            return choice
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if not env:
        return "auto"
    if env not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {CHOICES}, got {os.environ[ENV_VAR]!r}")
    return env


def resolve_backend(x: torch.Tensor, backend: str | None = None, *, float64_accumulator: bool = False) -> str:
    """The backend (``"triton"`` or ``"torch"``) that :func:`kernels.second_moment` uses for ``x``.

    ``float64_accumulator`` says the caller's ``acc``/``colsum`` is float64, which only torch accepts;
    under ``auto`` it selects torch, with an explicit ``"triton"`` the kernel will reject it.
    """
    choice = _requested(backend)
    if choice == "torch":
        return "torch"
    if choice == "auto":
        if float64_accumulator or not (x.is_cuda or _interpret_requested()):
            return "torch"
        module = triton_module()
        if module is None:
            return "torch"
        return "triton" if (x.is_cuda or module.INTERPRETED) else "torch"
    module = triton_module()
    if module is None:
        warnings.warn(
            "the Triton backend was requested but Triton cannot be imported; using the torch backend",
            RuntimeWarning,
            stacklevel=3,
        )
        return "torch"
    if not x.is_cuda and not module.INTERPRETED:
        raise ValueError(
            f"the Triton backend needs x on CUDA (x is on {x.device}); run with TRITON_INTERPRET=1 set "
            "before the kernel module is first imported to use the CPU interpreter, or use backend='torch'"
        )
    return "triton"
