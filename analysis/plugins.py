"""Registries filled by imports: the modules that register model sources and dataset families are imported
once, on first use, safely from several threads (the app serves sessions from threads).

Both registries (:mod:`analysis.models.registry`, :mod:`analysis.data.families`) keep a list of their
built-in modules that extensions may append to, and call their :class:`ImportOnce` before every lookup.
"""

from __future__ import annotations

import importlib
import threading
from typing import Sequence


class ImportOnce:
    """Import ``package.<name>`` for every name of ``required`` (an error propagates) and of ``optional``
    (skipped when that module itself does not exist; a dependency it lacks is still an error), once.

    The lists are read when first called, so names appended before any lookup are imported too."""

    def __init__(self, package: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
        self.package, self.required, self.optional = package, required, optional
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if self._done:
            return
        with self._lock:
            if self._done:
                return
            for name in self.required:
                importlib.import_module(f"{self.package}.{name}")
            for name in self.optional:
                try:
                    importlib.import_module(f"{self.package}.{name}")
                except ModuleNotFoundError as exc:  # the module itself absent; a missing dependency is an error
                    if exc.name != f"{self.package}.{name}":
                        raise
            self._done = True
