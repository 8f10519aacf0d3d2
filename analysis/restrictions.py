"""Restricted mode for shared servers (teaching servers, a lab's shared app).

- ``ANALYSIS_ALLOWED_DIRS``: folders separated by ``os.pathsep``. When set, every dataset folder or root
  (``folder:``, ``cifar10:``, ``cifar100:``) and every checkpoint file (``file:``) must resolve, symlinks
  followed, inside one of them or inside the cache folder (where uploads are kept); anything else is refused
  with a :class:`SettingsError` before it is opened. Unset (the default): no restriction, as for any
  command-line tool run by its own user.
- ``ANALYSIS_MAX_UPLOAD_MB``: the largest checkpoint the app accepts as an upload (default 1024 MB).

Cache keys (24 hex digits, :func:`analysis.cache.check_key`), compression summary names (hashes) and the
app's download names are never taken from user text, so nothing a user types can name a path outside the
cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .environment import env_float
from .errors import SettingsError
from .paths import cache_root

DEFAULT_MAX_UPLOAD_MB = 1024


def allowed_dirs() -> list[Path] | None:
    """The allowed folders (resolved), or None when the mode is off."""
    raw = os.environ.get("ANALYSIS_ALLOWED_DIRS", "").strip()
    if not raw:
        return None
    return [Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip()]


def check_path(path: str | Path, what: str) -> Path:
    """``path`` resolved; refused in restricted mode when it is outside every allowed folder."""
    resolved = Path(path).expanduser().resolve()
    allowed = allowed_dirs()
    if allowed is None:
        return resolved
    roots = allowed + [cache_root()]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise SettingsError(
            f"{what} {str(path)!r} is outside the folders this server allows (ANALYSIS_ALLOWED_DIRS: "
            f"{', '.join(str(r) for r in allowed)})"
        )
    return resolved


def max_upload_bytes() -> int:
    megabytes = env_float("ANALYSIS_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB, positive=True)
    return int(megabytes * 1024 * 1024)


def check_upload_size(n_bytes: int) -> None:
    limit = max_upload_bytes()
    if n_bytes > limit:
        raise SettingsError(
            f"the upload is {n_bytes / 2**20:.1f} MB; this server accepts at most {limit / 2**20:.0f} MB "
            f"(ANALYSIS_MAX_UPLOAD_MB)"
        )
