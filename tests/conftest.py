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


def _import_triton_for_the_interpreter() -> None:
    """Import ``triton.language`` with ``TRITON_INTERPRET=1`` before any test module is collected (CPU only).

    Triton decides at *definition* time whether a ``@triton.jit`` function is compiled or interpreted, and
    that includes its standard library (``tl.cdiv`` ...), defined when ``triton.language`` is first imported.
    ``import timm`` imports Triton, so a test module importing timm at module level and collected before
    tests/test_kernels.py left a compiled ``tl.cdiv`` inside the interpreted kernel ("Cannot call
    @triton.jit'd outside of the scope of a kernel"), and the kernel tests failed or passed depending on
    the order of the files on the command line. Without CUDA nothing can run compiled kernels, so Triton is
    imported for the interpreter here, first; the variable itself is restored so that the torch backend
    stays the default elsewhere. With a GPU, Triton keeps its compiled mode.
    """
    import torch

    if torch.cuda.is_available() or "triton" in sys.modules:
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:  # Triton missing: the torch backend is tested alone
        pass
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_triton_for_the_interpreter()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test writes results to its own cache folder, never to the repository's cache/."""
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _background_work_ends_with_its_test():
    """A page's background values (:mod:`ui.background`: the Compare presets' estimate probes models for
    seconds) are finished before the next test starts, so they never compete with its timed waits."""
    yield
    background = sys.modules.get("ui.background")
    if background is not None:
        background.idle(timeout=300)
