"""Checkpoints of partial statistics, so that a killed analysis resumes where it stopped.

While the data pass runs, the collector's running sums (``C_in`` accumulator, ``s``, ``N`` per layer) and
the number of batches done are written to ``<cache root>/.partial/<key>[.rank<r>of<w>].safetensors`` every
``ANALYSIS_CHECKPOINT_BATCHES`` batches (when set) or at most every ``ANALYSIS_CHECKPOINT_SECONDS`` seconds
(default 60), atomically (temporary file + fsync + rename: a kill during a write leaves the previous
checkpoint). A restarted analysis with the same key, batch size and world size loads it, skips the batches
already summed and continues; since the loader's order is fixed and the sums are float64 (CPU) / float32
(GPU) in the same order, the result is the same as an uninterrupted run's. The file is removed once the
result is in the cache. A checkpoint that is unreadable or from other settings is ignored (recomputed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import atomic_write_bytes, check_key
from .environment import env_float, env_int

FORMAT = "partial-statistics-v1"


@dataclass
class Resumed:
    batches_done: int
    images_done: int
    state: dict[str, torch.Tensor]


class PartialStore:
    """The checkpoint file of one analysis key (one per rank in a distributed run)."""

    def __init__(self, root: Path, key: str, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        suffix = "" if world_size == 1 else f".rank{rank}of{world_size}"
        self.path = Path(root) / ".partial" / f"{check_key(key)}{suffix}.safetensors"
        self.key, self.batch_size, self.rank, self.world_size = key, batch_size, rank, world_size
        self.every_batches = env_int("ANALYSIS_CHECKPOINT_BATCHES", None, minimum=1)
        self.every_seconds = env_float("ANALYSIS_CHECKPOINT_SECONDS", 60.0, positive=True)
        self._last_save = time.monotonic()
        self._last_batches = 0
        self.disabled = False

    def load(self) -> Resumed | None:
        """The saved partial sums, or None (absent, unreadable, or from another batch size / world size)."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = handle.metadata() or {}
                state = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception:
            return None
        expected = {"format": FORMAT, "key": self.key, "batch_size": str(self.batch_size),
                    "world_size": str(self.world_size), "rank": str(self.rank)}
        if any(meta.get(k) != v for k, v in expected.items()):
            return None
        try:
            return Resumed(int(meta["batches_done"]), int(meta["images_done"]), state)
        except (KeyError, ValueError):
            return None

    def due(self, batches_done: int) -> bool:
        if self.disabled:
            return False
        if self.every_batches is not None:
            return batches_done - self._last_batches >= self.every_batches
        return time.monotonic() - self._last_save >= (self.every_seconds or 60.0)

    def save(self, state: dict[str, torch.Tensor], batches_done: int, images_done: int) -> None:
        from safetensors.torch import save

        meta = {"format": FORMAT, "key": self.key, "batch_size": str(self.batch_size),
                "world_size": str(self.world_size), "rank": str(self.rank),
                "batches_done": str(batches_done), "images_done": str(images_done)}
        data = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata=meta)
        try:
            atomic_write_bytes(self.path, data)
        except OSError:  # disk full or read-only: keep computing without checkpoints (the old one stays intact)
            self.disabled = True
            return
        self._last_save, self._last_batches = time.monotonic(), batches_done

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
