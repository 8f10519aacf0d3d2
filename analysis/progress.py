"""The one progress report shared by analyses, compression and evaluation.

A long operation runs in *stages* (``"statistics"``, ``"evaluate dense"``, ``"fine-tune"`` ...); within a
stage it reports ``done`` of ``total`` steps (batches, images or optimiser steps) and, where the steps are
batches, the images behind them (``items_done`` of ``items_total``). Callers receive a :class:`Progress`
through a :data:`ProgressCallback`; :class:`StageClock` builds them with the elapsed time filled in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """Where a stage stands: ``done`` of ``total`` steps, ``items_done`` of ``items_total`` items, seconds spent.

    ``fraction = done / total`` (0 when ``total`` is 0); ``eta_s = elapsed_s / done * (total - done)`` assumes
    the remaining steps take as long as the finished ones on average (None before the first step)."""

    stage: str
    done: int
    total: int
    items_done: int = 0
    items_total: int = 0
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed_s / self.done * max(0, self.total - self.done)


ProgressCallback = Callable[[Progress], None]
"""What a long operation calls after each step."""


class StageClock:
    """Reports :class:`Progress` of one stage to ``callback`` (a no-op when it is None), timing from creation."""

    def __init__(self, callback: ProgressCallback | None, stage: str, total: int, items_total: int = 0) -> None:
        self.callback, self.stage, self.total, self.items_total = callback, stage, total, items_total
        self.start = time.perf_counter()

    def report(self, done: int, items_done: int = 0) -> None:
        if self.callback is not None:
            self.callback(Progress(self.stage, done, self.total, items_done, self.items_total,
                                   time.perf_counter() - self.start))
