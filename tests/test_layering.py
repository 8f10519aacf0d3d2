"""The library's data flow, checked on the source: model -> data -> statistics -> spectra -> metrics ->
compression -> cache -> UI. A lower layer never imports a higher one, and the library never imports the app.

Imports are read with ``ast`` (also those inside functions), resolved to absolute module names, and
compared with the rules below; a failure lists every offending ``file:line -> module``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "analysis"

LOWER_LAYERS = ("analysis.models", "analysis.data")
HIGHER_FOR_LOWER = (
    "analysis.statistics", "analysis.spectra", "analysis.engine", "analysis.compression", "analysis.jobs",
    "analysis.cache", "analysis.cli", "analysis.result", "analysis.partial", "analysis.distributed",
    "analysis.table_export", "analysis.compare", "analysis.training", "ui", "pages", "streamlit", "app",
)
APP = ("streamlit", "ui", "pages", "app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            if not node.module:  # ``from . import x``: each name is a module
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        source = _module_name(path)
        for line, target in imports_of(path):
            forbidden = APP
            if _within(source, LOWER_LAYERS):
                forbidden = HIGHER_FOR_LOWER
            if _within(target, forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} -> {target}")
    return bad


def test_no_layer_imports_a_higher_one_and_the_library_never_imports_the_app():
    paths = sorted(LIBRARY.rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    assert len(paths) > 40
    bad = violations(paths)
    assert not bad, "imports against the data flow (lower layer -> higher layer, or library -> app):\n" + "\n".join(bad)


def test_the_check_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    """The rule itself: a planted bad import in a models module is found, with its line."""
    fake_root = tmp_path
    models = fake_root / "analysis" / "models"
    models.mkdir(parents=True)
    (fake_root / "analysis" / "__init__.py").write_text("")
    (models / "__init__.py").write_text("")
    (models / "bad.py").write_text("import torch\n\ndef f():\n    from ..compression import thin_layers\n"
                                   "    from .. import engine\n    import streamlit\n")
    (models / "fine.py").write_text("from .registry import load\nfrom ..errors import X\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    found = violations(sorted(models.glob("*.py")))
    assert found == ["analysis/models/bad.py:4 -> analysis.compression",
                     "analysis/models/bad.py:5 -> analysis.engine",
                     "analysis/models/bad.py:6 -> streamlit"]


def test_no_two_library_modules_share_a_file_name():
    """``export.py`` in two packages reads ambiguously in tracebacks, greps and reviews: one name, one module."""
    by_name: dict[str, list[str]] = {}
    for path in sorted(LIBRARY.rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            by_name.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"module file names used more than once: {shared}"
