"""What a result records about how it was made: ids, fingerprints, settings, timings (:class:`ResultMeta`).

:class:`ResultMeta` is frozen and read by attribute everywhere (cache, CLI, UI, compare). It is stored in a
cache entry's ``manifest.json`` as a plain JSON object (:meth:`ResultMeta.to_dict`) and read back with
:meth:`ResultMeta.from_dict`, which ignores keys it does not know (an entry written by a newer version) and
fills fields the object lacks with their defaults (an entry written before a field existed). A value of the
wrong type raises :class:`ValueError`; the cache then treats the entry as absent and the engine recomputes it.

Adding a field: give it a default (``None``, ``0``, ``()``), and old entries keep loading. Supported field
types for the JSON round trip: ``str``, ``int``, ``float``, ``bool``, ``dict``, ``tuple[X, ...]`` (stored as a
JSON list), a nested frozen dataclass such as :class:`Timings`, and ``X | None`` of any of these.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each step of the analysis (wall clock)."""

    statistics_s: float = 0.0
    eigen_s: float = 0.0
    spectra_s: float = 0.0
    uncertainty_s: float = 0.0
    """Of the spectra step: the half-sample and snapshot decompositions (error bars, convergence)."""


@dataclass(frozen=True)
class ResultMeta:
    """Ids, fingerprints, settings and timings of one analysis (see the module docstring for the JSON form)."""

    key: str | None = None
    key_parts: dict = field(default_factory=dict)
    model_id: str = ""
    model_description: str = ""
    arch: str = ""
    weights_fingerprint: str = ""
    dataset_id: str = ""
    dataset_description: str = ""
    dataset_fingerprint: str = ""
    n_images: int = 0
    samples: int | None = None
    seed: int = 0
    tokens_per_image: int | None = None
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 0
    data_config: dict = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    world_size: int = 1
    resumed_from_batch: int = 0
    version: str = ""
    weights_analysed_fraction: float | None = None
    """Parameters of the analysed layers (W and b) over all the model's parameters."""
    skipped_module_types: dict = field(default_factory=dict)
    """Parameter-holding module types not analysed -> their parameter count (CondConv2d, LSTM, ...)."""
    blocks_reason: str = ""
    """Why no layer counts: the model's repeated blocks could not be found (:mod:`analysis.models.blocks`);
    empty when they were."""

    token_set: str = "all"
    """Which input vectors were counted (:class:`analysis.tokens.TokenSet` spec)."""
    centred: bool = False
    """Whether the spectra are of the centred moments ``C - s s^T / N``."""
    uncertainty: bool = False
    """Whether half-sample spectra (error bars) and snapshot spectra (convergence) are stored."""
    snapshot_images: tuple[int, ...] = ()
    """Images seen at each stored snapshot of the running sums (ascending; the last is the whole run)."""
    provenance: dict = field(default_factory=dict)
    """The code that made the result (:func:`analysis.provenance.code_provenance`: version, git commit,
    library versions); empty for results made before it was recorded."""
    data_note: str = ""
    """Why this result was not stored in the cache (data given as an object whose images cannot be
    fingerprinted: :mod:`analysis.data.data_objects`); empty otherwise."""

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists when dumped)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "ResultMeta":
        """Read :meth:`to_dict`'s output (or an older or newer one); ValueError when a known field is malformed."""
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> "ResultMeta":
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: object) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for name, value in data.items():
        if name in known:
            values[name] = _coerce(hints[name], value, f"{cls.__name__}.{name}")
    return cls(**values)


def _coerce(annotation: Any, value: object, where: str) -> object:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: unexpected {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation in (str, bool) or origin is dict or annotation is dict:
        expected = dict if (origin is dict or annotation is dict) else annotation
        if not isinstance(value, expected):
            raise ValueError(f"{where}: expected {expected.__name__}, got {value!r}")
        return value
    return value
