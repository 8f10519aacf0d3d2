"""Shared test set-up: the repository on sys.path, a private cache folder per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test writes results to its own cache folder, never to the repository's cache/."""
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
