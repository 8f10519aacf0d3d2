"""Load test: N concurrent browser sessions open the app on a cached result.

Starts ``streamlit run app.py`` on loopback (as ``bench_app_first_chart.py`` does) with the default analysis
already in the cache, then opens ``--sessions`` Playwright browser contexts at once (one chromium, Debian's
``/usr/bin/chromium``, one context = one Streamlit session) and measures, per session, the time from
``page.goto`` until the Layers page's charts are visible, and the Streamlit server's CPU time during the burst
(to separate the server's cost from the browsers', which share this machine's cores in the benchmark but
run on the visitors' own machines in real use). A session counts as an error when it times out,
when the page shows a Streamlit exception box or an error alert, or when fewer than the expected charts
appear. Prints p50/p95/max and the error count with the machine, versions and date.

    .venv/bin/python benchmarks/bench_app_load.py [--sessions 30] [--timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_app_first_chart import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, TINY, _start_server, _stop_server, cpu_seconds, percentile, report_errors)

CHART = ".js-plotly-plot .main-svg"
EXPECTED_CHARTS = 2  # Layers page: utilization bars and the block x kind heatmap


async def _session(browser, url: str, timeout_ms: int) -> tuple[float | None, str | None]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        start = time.perf_counter()
        await page.goto(url, timeout=timeout_ms)
        await page.wait_for_function(
            f"document.querySelectorAll('{CHART}').length >= {EXPECTED_CHARTS}", timeout=timeout_ms)
        elapsed = time.perf_counter() - start
        if await page.locator('[data-testid="stException"]').count():
            return elapsed, "exception box on the page"
        if await page.locator('[data-testid="stAlertContentError"]').count():
            return elapsed, "error alert on the page"
        return elapsed, None
    except Exception as exc:  # a timeout or a crashed page is an error of this session
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    finally:
        await context.close()


async def _run(url: str, sessions: int, timeout_ms: int, server_pid: int):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            warm = await _session(browser, url, timeout_ms)  # the server's first session imports torch/timm
            if warm[1]:
                raise RuntimeError(f"warm-up session failed: {warm[1]}")
            cpu_before = cpu_seconds(server_pid)
            outcomes = await asyncio.gather(*[_session(browser, url, timeout_ms) for _ in range(sessions)])
            return outcomes, cpu_seconds(server_pid) - cpu_before
        finally:
            await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY)
    parser.add_argument("--dataset", default="fashion-mnist:test")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    from analysis.engine import analyze

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        cache_dir = str(Path(tmp) / "cache")
        analyze(args.model, args.dataset, samples=args.samples, cache_dir=cache_dir)
        process, url = _start_server(cache_dir, args.model, args.dataset, args.samples, Path(tmp) / "streamlit.log")
        try:
            start = time.perf_counter()
            outcomes, server_cpu = asyncio.run(_run(url, args.sessions, int(args.timeout * 1000), process.pid))
            wall = time.perf_counter() - start
        finally:
            _stop_server(process)
        log_tail = (Path(tmp) / "streamlit.log").read_text()[-1500:]

    times = [t for t, err in outcomes if t is not None and err is None]
    errors = [err for _, err in outcomes if err is not None]
    from importlib.metadata import version

    import streamlit
    import torch

    print(f"date {dt.datetime.now().isoformat(timespec='seconds')}  machine {platform.machine()} "
          f"{os.cpu_count()} logical CPUs  python {platform.python_version()}  streamlit {streamlit.__version__}  "
          f"playwright {version('playwright')}  torch {torch.__version__}")
    print(f"{args.sessions} concurrent sessions on a cached result ({args.model}, {args.dataset}, {args.samples} images)")
    if times:
        print(f"time to charts on screen: p50 {statistics.median(times):.2f} s  p95 {percentile(times, 0.95):.2f} s  "
              f"max {max(times):.2f} s  (all {args.sessions} opened within {wall:.1f} s)")
    print(f"streamlit server CPU time for the burst: {server_cpu:.1f} s ({server_cpu / args.sessions:.2f} s per "
          f"session); the rest of the machine's time went to the {args.sessions} browser pages themselves")
    return report_errors(errors, log_tail, limit=10)


if __name__ == "__main__":
    sys.exit(main())
