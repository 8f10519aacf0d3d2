"""Safe reading of state-dict checkpoints.

safetensors files are read with the ``safetensors`` library (no code can run). ``.pth``/``.pt``/``.bin``
files are read only through ``torch.load(weights_only=True)``, whose unpickler refuses every global that
is not a tensor, so a checkpoint that would run code on load is rejected, never executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``path`` without executing any code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
            raise CheckpointError(f"checkpoint {path.name!r} is not a readable safetensors file ({exc})") from None
    if suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                reason = "it contains Python objects other than tensors (refused: loading it could run code)"
            raise CheckpointError(f"checkpoint {path.name!r} was refused: {reason}") from None
        return _flatten_state_dict(obj, path.name)
    raise CheckpointError(
        f"checkpoint {path.name!r} has an unsupported suffix {suffix!r}; use .safetensors (preferred) or .pth/.pt"
    )


def _flatten_state_dict(obj: object, label: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common ``{"state_dict"|"model": {...}}`` wrappers."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"checkpoint {label!r} holds no tensors in a state dict")


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], label: str, arch: str, hint: str = "") -> None:
    """Load ``state`` strictly into ``model``; explain missing, unexpected and mis-shaped keys (``hint``: what
    to change, appended to the message)."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatches (first: {mis_shaped[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {label!r} does not fit architecture {arch!r}: " + "; ".join(parts) + (f"; {hint}" if hint else "")
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint {label!r} has non-finite values in {key!r}")
    model.load_state_dict(dict(state), strict=True)
