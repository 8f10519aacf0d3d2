"""Where the product keeps things on disk.

The cache root is ``$ANALYSIS_CACHE_DIR`` when set, else ``<repository>/cache`` when the library runs from
its source tree (a clone, or an editable install), else ``$XDG_CACHE_HOME/layer-utilization`` (by default
``~/.cache/layer-utilization``: an installed package never writes into site-packages). Everything the product
writes lives under it: analysis entries (``<root>/<key>/``), converted package weights
(``<root>/_converted/``) and job logs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = Path(__file__).resolve().parent


def in_source_tree() -> bool:
    """Whether the package runs from the repository (its ``pyproject.toml`` beside it), not an installed copy."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "analysis" / "__init__.py").is_file()


def cache_root() -> Path:
    """The cache folder (created on first use by the writer, not here)."""
    override = os.environ.get("ANALYSIS_CACHE_DIR")
    if override:
        return Path(override).expanduser().resolve()
    if in_source_tree():
        return REPO_ROOT / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "layer-utilization"
