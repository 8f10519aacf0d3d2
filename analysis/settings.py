"""Analysis settings: the one description of a run, validated before any model or data is touched.

:class:`AnalysisSettings` is shared by every way of starting an analysis: :func:`analysis.analyze` and
:func:`analysis.timeline` (``settings=`` or the same names as keyword arguments), the command line (whose
options :mod:`analysis.cli` generates from the fields below, with the help texts in their metadata) and the
jobs (``request.json`` holds the fields). A new setting is one field here, with its ``help``; the CLI, the
jobs and the keyword arguments follow.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import torch

from .defaults import DEFAULT_ENERGY
from .errors import SettingsError
from .result import check_energy
from .tokens import TokenSet

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

UNKEYED = ("energy_in", "energy_out", "device", "batch_size")
"""Settings that do not change the statistics: left out of the cache key (energies only threshold the
stored spectra; device and batch size change nothing but float rounding)."""


def setting(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A settings field with what the command line needs: its ``help``, and where the option is not simply
    ``--<name-with-dashes>``, its ``flag``; ``metavar`` and ``choices`` as in :mod:`argparse`."""
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


@dataclass(frozen=True)
class AnalysisSettings:
    """What one analysis does (README, sections Command line and Research settings).

    Every field but ``energy_in``, ``energy_out``, ``device`` and ``batch_size`` is part of the cache key
    (:meth:`key_parts`).
    """

    samples: int | None = setting(None, "number of images (default: the whole dataset; a data object: its "
                                         "first N images)", metavar="N")
    seed: int = setting(0, "seed of the image subsample and of the token subsample (default 0)", metavar="S")
    energy_in: float = setting(DEFAULT_ENERGY, f"input energy e_in in (0, 1] (default {DEFAULT_ENERGY}); "
                                               "only thresholds the stored spectra", metavar="E")
    energy_out: float = setting(DEFAULT_ENERGY, f"output energy e_out in (0, 1] (default {DEFAULT_ENERGY}); "
                                                "only thresholds the stored spectra", metavar="E")
    device: str = setting("cpu", "cpu or cuda[:N] (default cpu)", metavar="DEVICE")
    batch_size: int | None = setting(None, "images per forward pass (default 32 on the CPU, 256 on a GPU)",
                                     metavar="B")
    tokens_per_image: int | None = setting(None, "sub-sample this many tokens per image (seeded; default all)",
                                           metavar="T")
    precision: str = setting("fp32", "autocast dtype of the forward pass; statistics always accumulate in "
                                     "float32 or better (default fp32)", choices=tuple(PRECISIONS))
    keep_moments: bool = setting(False, "also store the raw second moments (large; needed to re-project)")
    max_width: int | None = setting(None, "skip layers with max(d_in, d_out) above N (their statistics would "
                                          "not fit)", metavar="N")
    layers: tuple[str, ...] | None = setting(None, "analyse only layers whose names match PATTERN[,PATTERN] "
                                                   "(shell globs, e.g. 'blocks.*.attn.*')",
                                             metavar="PATTERN[,PATTERN]")
    token_set: str = setting("all", "which input vectors count: all, cls, patch, no-registers, no-outliers:Q "
                                    "(percent), centre[:F] (default all; README, Research settings)",
                             flag="--tokens", metavar="SET")
    centred: bool = setting(False, "analyse centred moments C - s s^T/N (the mean direction's share is "
                                   "reported either way; default --no-centred)")
    uncertainty: bool = setting(True, "store split-half error bars and convergence snapshots (default; "
                                      "--no-uncertainty saves memory and time)")

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
        for flag in ("centred", "uncertainty", "keep_moments"):
            if not isinstance(getattr(self, flag), bool):
                raise SettingsError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        token_set = TokenSet.parse(self.token_set).spec
        return replace(self, layers=_layer_patterns(self.layers), token_set=token_set)

    def key_parts(self) -> dict:
        """The settings that change the statistics (and therefore the cache entry)."""
        parts = asdict(self)
        parts["layers"] = list(self.layers) if self.layers else None
        for name in UNKEYED:
            parts.pop(name)
        return parts

    def effective_batch_size(self) -> int:
        if self.batch_size:
            return self.batch_size
        return 256 if str(self.device).startswith("cuda") else 32

    def updated(self, changes: Mapping[str, Any], caller: str = "analyze") -> "AnalysisSettings":
        """These settings with ``changes`` (field names) applied; an unknown name is a :class:`TypeError`
        that names the closest setting, as Python does for a misspelt keyword argument."""
        unknown = sorted(set(changes) - set(setting_names()))
        if unknown:
            close = difflib.get_close_matches(unknown[0], setting_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}{hint}; settings are "
                            f"{', '.join(setting_names())}")
        return replace(self, **changes) if changes else self

    @classmethod
    def of_call(cls, settings: "AnalysisSettings | int | None", legacy: tuple, changes: Mapping[str, Any],
                caller: str = "analyze") -> "AnalysisSettings":
        """The settings of a call ``f(model, data, settings=None, *legacy, **changes)``.

        ``settings`` is an :class:`AnalysisSettings` (or None for the defaults); for calls written before it
        existed it may be the sample count, and ``legacy`` the positional ``seed, energy_in, energy_out`` that
        followed it. Keyword ``changes`` override the given settings."""
        if len(legacy) > len(LEGACY_POSITIONAL):
            raise TypeError(f"{caller}() takes at most {3 + len(LEGACY_POSITIONAL)} positional arguments")
        positional = dict(zip(LEGACY_POSITIONAL, legacy))
        if isinstance(settings, cls):
            base = settings
        elif settings is None or (isinstance(settings, int) and not isinstance(settings, bool)):
            base = cls()
            if settings is not None:
                positional["samples"] = settings
        else:
            raise TypeError(f"{caller}() settings must be an AnalysisSettings, got {type(settings).__name__}")
        both = sorted(set(positional) & set(changes))
        if both:
            raise TypeError(f"{caller}() got multiple values for argument {both[0]!r}")
        return base.updated({**positional, **changes}, caller)


LEGACY_POSITIONAL = ("seed", "energy_in", "energy_out")
"""Positional arguments after the sample count in ``analyze(model, dataset, samples, seed, e_in, e_out)``."""


def setting_fields() -> tuple[Field, ...]:
    """The fields of :class:`AnalysisSettings`, in order (the command line's options come from these)."""
    return fields(AnalysisSettings)


def setting_names() -> list[str]:
    return [f.name for f in setting_fields()]


def setting_types() -> dict[str, Any]:
    """Each field's type, resolved (``int | None``, ``tuple[str, ...] | None``, ...)."""
    return typing.get_type_hints(AnalysisSettings)


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
