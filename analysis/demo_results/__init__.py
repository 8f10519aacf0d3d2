"""Shipped result entries for the demo: the embedded default and the zoo's regimes comparison.

A fresh clone has an empty ``cache/``; computing the four zoo analyses on the 10k-image embedded test split
takes minutes on a 2-core machine, too long for a classroom. So their finished cache entries ship here, in the
cache's own format (``<key>/manifest.json`` + files, see :mod:`analysis.cache`), read-only. When the cache is
asked for a key it does not hold, :meth:`analysis.cache.ResultCache.manifest` copies the entry from here into
the cache (:func:`seed_entry`) and then validates it as any other entry.

An entry here is only used when all of these hold, so a stale one is ignored (recomputed), never shown:

- its folder name is the key being asked for (the content key covers model weights, dataset selection,
  settings and the code version);
- ``index.json`` lists that key and records the same *code fingerprint* as the running code: the sha256 of
  the library sources that decide what a result contains (:data:`RESULT_SOURCES`, minus
  :data:`NOT_RESULT_SOURCES`), so any change to the pipeline or the result schema invalidates every seed;
- the cache's usual checks pass on the copy: schema version, key, and the sha256 of every file.

Regenerate (deterministic: same keys, same numbers; one command, after any change to the pipeline)::

    python -m analysis.demo_results          # recompute every entry into this folder, rewrite index.json
    python -m analysis.demo_results --check  # exit 1 when a shipped entry is stale or missing
    python -m analysis.demo_results --missing  # resume: keep intact entries of the current keys
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

SEED_ROOT = Path(__file__).resolve().parent
INDEX = SEED_ROOT / "index.json"
PACKAGE = SEED_ROOT.parent
REPO = PACKAGE.parent

RESULT_SOURCES: tuple[str, ...] = ("analysis/**/*.py", "kernels/**/*.py")
"""Globs (from the repository root) of the sources whose code can change a stored result."""

NOT_RESULT_SOURCES: tuple[str, ...] = (
    "analysis/demo_results/", "analysis/training/", "analysis/jobs/", "analysis/compression/",
    "analysis/cli.py", "analysis/__main__.py", "analysis/catalogue.py", "analysis/regimes.py",
    "analysis/compare.py", "analysis/sweep.py", "analysis/cost.py", "analysis/restrictions.py",
    "analysis/families_table.py", "analysis/timeline.py", "analysis/timeline_reading.py", "analysis/plots/",
    "analysis/calibration.py", "analysis/durations.py",
)
"""Prefixes of sources that only read results (UI helpers, CLI, jobs, compression, training recipes):
changing them leaves the shipped entries valid. Anything not listed here counts, so a new module is on the
safe side (it invalidates the seeds until they are regenerated)."""


def _sources() -> list[Path]:
    found: set[Path] = set()
    for pattern in RESULT_SOURCES:
        found.update(REPO.glob(pattern))
    keep = []
    for path in found:
        rel = path.relative_to(REPO).as_posix()
        if "__pycache__" in rel or any(rel.startswith(prefix) for prefix in NOT_RESULT_SOURCES):
            continue
        keep.append(path)
    return sorted(keep, key=lambda p: p.relative_to(REPO).as_posix())


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over (relative path, content) of every result-deciding source, in path order (24 hex digits)."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def read_index() -> dict:
    """``index.json`` (``{"code": ..., "entries": [{"key", "model_id", "dataset_id", ...}]}``), or empty."""
    try:
        index = json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def seed_entry(key: str) -> Path | None:
    """The shipped folder for ``key`` when it may be used (listed, code fingerprint current), else None.

    The caller still validates the copy like any cache entry (schema, key, every file's sha256).
    """
    folder = SEED_ROOT / key
    if not (folder / "manifest.json").is_file():
        return None
    index = read_index()
    if index.get("code") != code_fingerprint():
        return None
    if key not in {entry.get("key") for entry in index.get("entries", []) if isinstance(entry, dict)}:
        return None
    return folder
