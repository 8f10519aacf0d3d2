"""Analysis settings, validated before any model or data is touched."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .errors import SettingsError
from .result import check_energy
from .tokens import TokenSet

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AnalysisSettings:
    """What one analysis does.

    ``samples`` None means the whole dataset. ``tokens_per_image`` None means every token/position.
    ``precision`` is the forward pass's autocast dtype (statistics always accumulate in float32 or better).
    ``energy_in``/``energy_out`` only threshold the stored spectra: they are not part of the cache key.
    ``max_width`` skips layers with ``max(d_in, d_out)`` above it; ``layers`` keeps only layers whose names
    match one of its shell globs (``"blocks.*.attn.qkv"``; a comma-separated string is accepted). Both change
    which layers are analysed, so both are part of the cache key.
    ``token_set`` chooses which input vectors count (:mod:`analysis.tokens`: ``all``, ``cls``, ``patch``,
    ``no-registers``, ``no-outliers:Q``, ``centre:F``); ``centred`` analyses ``C_in - s s^T / N`` instead of
    the uncentred moment; ``uncertainty`` also accumulates two half-samples (split-half error bars) and
    snapshots of the running sums (the convergence curve). All three are part of the cache key.
    """

    samples: int | None = None
    seed: int = 0
    energy_in: float = 0.99
    energy_out: float = 0.99
    device: str = "cpu"
    batch_size: int | None = None
    tokens_per_image: int | None = None
    precision: str = "fp32"
    keep_moments: bool = False
    max_width: int | None = None
    layers: tuple[str, ...] | None = None
    token_set: str = "all"
    centred: bool = False
    uncertainty: bool = True

    def validated(self) -> "AnalysisSettings":
        check_energy(self.energy_in, "energy_in")
        check_energy(self.energy_out, "energy_out")
        _positive_or_none(self.samples, "samples")
        _positive_or_none(self.batch_size, "batch_size")
        _positive_or_none(self.tokens_per_image, "tokens_per_image")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SettingsError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        device = str(self.device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingsError("device cuda was requested but this machine has no usable CUDA GPU; choose the cpu device")
        if not (device == "cpu" or device.startswith("cuda")):
            raise SettingsError(f"device must be cpu or cuda[:N], got {device!r}")
        if self.precision == "fp16" and device == "cpu":
            raise SettingsError("fp16 autocast is not supported on the CPU; use fp32 or bf16")
        _positive_or_none(self.max_width, "max_width")
        for flag in ("centred", "uncertainty"):
            if not isinstance(getattr(self, flag), bool):
                raise SettingsError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        token_set = TokenSet.parse(self.token_set).spec
        return replace(self, layers=_layer_patterns(self.layers), token_set=token_set)

    def key_parts(self) -> dict:
        """The settings that change the statistics (and therefore the cache entry)."""
        parts = asdict(self)
        parts["layers"] = list(self.layers) if self.layers else None
        for name in ("energy_in", "energy_out", "device", "batch_size"):
            parts.pop(name)
        return parts

    def effective_batch_size(self) -> int:
        if self.batch_size:
            return self.batch_size
        return 256 if str(self.device).startswith("cuda") else 32


def _positive_or_none(value: object, label: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SettingsError(f"{label} must be a positive integer, got {value!r}")


def _layer_patterns(value: object) -> tuple[str, ...] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``; None or empty -> None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise SettingsError(f"layers must be layer-name patterns such as 'blocks.*.attn.qkv', got {value!r}")
    patterns = tuple(p.strip() for p in items if p.strip())
    if not patterns and (value.strip() if isinstance(value, str) else items):
        raise SettingsError(f"the layer filter {value!r} names no layer pattern (leave it empty for every layer, or "
                            "give patterns such as 'blocks.*.attn.qkv')")
    return patterns or None
