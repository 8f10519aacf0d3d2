"""The app starts the way the README says (``.venv/bin/python -m streamlit run app.py`` in the repository
root) with the project's ``.streamlit/config.toml`` in effect: no file watcher (nothing under ``.venv`` or
``cache/`` is watched: the server process holds no inotify watch at all), headless, no usage statistics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import TINY_VIT, stop_process

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"
CHROMIUM = "/usr/bin/chromium"
EXPECTED = {
    "server.fileWatcherType": "none",
    "server.headless": True,
    "server.runOnSave": False,
    "browser.gatherUsageStats": False,
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inotify_watches(pid: int) -> int:
    """Number of inotify watches the process holds (``/proc/<pid>/fdinfo`` lists one line per watch)."""
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:inotify":
                continue
            count += sum(line.startswith("inotify wd:") for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines())
        except OSError:
            continue
    return count


def test_effective_options_come_from_the_project_config():
    """Read by Streamlit's own config API in a fresh interpreter started in the repository root."""
    code = (
        "import json; from streamlit import config; config.get_config_options(force_reparse=True); "
        f"names = {list(EXPECTED)!r} + ['server.folderWatchBlacklist']; "
        "print(json.dumps({n: [config.get_option(n), config.get_where_defined(n)] for n in names}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")})
    assert out.returncode == 0, out.stderr
    options = json.loads(out.stdout.strip().splitlines()[-1])
    for name, value in EXPECTED.items():
        assert options[name] == [value, str(CONFIG)], name
    assert {".venv", "cache"} <= set(options["server.folderWatchBlacklist"][0])


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux /proc to count inotify watches")
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs {CHROMIUM} (bash scripts/setup.sh --with-browser)")
def test_the_server_started_as_the_readme_says_watches_nothing(tmp_path):
    """A browser session is opened, because Streamlit starts its watchers with the first session: with
    ``--server.fileWatcherType watchdog`` the same check counts tens of watches (verified by hand)."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    # no analysis job may start: the default model is absent here (the app says so) and the comparison set
    # is a tiny model that is only planned
    env.update(ANALYSIS_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", ANALYSIS_DEFAULT_MODEL="zoo:absent",
               ANALYSIS_DEFAULT_COMPARISON=TINY_VIT)
    log_path = tmp_path / "streamlit.log"
    # the README's command; only the port differs (a free one), so parallel runs do not collide
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            try:
                tab = browser.new_page()
                tab.goto(f"http://127.0.0.1:{port}/")
                tab.wait_for_selector("h1:has-text('Compare')", timeout=120_000)
                time.sleep(1.0)
                assert _inotify_watches(process.pid) == 0
            finally:
                browser.close()
        log = log_path.read_text()
        assert "Inotify" not in log and "Traceback" not in log
        assert "Collecting usage statistics" not in log  # printed when gatherUsageStats is on
    finally:
        stop_process(process)
