"""Datasets for analysis: ids, seeded sub-sampling, each model's own transform, streaming batches.

Public API (README, sections Python and Command line)::

    from analysis.data import load_dataset, make_loader, list_datasets, AnalysisDataset
    ds = load_dataset("fashion-mnist:test", data_config=cfg, samples=2000, seed=0)
    image, label = ds[0]              # float32 (3, H, W) in the model's preprocessing; label int, -1 unlabelled
    ds.dataset_id, ds.fingerprint, ds.indices, ds.source_size, ds.num_classes, ds.class_names, ds.description
    ds.labels                         # labels of the selected images (int64), without reading images
    for images, labels in make_loader(ds, batch_size=64): ...
    list_datasets()                   # [DatasetEntry(dataset_id, description, available, reason), ...]
    parse_dataset_id("cifar10:/data?split=train")   # DatasetId(family, argument, options)
    dataset_templates()               # [("folder:<path>", description), ...]: ids that take a path
    register_family("name", SourceClass, PathTemplate(...) or None)   # a new family of ids

Modules: :mod:`.families` (the family registry, ids and dispatch), :mod:`.base` (the dataset object, sub-sampling,
fingerprints), :mod:`.transforms` (PIL conversion and the timm transform), :mod:`.loader` (DataLoader),
one module per source family, each registering itself (:mod:`.fashion_mnist`, :mod:`.package_datasets`, :mod:`.folder`,
:mod:`.cifar`),
and :mod:`.image_files`, :mod:`.safe_pickle`, :mod:`.idx` for reading files.
"""

from __future__ import annotations

from .base import AnalysisDataset, ImageSource, select_indices
from .loader import device_batches, make_loader
from .families import (DEFAULT_DATASET, DatasetEntry, DatasetFamily, DatasetId, PathTemplate, dataset_templates, id_forms, known_ids,
                       list_datasets, load_dataset, open_source, parse_dataset_id, path_templates, register_family,
                       registered_families)
from .transforms import ImageTransform

__all__ = [
    "AnalysisDataset", "DEFAULT_DATASET", "DatasetEntry", "DatasetFamily", "DatasetId", "ImageSource", "ImageTransform", "PathTemplate",
    "dataset_templates", "device_batches", "id_forms", "known_ids", "list_datasets", "load_dataset", "make_loader",
    "open_source", "parse_dataset_id", "path_templates", "register_family", "registered_families", "select_indices",
]
