"""Streaming batches: a torch DataLoader in the dataset's own order (no shuffling, nothing dropped).

Batches are ``(images, labels)``: a float32 tensor ``(B, C, H, W)`` and an int64 tensor ``(B,)``.
A :class:`DatasetError` raised inside a worker process (an unreadable image) reaches the caller as a
:class:`DatasetError` with its original one-line message, not torch's multi-line wrapper.
"""

from __future__ import annotations

import os
import threading
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError, SettingsError


def default_num_workers() -> int:
    """Worker processes for decoding: none on one core, then about half the cores (1 on 2 cores), at most 8;
    none outside the main thread. A loader's workers are forked, and a fork made from one thread of a
    multi-threaded process (the app's server: a thread per session, the estimates' background thread) copies
    into the child any lock another thread held at that moment, so the worker can hang or die; there the data
    pass is a probe of a few batches, read in-process (analyses run in their own processes' main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 0 if cores <= 1 else min(8, cores // 2)


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` pairs; images of different sizes give a clear :class:`DatasetError`."""
    images = [item[0] for item in batch]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise DatasetError(
            f"images in one batch have different sizes {sorted(shapes)[:3]}; pass the model's data_config "
            f"so that every image is resized to its input size"
        )
    return torch.stack(images), torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)


def own_generator() -> torch.Generator:
    """A fresh generator for a loader's ``generator=``, so that iterating the loader never draws from torch's
    global RNG. A DataLoader without one draws its workers' base seed from the global RNG each time it is
    iterated, and that RNG is shared by every thread of the process: a seeded model build (``random:``, the
    zoo, under :data:`analysis.models.sources.MODEL_INIT`) in one thread got other weights, hence another
    cache key, when another thread started a loader in between (the app's background time estimate reads a
    few batches while a session submits a compression, whose worker then found a different key). The seed it
    gives is fixed, so the workers' seeds are the same every run (the transforms here draw no random numbers)."""
    return torch.Generator()


def _first_line(message: str) -> str:
    """The original message from torch's worker-exception text (last 'DatasetError: ...' line)."""
    for line in reversed(message.strip().splitlines()):
        marker = "DatasetError: "
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return message.strip().splitlines()[0] if message.strip() else message


class AnalysisLoader(DataLoader):
    """A plain DataLoader whose iteration turns worker-wrapped DatasetErrors back into one-line ones."""

    def __iter__(self):
        iterator = super().__iter__()
        if self.num_workers == 0:
            return iterator
        return self._clean_errors(iterator)

    @staticmethod
    def _clean_errors(iterator):
        try:
            yield from iterator
        except DatasetError as exc:
            raise DatasetError(_first_line(str(exc))) from None


def make_loader(dataset: Dataset, batch_size: int = 64, num_workers: int | None = None,
                pin_memory: bool | None = None, device: torch.device | str | None = None) -> DataLoader:
    """A deterministic, streaming DataLoader over ``dataset`` (sequential order, last partial batch kept).

    ``num_workers=None`` picks :func:`default_num_workers` (none when everything fits in one batch).
    ``pin_memory=None`` pins batches in page-locked host memory exactly when ``device`` is a CUDA device
    and CUDA is available: then ``batch.to(device, non_blocking=True)`` is a true asynchronous copy that
    overlaps the previous batch's GPU work instead of a pageable, synchronising one.
    """
    if pin_memory is None:
        pin_memory = device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise SettingsError(f"batch size must be a positive whole number, got {batch_size!r}")
    if num_workers is None:
        batches = -(-len(dataset) // batch_size)
        num_workers = 0 if batches <= 1 else min(default_num_workers(), batches)  # no workers for one batch
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise SettingsError(f"num_workers must be a whole number >= 0, got {num_workers!r}")
    return AnalysisLoader(
        dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
        collate_fn=collate, pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None, persistent_workers=False, generator=own_generator(),
    )


def device_batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images on device, labels)`` for every batch of ``loader``, with the next batch's copy already running.

    On a CUDA device each batch's host-to-device copy is issued on a side stream as soon as the batch before it
    is handed out, so it runs while the GPU computes that batch (with pinned batches, :func:`make_loader`'s
    default on CUDA, the copy is a true asynchronous DMA); the compute stream waits for a batch's copy only
    when the batch is handed out. Elsewhere the batches are moved with a plain ``.to(device)``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        for images, labels in loader:
            yield images.to(device), labels
        return
    copies = torch.cuda.Stream(device=device)
    compute = torch.cuda.current_stream(device)

    def start(images: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(copies):
            moved = images.to(device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copies)
        return moved, ready

    pending = None
    for images, labels in loader:
        upcoming = (*start(images), labels)
        if pending is not None:
            yield _ready(pending, compute)
        pending = upcoming
    if pending is not None:
        yield _ready(pending, compute)


def _ready(pending: tuple, compute: torch.cuda.Stream) -> tuple[torch.Tensor, torch.Tensor]:
    moved, ready, labels = pending
    compute.wait_event(ready)
    moved.record_stream(compute)  # its memory is not reused before the compute stream is done with it
    return moved, labels
