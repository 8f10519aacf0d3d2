"""What one page draw costs the browser (and the server): one session on a quiet machine, step by step.

Starts ``streamlit run app.py`` with the app's own defaults on a cache holding the shipped zoo entries (as
``bench_classroom.py`` does), then drives one headless chromium page (1280x720) through the classroom walk:
open Compare, switch to Layers, Spectra and Heads with the sidebar, move the output-energy slider one step.
Around each step (after a warm-up walk, so that the scripts are parsed and the server's shared figures built)
it reads:

- Chrome DevTools Protocol ``Performance.getMetrics``: TaskDuration, ScriptDuration, LayoutDuration,
  RecalcStyleDuration of the page's main thread (seconds spent during the step);
- the page's DOM nodes and Plotly charts once drawn;
- the websocket traffic of the step, decoded as Streamlit's ``ForwardMsg``: script runs (``new_session``),
  reruns the browser asked for (``BackMsg.rerun_script``), bytes received, and the bytes and points of the
  Plotly figures' JSON;
- the server's CPU seconds.

    .venv/bin/python benchmarks/bench_page_draw.py [--walks 3]

Prints one line per step (median over ``--walks`` measured walks) and whether any figure uses WebGL traces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_app_first_chart import CHROMIUM, CHROMIUM_ARGS, _start_server, _stop_server, cpu_seconds  # noqa: E402
from bench_classroom import CHARTS_DRAWN, PAGES, VIEWPORT, _zoo_cache  # noqa: E402

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
CHROME_TYPES = ("renderer", "gpu-process", "browser", "utility")
WEBGL_TYPES = {"scattergl", "heatmapgl", "scatter3d", "surface", "mesh3d", "parcoords", "splom", "scattermapbox",
               "pointcloud", "contourgl", "scatterpolargl"}


def _points(trace: dict) -> int:
    """Values a trace carries: its longest of x / y, or its z cells."""
    z = trace.get("z")
    if isinstance(z, list) and z:
        return sum(len(r) if isinstance(r, list) else 1 for r in z)
    return max((len(trace[a]) for a in ("x", "y") if isinstance(trace.get(a), list)), default=0)


class Traffic:
    """The websocket frames of one step, decoded."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes_in = 0
        self.runs = 0
        self.finished = 0
        self.reruns_asked = 0
        self.figures: list[dict] = []

    def received(self, payload) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        data = payload if isinstance(payload, bytes) else payload.encode()
        self.bytes_in += len(data)
        msg = ForwardMsg()
        try:
            msg.ParseFromString(data)
        except Exception:  # noqa: BLE001 - not a ForwardMsg
            return
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.runs += 1
        elif kind == "script_finished":
            self.finished += 1
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            if element.WhichOneof("type") == "plotly_chart":
                spec = element.plotly_chart.spec
                figure = json.loads(spec)
                traces = figure.get("data", [])
                points = sum(_points(t) for t in traces)
                self.figures.append({"bytes": len(spec), "traces": len(traces), "points": points,
                                     "types": sorted({t.get("type", "scatter") for t in traces}),
                                     "config": element.plotly_chart.config, "id": element.plotly_chart.id})

    def sent(self, payload) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        data = payload if isinstance(payload, bytes) else payload.encode()
        msg = BackMsg()
        try:
            msg.ParseFromString(data)
        except Exception:  # noqa: BLE001
            return
        if msg.WhichOneof("type") == "rerun_script":
            self.reruns_asked += 1


def _settle(page, traffic: Traffic, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until every script run has finished and no frame came for ``quiet_s``."""
    deadline = time.monotonic() + limit_s
    last = (-1, -1)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
        now = (traffic.bytes_in, traffic.finished)
        if now != last:
            last, still_since = now, time.monotonic()
        elif traffic.finished >= traffic.runs and time.monotonic() - still_since >= quiet_s:
            return


def browser_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's chromium descendants, by process type (browser, renderer,
    gpu-process, utility): what the main thread's metrics leave out (raster, compositing, the GPU process)."""
    import psutil

    out: dict[str, float] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
            if not cmdline or "chromium" not in cmdline[0]:
                continue
            kind = next((a.split("=", 1)[1] for a in cmdline if a.startswith("--type=")), "browser")
            times = child.cpu_times()
            out[kind] = out.get(kind, 0.0) + times.user + times.system
        except psutil.Error:
            continue
    return out


def _metrics(cdp) -> dict:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def _dom(page) -> dict:
    return page.evaluate("""() => ({
        nodes: document.getElementsByTagName('*').length,
        charts: document.querySelectorAll("[data-testid='stPlotlyChart']").length,
        chart_nodes: Array.from(document.querySelectorAll("[data-testid='stPlotlyChart']"))
            .reduce((n, c) => n + c.getElementsByTagName('*').length, 0),
        webgl: document.querySelectorAll("[data-testid='stPlotlyChart'] canvas").length })""")


def _walk(page, cdp, traffic: Traffic, url: str, server_pid: int) -> list[dict]:
    rows = []

    def step(name, action, wait):
        traffic.reset()
        before, cpu, chrome, start = _metrics(cdp), cpu_seconds(server_pid), browser_cpu(), time.perf_counter()
        action()
        wait()
        drawn = time.perf_counter() - start
        _settle(page, traffic)
        after, chrome_after = _metrics(cdp), browser_cpu()
        row = {"step": name, "drawn_s": drawn, "server_cpu": cpu_seconds(server_pid) - cpu,
               **{m: after[m] - before[m] for m in METRICS}, **_dom(page),
               **{f"cpu {k}": chrome_after.get(k, 0.0) - chrome.get(k, 0.0) for k in CHROME_TYPES},
               "runs": traffic.runs, "reruns_asked": traffic.reruns_asked, "bytes_in": traffic.bytes_in,
               "figures": len(traffic.figures), "figure_bytes": sum(f["bytes"] for f in traffic.figures),
               "points": sum(f["points"] for f in traffic.figures),
               "types": sorted({t for f in traffic.figures for t in f["types"]}), "figure_list": list(traffic.figures)}
        rows.append(row)

    step("open Compare", lambda: page.goto(url), lambda: page.wait_for_function(CHARTS_DRAWN, arg=3))
    for title, charts in PAGES:
        step(title, lambda t=title: page.locator("[data-testid='stSidebarNavLink']", has_text=t).click(),
             lambda t=title, c=charts: (page.wait_for_selector(f"h1:has-text('{t}')"),
                                        page.wait_for_function(CHARTS_DRAWN, arg=c)))
    mlu = "[data-testid='stSidebar'] [data-testid='stMetricValue']"

    def slide():
        before = page.locator(mlu).first.inner_text().strip()
        thumb = page.locator("[data-testid='stSidebar'] input[type='range']").nth(1)
        thumb.focus()
        thumb.press("ArrowLeft")
        page.wait_for_function(f"(b) => {{ const m = document.querySelector(\"{mlu}\"); "
                               "return m && m.innerText.trim() !== b; }", arg=before)

    step("energy slider", slide, lambda: page.wait_for_function(CHARTS_DRAWN, arg=1))
    step("idle 5 s", lambda: page.wait_for_timeout(5000), lambda: None)

    def polled():  # what a Playwright wait costs the page: its predicate checked on every animation frame
        try:
            page.wait_for_function("() => false", timeout=5000)
        except Exception:  # noqa: BLE001 - the timeout is the point
            pass

    step("5 s raf poll", polled, lambda: None)

    def waiting():
        """A switch that waits 5 s for the server (stopped), as behind nineteen other sessions' runs."""
        import os
        import signal

        os.kill(server_pid, signal.SIGSTOP)
        try:
            page.locator("[data-testid='stSidebarNavLink']", has_text="Layers").click()
            page.wait_for_timeout(5000)
        finally:
            os.kill(server_pid, signal.SIGCONT)

    step("Layers, 5 s wait", waiting, lambda: (page.wait_for_selector("h1:has-text('Layers')"),
                                               page.wait_for_function(CHARTS_DRAWN, arg=2)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walks", type=int, default=3, help="measured walks (after one warm-up walk)")
    parser.add_argument("--json", type=Path, help="also write every walk's rows here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-page-draw-") as tmp:
        cache_dir = _zoo_cache(Path(tmp) / "cache")
        process, url = _start_server(str(cache_dir), None, None, None, Path(tmp) / "streamlit.log")
        walks = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                for walk in range(args.walks + 1):
                    context = browser.new_context(viewport=VIEWPORT)  # a new student: a new session
                    page = context.new_page()
                    page.set_default_timeout(180_000)
                    traffic = Traffic()
                    page.on("websocket", lambda ws, t=traffic: (ws.on("framereceived", t.received),
                                                                ws.on("framesent", t.sent)))
                    cdp = context.new_cdp_session(page)
                    cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
                    rows = _walk(page, cdp, traffic, url, process.pid)
                    if walk:
                        walks.append(rows)
                    context.close()
                browser.close()
        finally:
            _stop_server(process)

    if args.json:
        args.json.write_text(json.dumps(walks, indent=1))
    header = (f"{'step':<14} {'drawn s':>7} {'task s':>6} {'script':>6} {'layout':>6} {'style':>6} {'server':>6} "
              f"{'runs':>4} {'asked':>5} {'kB in':>6} {'figs':>4} {'fig kB':>6} {'points':>7} {'DOM':>6} "
              f"{'chart DOM':>9} {'charts':>6} {'rend':>5} {'gpu':>5} {'brow':>5} {'util':>5}  trace types")
    print(header)
    for i, first in enumerate(walks[0]):
        rows = [w[i] for w in walks]

        def med(name, rows=rows):
            return statistics.median(r[name] for r in rows)

        print(f"{first['step']:<14} {med('drawn_s'):7.2f} {med('TaskDuration'):6.2f} {med('ScriptDuration'):6.2f} "
              f"{med('LayoutDuration'):6.2f} {med('RecalcStyleDuration'):6.2f} {med('server_cpu'):6.2f} "
              f"{med('runs'):4.0f} {med('reruns_asked'):5.0f} {med('bytes_in') / 1e3:6.0f} {med('figures'):4.0f} "
              f"{med('figure_bytes') / 1e3:6.0f} {med('points'):7.0f} {med('nodes'):6.0f} {med('chart_nodes'):9.0f} "
              f"{med('charts'):6.0f} {med('cpu renderer'):5.2f} {med('cpu gpu-process'):5.2f} "
              f"{med('cpu browser'):5.2f} "
              f"{med('cpu utility'):5.2f}  {','.join(first['types'])}")
    webgl = sorted({t for w in walks for r in w for t in r["types"]} & WEBGL_TYPES)
    print(f"WebGL trace types: {', '.join(webgl) or 'none'}; canvases in charts: "
          f"{max(r['webgl'] for w in walks for r in w)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
