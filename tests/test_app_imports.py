"""The app's first imports on many threads at once: a fresh server runs its first sessions each on a thread,
and a deep link runs its page's script directly (no ``app.py`` before it). Every page and ``app.py`` enter the
code by ``import ui``, which imports every module the app uses (``ui.APP_MODULES``), so no thread meets a half
initialised module of the library's circular imports (before: "ImportError: cannot import name 'ResultCache'
from partially initialized module 'analysis.cache'" in 6 of 8 sessions opened at once)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY_FILES = sorted(ROOT.glob("pages/*.py")) + [ROOT / "app.py"]
PROJECT = ("ui", "analysis", "kernels")


def _project_imports(path: Path) -> list[ast.stmt]:
    """Module-level ``import``/``from ... import`` statements of project modules, in order."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import) and node.names[0].name.split(".")[0] in PROJECT:
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PROJECT:
            found.append(node)
    return found


def test_every_page_enters_the_code_by_importing_ui_first():
    wrong = []
    for path in ENTRY_FILES:
        first = _project_imports(path)[0]
        name = first.names[0].name if isinstance(first, ast.Import) else first.module
        if name != "ui":
            wrong.append(f"{path.relative_to(ROOT)}:{first.lineno} {ast.unparse(first)}")
    assert not wrong, "these enter the code before `import ui`:\n" + "\n".join(wrong)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_importing_ui_imports_every_module_the_pages_and_ui_use():
    names = set()
    for path in [*ENTRY_FILES, *sorted(ROOT.glob("ui/*.py"))]:
        for node in _project_imports(path):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            else:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    run = _run(f"""
        import importlib.util, sys
        import ui
        missing = []
        for name in {sorted(names)!r}:
            if name in sys.modules:
                continue
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, AttributeError, ValueError):
                spec = None
            if spec is not None:  # a module (not a name defined in one) that `import ui` left out
                missing.append(name)
        print("MISSING", missing)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MISSING []" in run.stdout, run.stdout[-2000:]


def test_every_pages_imports_on_threads_at_once_in_a_fresh_interpreter():
    """Each page's (and app.py's) module-level imports run on its own thread, all released together: no
    ImportError (before ``import ui`` came first: 7 to 11 of the 11 threads failed)."""
    run = _run(f"""
        import ast, sys, threading
        from pathlib import Path
        files = {[str(p) for p in ENTRY_FILES]!r}
        codes = []
        for name in files:
            body = [n for n in ast.parse(Path(name).read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            codes.append((name, compile(ast.Module(body=body, type_ignores=[]), name, "exec")))
        errors, gate = [], threading.Barrier(len(codes))
        def run(name, code):
            gate.wait()
            try:
                exec(code, {{"__name__": "page"}})
            except Exception as exc:
                errors.append(f"{{Path(name).name}}: {{type(exc).__name__}}: {{exc}}")
        threads = [threading.Thread(target=run, args=c) for c in codes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("ERRORS", len(errors))
        print("\\n".join(errors))
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERRORS 0" in run.stdout, run.stdout[-3000:]
