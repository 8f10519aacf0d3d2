"""A classroom on one server: N students open the app at once and click through it.

Starts ``streamlit run app.py`` on loopback with a cache that holds the zoo's regimes comparison (the entries
shipped in ``analysis/demo_results``, copied as they are), then drives ``--sessions`` concurrent Playwright
browser contexts (one chromium, Debian's ``/usr/bin/chromium``; one context = one Streamlit session, as one
student's browser). Each session, at 1280x720 as on a projector:

1. opens the app (Compare): time until its first chart is drawn, then until its three charts are;
2. switches through three pages with the sidebar (Layers, Spectra, Heads): time from the click until the new
   page's title and every chart on it are drawn;
3. moves the output-energy slider one step: time until the sidebar's MLU shows the new value.

A session counts an error when a step times out, or when an exception box or an error alert is on the page.
The server's resident memory is sampled every 0.2 s (peak reported), and so is its CPU time. Everything runs
on this machine: the browsers' rendering competes with the server for its cores (in a classroom each student's
browser runs on their own machine), so the times here are an upper bound. Prints the percentiles, the errors
and the machine's load.

    .venv/bin/python benchmarks/bench_classroom.py [--sessions 20] [--timeout 300] [--browser-nice 10] [--poll 100]

The waits check the page every ``--poll`` ms (100): with Playwright's default, a check on every animation frame,
each of the twenty waiting pages kept drawing frames, CPU no student's browser spends (``--poll raf`` measures
that way, as the rows before 2026-12-05 09:00 did).

``--browser-nice 10`` runs every browser process at niceness 10, so the server is served first, as on a
classroom's server whose students render on their own machines; the 20 browsers still render on the same
2 cores as each other, so a page switch also waits for its page's drawing behind the others'.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_app_first_chart import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, _start_server, _stop_server, cpu_seconds, percentile, report_errors)

VIEWPORT = {"width": 1280, "height": 720}
PAGES = [("Layers", 2), ("Spectra", 4), ("Heads", 1)]  # (title, charts it draws at once)
CHARTS_DRAWN = """(n) => {
    const charts = document.querySelectorAll("[data-testid='stPlotlyChart']");
    const drawn = document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot .main-svg");
    return charts.length >= n && drawn.length >= charts.length; }"""


def _zoo_cache(folder: Path) -> Path:
    """A cache with the shipped zoo analyses (copied: the server reads them as any cached result)."""
    from analysis.cache import KEY_PATTERN
    from analysis.demo_results import SEED_ROOT

    folder.mkdir(parents=True, exist_ok=True)
    for entry in SEED_ROOT.iterdir():
        if entry.is_dir() and KEY_PATTERN.fullmatch(entry.name):
            shutil.copytree(entry, folder / entry.name)
    return folder


class Sampler(threading.Thread):
    """Samples a process's resident memory and CPU time every 0.2 s (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.stop = pid, 0, threading.Event()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.2)


async def _problem(page) -> str | None:
    if await page.locator("[data-testid='stException']").count():
        return "exception box on the page"
    if await page.locator("[data-testid='stAlertContentError']").count():
        return "error alert on the page"
    return None


async def _sidebar_mlu(page) -> str:
    return (await page.locator("[data-testid='stSidebar'] [data-testid='stMetricValue']").first.inner_text()).strip()


FIRST_CHART = """() => Array.from(document.querySelectorAll(".js-plotly-plot .main-svg"))
    .some(svg => svg.getBoundingClientRect().height > 0)"""
PAGE_DRAWN = """([title, n]) => Array.from(document.querySelectorAll("h1")).some(h => h.textContent.includes(title))
    && (""" + CHARTS_DRAWN + """)(n)"""


async def _session(browser, url: str, timeout_ms: int, index: int, poll) -> dict:
    """One student: open Compare, switch through three pages, move the energy slider. ``poll``: how the waits
    check the page, every ``poll`` ms, or ``"raf"`` (Playwright's default for its waits: on every animation frame,
    which keeps a headless page producing frames while it waits)."""
    out: dict = {"switches": [], "errors": []}
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    step = "open"
    try:
        await asyncio.sleep(0.05 * index)  # the class clicks the link within a second or so
        start = time.perf_counter()
        await page.goto(url)
        await page.wait_for_function(FIRST_CHART, polling=poll)
        out["first_chart"] = time.perf_counter() - start
        await page.wait_for_function(CHARTS_DRAWN, arg=3, polling=poll)
        out["compare"] = time.perf_counter() - start
        for title, charts in PAGES:
            step = title
            start = time.perf_counter()
            await page.locator("[data-testid='stSidebarNavLink']", has_text=title).click()
            await page.wait_for_function(PAGE_DRAWN, arg=[title, charts], polling=poll)
            out["switches"].append(time.perf_counter() - start)
            problem = await _problem(page)
            if problem:
                out["errors"].append(f"{title}: {problem}")
        step = "energy slider"
        before = await _sidebar_mlu(page)
        start = time.perf_counter()
        thumb = page.locator("[data-testid='stSidebar'] input[type='range']").nth(1)
        await thumb.focus()
        await thumb.press("ArrowLeft")
        await page.wait_for_function(
            "(before) => { const m = document.querySelector(\"[data-testid='stSidebar'] [data-testid='stMetricValue']\");"
            " return m && m.innerText.trim() !== before; }", arg=before, polling=poll)
        out["slider"] = time.perf_counter() - start
        problem = await _problem(page)
        if problem:
            out["errors"].append(f"slider: {problem}")
    except Exception as exc:  # a timeout or a crashed page is this session's error
        out["errors"].append(f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
    finally:
        await context.close()
    return out


def _niced_chromium(folder: Path, niceness: int) -> str:
    """A chromium launcher whose every process runs at ``niceness`` (inherited by the renderers it forks)."""
    if niceness == 0:
        return CHROMIUM
    launcher = folder / "chromium-niced"
    launcher.write_text(f'#!/bin/sh\nexec nice -n {int(niceness)} "{CHROMIUM}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


async def _run(url: str, sessions: int, timeout_ms: int, chromium: str = CHROMIUM, poll=100) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            warm = await _session(browser, url, timeout_ms, 0, poll)  # the server's first session imports torch
            if warm["errors"]:
                raise RuntimeError(f"warm-up session failed: {warm['errors']}")
            return await asyncio.gather(*[_session(browser, url, timeout_ms, i, poll) for i in range(sessions)])
        finally:
            await browser.close()


def _percentiles(values: list[float]) -> str:
    if not values:
        return "no value"
    return (f"p50 {statistics.median(values):5.1f} s  p95 {percentile(values, 0.95):5.1f} s  max {max(values):5.1f} s  "
            f"(n = {len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one step")
    parser.add_argument("--browser-nice", type=int, default=0,
                        help="run the browsers at this niceness (e.g. 10): the server first, as when each student's "
                             "browser renders on their own machine; the browsers still share the rest of the cores")
    parser.add_argument("--poll", default="100",
                        help="how often the waits check the page: milliseconds (default 100), or 'raf' (on every "
                             "animation frame, Playwright's default and this benchmark's before 2026-12-05: it kept "
                             "each waiting page drawing frames, about 0.07 s of CPU per second per page)")
    args = parser.parse_args()
    poll = args.poll if args.poll == "raf" else int(args.poll)

    with tempfile.TemporaryDirectory(prefix="bench-classroom-") as tmp:
        cache_dir = _zoo_cache(Path(tmp) / "cache")
        log_path = Path(tmp) / "streamlit.log"
        process, url = _start_server(str(cache_dir), None, None, None, log_path)  # the app's own defaults
        sampler = Sampler(process.pid)
        sampler.start()
        load_before = os.getloadavg()
        try:
            cpu_before = sampler.cpu_seconds()
            start = time.perf_counter()
            outcomes = asyncio.run(_run(url, args.sessions, int(args.timeout * 1000),
                                        _niced_chromium(Path(tmp), args.browser_nice), poll))
            wall = time.perf_counter() - start
            server_cpu = sampler.cpu_seconds() - cpu_before
        finally:
            sampler.stop.set()
            _stop_server(process)
        log_tail = log_path.read_text()[-1500:]

    import streamlit

    errors = [e for o in outcomes for e in o["errors"]]
    print(f"date {dt.datetime.now().isoformat(timespec='seconds')}  machine {platform.machine()} {os.cpu_count()} "
          f"logical CPUs  python {platform.python_version()}  streamlit {streamlit.__version__}")
    print(f"load average before {' '.join(f'{v:.1f}' for v in load_before)}, after "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{args.sessions} concurrent sessions at {VIEWPORT['width']}x{VIEWPORT['height']}, all done in {wall:.0f} s"
          f"; browsers at niceness {args.browser_nice}; waits poll "
          f"{'on every frame' if poll == 'raf' else f'every {poll} ms'}")
    print(f"first chart (Compare)      {_percentiles([o['first_chart'] for o in outcomes if 'first_chart' in o])}")
    print(f"Compare, all three charts  {_percentiles([o['compare'] for o in outcomes if 'compare' in o])}")
    print(f"page switch                {_percentiles([s for o in outcomes for s in o['switches']])}")
    print(f"energy slider to new MLU   {_percentiles([o['slider'] for o in outcomes if 'slider' in o])}")
    print(f"server: peak resident memory {sampler.peak_rss / 2 ** 30:.2f} GiB, CPU {server_cpu:.0f} s "
          f"({server_cpu / max(args.sessions, 1):.1f} s per session)")
    return report_errors(errors, log_tail)


if __name__ == "__main__":
    sys.exit(main())
