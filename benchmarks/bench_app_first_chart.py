"""Time from opening the app to the first Plotly chart on screen, on a warm result cache.

Starts ``streamlit run app.py`` on a free loopback port with the default analysis pointed at ``--model`` on
``--dataset`` (computed into the cache first if it is not there: not timed), then drives Debian's chromium
with Playwright and measures, from ``page.goto`` until the first ``.js-plotly-plot .main-svg`` is visible:

- ``first open, cold server``: the first session after the server started (the server imports torch and
  timm and plans the default analysis);
- ``new visitor``: a fresh browser context each time (new session, empty browser cache);
- ``reload``: the same context reloaded (new session, the browser has Streamlit's and Plotly's JS cached).

Prints a table (median, min, max over ``--runs``) with the machine, versions and date. Run:

    .venv/bin/python benchmarks/bench_app_first_chart.py                       # tiny random ViT, 64 images
    .venv/bin/python benchmarks/bench_app_first_chart.py --model zoo:vit-fmnist-supervised --samples 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TINY = "random:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&embed_dim=48&num_heads=2"
FIRST_CHART = ".js-plotly-plot .main-svg"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(cache_dir: str, model: str | None, dataset: str | None, samples: int | None, log_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYSIS_DEFAULT")}
    env.update(ANALYSIS_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1")
    if model is not None:  # else the app's own defaults (the zoo's regimes and its default analysis)
        env.update(ANALYSIS_DEFAULT_MODEL=model, ANALYSIS_DEFAULT_DATASET=dataset)
    if samples is not None:
        env["ANALYSIS_DEFAULT_SAMPLES"] = str(samples)
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("streamlit did not answer within 180 s")


def _stop_server(process: subprocess.Popen) -> None:
    """Terminate the streamlit server; kill it if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report_errors(errors: list[str], log_tail: str, limit: int = 20) -> int:
    """Print the sessions' errors (the first ``limit``) and, when there are any, the server log's tail; the exit
    status (1 when a session failed)."""
    print(f"errors: {len(errors)}")
    for err in errors[:limit]:
        print(f"  {err}")
    if errors:
        print("server log tail:\n" + log_tail)
    return 1 if errors else 0


def _time_to_chart(page, url: str | None, timeout_ms: int) -> float:
    start = time.perf_counter()
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector(FIRST_CHART, state="visible", timeout=timeout_ms)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY)
    parser.add_argument("--dataset", default="fashion-mnist:test")
    parser.add_argument("--samples", type=int, default=64, help="images of the default analysis (0 = all)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="result cache to use (default: a fresh temporary one)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for one page open")
    args = parser.parse_args()
    samples = args.samples or None

    from playwright.sync_api import sync_playwright

    from analysis.engine import analyze

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        cache_dir = args.cache_dir or str(Path(tmp) / "cache")
        start = time.perf_counter()
        result = analyze(args.model, args.dataset, samples=samples, cache_dir=cache_dir)
        prepare_s = time.perf_counter() - start
        process, url = _start_server(cache_dir, args.model, args.dataset, samples, Path(tmp) / "streamlit.log")
        rows: dict[str, list[float]] = {"first open, cold server": [], "new visitor": [], "reload": []}
        timeout_ms = int(args.timeout * 1000)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                viewport = {"width": 1400, "height": 1000}
                context = browser.new_context(viewport=viewport)
                rows["first open, cold server"].append(_time_to_chart(context.new_page(), url, timeout_ms))
                context.close()
                for _ in range(args.runs):
                    context = browser.new_context(viewport=viewport)
                    rows["new visitor"].append(_time_to_chart(context.new_page(), url, timeout_ms))
                    context.close()
                context = browser.new_context(viewport=viewport)
                page = context.new_page()
                _time_to_chart(page, url, timeout_ms)
                for _ in range(args.runs):
                    rows["reload"].append(_time_to_chart(page, None, timeout_ms))
                context.close()
                browser_version = browser.version
                browser.close()
        finally:
            _stop_server(process)

    import plotly
    import streamlit
    import torch

    print(f"# App: time from page open to the first Plotly chart on screen (warm result cache)")
    print(f"date {dt.datetime.now().isoformat(timespec='seconds')} | {platform.node()} | {os.cpu_count()} CPUs | "
          f"load average {os.getloadavg()[0]:.1f} | chromium {browser_version} | streamlit {streamlit.__version__} | "
          f"plotly {plotly.__version__} | torch {torch.__version__}")
    print(f"default analysis: {args.model} on {args.dataset}, {result.meta.n_images} images, "
          f"{len(result.layers)} layers (cache prepared in {prepare_s:.1f} s, not timed)")
    print()
    print(f"| {'scenario':<24} | runs | median s | min s | max s |")
    print(f"|{'-' * 26}|------|----------|-------|-------|")
    for name, values in rows.items():
        print(f"| {name:<24} | {len(values):>4} | {statistics.median(values):>8.2f} | {min(values):>5.2f} | {max(values):>5.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
