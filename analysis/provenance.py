"""Which code made a result: the package version, the git commit of the checkout, and the library versions.

:func:`code_provenance` is recorded in every new result's meta (``ResultMeta.provenance``) when the analysis
runs, so a reproducibility card (:mod:`analysis.card`) names the code that *made* the numbers, not the code
that happens to display them later. It never fails: without git, outside a git checkout, or when git
misbehaves, ``git_commit`` is ``None``.

``git_dirty`` is True when tracked files under ``analysis/`` or ``kernels/`` (the code that computes results)
differ from the commit; edits to tests, pages or documents do not change numbers and are not counted.
The answer is computed once per process (the code a process runs does not change while it runs).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from . import __version__

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding ``analysis/``: a git checkout's top level when the project runs from one."""

RESULT_CODE_PATHS = ("analysis", "kernels")
GIT_TIMEOUT_S = 10.0


def _git(*args: str, root: Path) -> str | None:
    """``git -C root args...``'s stripped stdout, or None when git is absent, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``root`` (default: this project's folder), ``(None, None)``
    when ``root`` is not the top level of a git checkout (also when the project sits inside another
    repository, whose commit would describe other code)."""
    root = Path(root or REPOSITORY_ROOT).resolve()
    top = _git("rev-parse", "--show-toplevel", root=root)
    if top is None or Path(top).resolve() != root:
        return None, None
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        return None, None
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", *RESULT_CODE_PATHS, root=root)
    return commit, (bool(changes) if changes is not None else None)


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", None) or "") or None


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict:
    """``{"analysis", "git_commit", "git_dirty", "python", "torch", "timm", "numpy"}`` of this process.

    Values are strings (``git_dirty``: bool), ``None`` where unknown. Cached for the process."""
    commit, dirty = git_state()
    return {
        "analysis": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "timm": _version("timm"),
        "numpy": _version("numpy"),
    }
