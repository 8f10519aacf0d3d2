"""The library installs as a package (pyproject.toml): a wheel built from the tree holds every module and the
data the code reads (embedded Fashion-MNIST, zoo weights, demo results) and the console script; installed
outside the tree, the cache goes to the user's cache folder, never into site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_library_its_data_and_the_command(tmp_path):
    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", "cache", ".git", "__pycache__", "tests",
                                                             "docs", "build", "*.egg-info", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("layer_utilization_explorer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for d in ("analysis", "kernels") for p in (ROOT / d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert sources <= names, f"not in the wheel: {sorted(sources - names)[:5]}"
    assert not {n for n in names if n.startswith(("ui/", "pages/", "tests/", "app.py"))}  # the app runs from the tree
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "layer-utilization = analysis.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_an_installed_copy_caches_in_the_user_cache_folder(tmp_path, monkeypatch):
    from analysis import paths

    monkeypatch.delenv("ANALYSIS_CACHE_DIR", raising=False)
    assert paths.in_source_tree() and paths.cache_root() == paths.REPO_ROOT / "cache"
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")  # where an installed package lives
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert not paths.in_source_tree() and paths.cache_root() == tmp_path / "xdg" / "layer-utilization"
