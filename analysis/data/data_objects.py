"""Data given as objects: a ``torch.utils.data.Dataset``, a ``DataLoader``, or any iterable of image batches
or of ``(images, labels)``, read with the user's own transforms.

**What is read.** Every element must give float images: a tensor ``(B, C, H, W)`` (a batch) or ``(C, H, W)``
(one image; batched here), alone, first in a tuple/list (``(images, labels, ...)``), or under ``pixel_values``
/ ``image`` / ``images`` in a dict (Hugging Face datasets). Labels, when given (the second tuple element, or
``label`` / ``labels`` in a dict), are kept as int64; otherwise -1. Every batch must have the first batch's
``(C, H, W)``. Anything else (PIL images, numpy arrays, uint8 tensors, a wrong shape, nothing at all) is one
:class:`~analysis.errors.DatasetError` naming the element and what to do.

- a map-style ``Dataset`` (``__len__`` and ``__getitem__``) is read in index order, batched here, and
  ``samples``/``seed`` select a seeded subset exactly as for dataset ids (:func:`~analysis.data.base.select_indices`);
- a ``DataLoader`` or another iterable is read in its own order and batches; ``samples`` keeps its first N
  images (``seed`` does not apply).

**The cache key** (:meth:`DataObject.prepare`). Data is keyed by a fingerprint of the tensors actually read:
sha256 over every batch's images and labels (dtype, shape and bytes), in order. That is only known by reading,
so a first read computes it (no forward pass), the cache is consulted, and on a miss the analysis reads the
data again and hashes that read too: when the two differ (random augmentation, a shuffling sampler the
inspection did not see) the result is returned but not stored, and its note says why. Where the first read
cannot identify the data, it is skipped and the result not stored, with a note:

- a ``DataLoader`` whose sampler draws a random order (``RandomSampler``, ``SubsetRandomSampler``,
  ``WeightedRandomSampler``: ``shuffle=True``) reads other images or another order every time;
- a one-shot iterator (a generator) can be read only once.

``data_id="<name>"`` says that the caller vouches for the data's identity: the key is that name (with the
sample count and seed), the data is read once, and the result is stored whatever the data's randomness.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

from ..errors import DatasetError, SettingsError
from .base import select_indices, sha256_bytes
from .loader import own_generator

OBJECT_PREFIX = "object"
IMAGE_KEYS = ("pixel_values", "image", "images", "img")
LABEL_KEYS = ("label", "labels", "target", "targets")
RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)

Batch = tuple[torch.Tensor, torch.Tensor]


def is_data_object(data: object) -> bool:
    """Whether ``data`` is read as a data object (anything iterable or indexable that is not an id string)."""
    return not isinstance(data, (str, bytes)) and (isinstance(data, Iterable) or _map_style(data))


def _map_style(data: object) -> bool:
    return (not isinstance(data, (DataLoader, torch.Tensor)) and hasattr(data, "__getitem__")
            and isinstance(data, Sized) and not isinstance(data, (list, tuple)))


class _Hash:
    """sha256 over the batches read: each batch's images and labels as dtype, shape and raw bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256(b"data-object-v1")

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        for tensor in (images, labels):
            t = tensor.detach().to("cpu").contiguous()
            self.digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            self.digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class DataObject:
    """A data object ready to stream: ``dataset_id`` ``object:<data_id or class>``, ``description``,
    ``fingerprint`` (None until known), ``n_images`` (None while unknown), ``image_shape`` ``(C, H, W)`` once a
    batch was seen, ``batch_size`` (of the batches read), and ``note``: why the result is not stored, if not."""

    class_names = None
    num_classes = None

    def __init__(self, data: object, *, samples: int | None = None, seed: int = 0, batch_size: int = 32,
                 data_id: str | None = None) -> None:
        if data_id is not None and (not isinstance(data_id, str) or not data_id.strip()):
            raise SettingsError(f"data_id must be a non-empty string naming the data, got {data_id!r}")
        if not is_data_object(data):
            raise DatasetError(
                f"the data must be a dataset id (e.g. fashion-mnist:test), a torch Dataset, a DataLoader or an "
                f"iterable of image batches, got a {type(data).__name__}"
            )
        self.data, self.samples, self.data_id = data, samples, data_id.strip() if data_id else None
        self.kind = ("dataset" if _map_style(data) else "loader" if isinstance(data, DataLoader)
                     else "iterator" if iter(data) is data else "iterable")
        name = self.data_id or type(data).__qualname__
        self.dataset_id = f"{OBJECT_PREFIX}:{name}"
        self.indices = None
        if self.kind == "dataset":
            self.indices = select_indices(len(data), samples, seed, f"the {type(data).__qualname__}")
        self.grouping = batch_size  # images per batch where this module does the batching
        self.batch_size = batch_size if self.kind == "dataset" else getattr(data, "batch_size", None)
        self.n_images = len(self.indices) if self.indices is not None else self._expected_images()
        self.description = f"{type(data).__qualname__} object ({self.kind}, read with its own transforms)"
        self.fingerprint: str | None = None
        self.cacheable = False
        self.note = ""
        self.image_shape: tuple[int, ...] | None = None
        self._first_read: str | None = None
        self._read: _Hash | None = None
        self._pending: list[Batch] = []  # batches taken from a one-shot iterator before the analysis read

    def __len__(self) -> int:
        return self.n_images or 0

    # ---------------------------------------------------------------- identity
    def prepare(self, read: bool = True) -> None:
        """Decide how the data is keyed (module docstring); ``read=False`` (no cache) skips the first read."""
        if self.data_id is not None:
            self.fingerprint = sha256_bytes("data-id-v1", self.data_id)
            self.cacheable = True
        elif self._shuffles():
            self.note = ("not stored in the cache: the DataLoader draws its order at random (shuffle=True), so the "
                         "images read cannot be fingerprinted; pass data_id='<name>' to store it under that name")
        elif self.kind == "iterator":
            self.note = ("not stored in the cache: a one-shot iterator can be read only once, so its images cannot "
                         "be fingerprinted before the analysis; pass data_id='<name>' to store it under that name")
        elif read:
            hashed = _Hash()
            count = 0
            for images, labels in self._stream():
                hashed.add(images, labels)
                count += images.shape[0]
            self._first_read = self.fingerprint = hashed.hexdigest()
            self.n_images, self.cacheable = count, True
        if self.image_shape is None:  # the model's input size: from the first batch
            first = next(self._stream(), None)
            if first is not None and self.kind == "iterator":
                self._pending.append(first)
        if self.image_shape is None:
            raise DatasetError(f"the {type(self.data).__qualname__} yielded no images")

    def settle(self) -> None:
        """After the analysis read: the fingerprint of what was read (when not known before), and no storing
        when it differs from the first read's."""
        read = self._read.hexdigest() if self._read is not None else None
        if self._first_read is not None and read is not None and read != self._first_read:
            self.cacheable = False
            self.note = ("not stored in the cache: the data gave other tensors when read a second time (random "
                         "augmentation or order?); pass data_id='<name>' to store it under that name")
        if self.fingerprint is None:
            self.fingerprint = read

    def _shuffles(self) -> bool:
        if self.kind != "loader":
            return False
        samplers = (self.data.sampler, getattr(self.data.batch_sampler, "sampler", None))
        return any(isinstance(s, RANDOM_SAMPLERS) for s in samplers)

    def _expected_images(self) -> int | None:
        """Images a loader will give, from its sampler's length (None when it has none)."""
        if self.kind != "loader" or self.data.batch_size is None:
            return None
        try:
            count = len(self.data.sampler)
        except TypeError:
            return None
        if self.data.drop_last:
            count -= count % self.data.batch_size
        return count if self.samples is None else min(count, self.samples)

    # ---------------------------------------------------------------- reading
    def batches(self, skip: int = 0) -> Iterator[Batch]:
        """The analysis read: ``(images float (B, C, H, W), labels int64 (B,))`` after the first ``skip``
        batches (read, hashed and dropped: resuming), hashing everything read."""
        self._read = _Hash()
        for index, (images, labels) in enumerate(self._stream()):
            self._read.add(images, labels)
            if index >= skip:
                yield images, labels

    def _stream(self) -> Iterator[Batch]:
        """Validated batches in order, at most ``samples`` images."""
        pending, self._pending = self._pending, []
        source = itertools.chain(pending, self._elements()) if pending else self._elements()
        left = self.samples if self.indices is None else None
        for images, labels in source:
            if left is not None:
                if left <= 0:
                    return
                images, labels = images[:left], labels[:left]
                left -= images.shape[0]
            yield images, labels

    def _elements(self) -> Iterator[Batch]:
        if self.kind == "dataset":
            subset = torch.utils.data.Subset(self.data, self.indices.tolist())
            loader = DataLoader(subset, batch_size=self.batch_size, shuffle=False, num_workers=0,
                                collate_fn=self._collate, generator=own_generator())
            yield from loader
            return
        single: list[Batch] = []
        for index, element in enumerate(self.data):
            images, labels = self._parse(element, f"element {index}")
            if images.dim() == 3:  # one image: batch them here
                single.append((images[None], labels))
                if len(single) == self.grouping:
                    yield self._checked(torch.cat([s[0] for s in single]), torch.cat([s[1] for s in single]))
                    single = []
                continue
            yield self._checked(images, labels)
        if single:
            yield self._checked(torch.cat([s[0] for s in single]), torch.cat([s[1] for s in single]))

    def _collate(self, items: list) -> Batch:
        parsed = [self._parse(item, "an item") for item in items]
        if any(images.dim() != 3 for images, _ in parsed):
            shape = next(tuple(images.shape) for images, _ in parsed if images.dim() != 3)
            raise DatasetError(f"the {type(self.data).__qualname__} gives items of shape {shape}; a Dataset's "
                               "items must be single images (C, H, W), alone or as (image, label)")
        shapes = {tuple(images.shape) for images, _ in parsed}
        if len(shapes) > 1:
            raise DatasetError(f"the {type(self.data).__qualname__} gives images of different sizes "
                               f"{sorted(shapes)[:3]}; resize them to one size in its transform")
        return self._checked(torch.stack([p[0] for p in parsed]), torch.cat([p[1] for p in parsed]))

    def _parse(self, element: object, where: str) -> Batch:
        """``(images, labels)`` of one element (module docstring); labels -1 when there are none."""
        what = f"{where} of the {type(self.data).__qualname__}"
        labels: object = None
        if isinstance(element, Mapping):
            key = next((k for k in IMAGE_KEYS if k in element), None)
            if key is None:
                raise DatasetError(f"{what} is a dict without images: expected one of the keys "
                                   f"{', '.join(IMAGE_KEYS)}, got {', '.join(map(str, element))}")
            images = element[key]
            labels = next((element[k] for k in LABEL_KEYS if k in element), None)
        elif isinstance(element, (tuple, list)):
            if not element:
                raise DatasetError(f"{what} is empty: expected images or (images, labels)")
            images = element[0]
            labels = element[1] if len(element) > 1 else None
        else:
            images = element
        if not isinstance(images, torch.Tensor):
            raise DatasetError(
                f"{what} gives a {type(images).__module__}.{type(images).__qualname__}, not a tensor: give it a "
                "transform that returns float tensors (for example torchvision.transforms.ToTensor() and the "
                "model's normalisation)"
            )
        if not images.is_floating_point():
            raise DatasetError(f"{what} gives {str(images.dtype).removeprefix('torch.')} images: convert them to "
                               "float in the model's own scale (ToTensor() and Normalize, or .float() / 255)")
        if images.dim() not in (3, 4):
            raise DatasetError(f"{what} gives a tensor of shape {tuple(images.shape)}: expected images "
                               "(B, C, H, W) or one image (C, H, W)")
        count = 1 if images.dim() == 3 else images.shape[0]
        return images.detach(), _labels(labels, count)

    def _checked(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        """The batch, once its images have the first batch's shape (which it records)."""
        if images.shape[0] == 0:
            raise DatasetError(f"the {type(self.data).__qualname__} yielded an empty batch")
        shape = tuple(int(v) for v in images.shape[1:])
        if self.image_shape is None:
            self.image_shape = shape
            self.batch_size = self.batch_size or int(images.shape[0])
        elif shape != self.image_shape:
            raise DatasetError(f"the {type(self.data).__qualname__} gives images of shape {shape} after "
                               f"{self.image_shape}; every image must have the same size")
        return images, labels


def _labels(labels: Any, count: int) -> torch.Tensor:
    """Integer labels as int64 ``(count,)``; -1 where there are none or they are not integers."""
    try:
        values = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    except (TypeError, ValueError):
        values = None
    if values is None or values.is_floating_point() or values.is_complex() or values.numel() != count \
            or values.dtype == torch.bool:
        return torch.full((count,), -1, dtype=torch.int64)
    return values.reshape(-1).to("cpu", torch.int64)
