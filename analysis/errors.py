"""Errors the library raises for bad input.

Every error a user can cause derives from :class:`AnalysisError`, carries a one-line message that says what
was wrong and what to do, and is what the CLI prints (exit code 2) and the app shows as a message.
Nothing here ever means that stored results were touched.
"""

from __future__ import annotations


class AnalysisError(Exception):
    """Base class: a user-facing, one-line, specific reason."""


class UnknownModelError(AnalysisError):
    """A model id whose source or name is not known."""


class ModelUnavailableError(AnalysisError):
    """A known model whose weights cannot be obtained here (offline, missing package, missing file)."""


class CheckpointError(AnalysisError):
    """A checkpoint that cannot be read safely or does not fit the architecture."""


class DatasetError(AnalysisError):
    """An unknown, missing, empty or unreadable dataset."""


class SettingsError(AnalysisError):
    """An impossible setting (energy outside (0, 1], samples <= 0, cuda without a GPU, ...)."""


class ForwardError(AnalysisError):
    """The model's forward pass failed on the data (wrong input size, incompatible channels, ...)."""


class NumericalError(AnalysisError):
    """Activations or statistics that are not finite (NaN or inf)."""


class CacheError(AnalysisError):
    """A cache entry or cache folder that cannot be used (unwritable, bad key, ...)."""


class UnsupportedModelError(AnalysisError):
    """A model object the tool cannot analyse (no Linear or Conv2d layer, weights that are not float32, ...)."""
