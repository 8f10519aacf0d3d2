"""Where the product keeps things on disk.

The cache root is ``$ANALYSIS_CACHE_DIR`` when set, else ``<repository>/cache``. Everything the product
writes lives under it: analysis entries (``<root>/<key>/``), converted package weights
(``<root>/_converted/``) and job logs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = Path(__file__).resolve().parent


def cache_root() -> Path:
    """The cache folder (created on first use by the writer, not here)."""
    override = os.environ.get("ANALYSIS_CACHE_DIR")
    return Path(override).expanduser().resolve() if override else REPO_ROOT / "cache"
