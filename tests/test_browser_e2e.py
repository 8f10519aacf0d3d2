"""End to end in a real browser: ``streamlit run app.py`` driven by Playwright with Debian's chromium.

Set-up installs the browser with ``scripts/install_browser.sh`` (idempotent; the tests are skipped, with the
reason, only when it cannot be installed), pre-fills a private cache with two analyses of a tiny random ViT,
points the app's default analysis at the first one, and starts the server on a free loopback port. The
tests then open the app, check that the Plotly charts render, move an energy slider with the keyboard and
check that the numbers shown follow, click a bar and heatmap cells to select a layer for the Spectra page,
visit every page, and save a screenshot of each to ``tests/artifacts/screenshots/<page>.png`` (``docs/screenshots/`` with ``UPDATE_SCREENSHOTS=1``). The server is always terminated.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import TINY_VIT

ROOT = Path(__file__).resolve().parent.parent
# screenshots go to a git-ignored folder, so a test run never edits tracked files; set
# UPDATE_SCREENSHOTS=1 to refresh the README's copies in docs/screenshots/
SCREENSHOTS = ROOT / ("docs/screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else "tests/artifacts/screenshots")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DATASET = "fashion-mnist:test"
SAMPLES = 64
TINY_A = TINY_VIT
TINY_B = f"{TINY_VIT}&seed=1"
VIEWPORT = {"width": 1400, "height": 2000}
FIRST_LOAD_MS = 150_000  # first page: the server imports torch and timm and plans the default (shared CPUs)
STEP_MS = 60_000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pct(value: float) -> str:
    return f"{value:.1%}"


@pytest.fixture(scope="module")
def browser_path():
    """Debian's chromium, installed by scripts/install_browser.sh when missing."""
    if not Path(CHROMIUM).exists():
        run = subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh")], capture_output=True, text=True,
                             timeout=900)
        if run.returncode != 0 or not Path(CHROMIUM).exists():
            pytest.skip(f"chromium could not be installed: {(run.stderr or run.stdout).strip()[-300:]}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # pragma: no cover - playwright is pinned in requirements.txt
        pytest.skip(f"playwright is not installed: {exc}")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser_path):
    """``streamlit run app.py`` on a free loopback port, on a private cache holding two tiny analyses."""
    from analysis.engine import analyze

    cache_dir = tmp_path_factory.mktemp("e2e-cache")
    a = analyze(TINY_A, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    b = analyze(TINY_B, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    port = _free_port()
    env = dict(
        os.environ,
        ANALYSIS_CACHE_DIR=str(cache_dir),
        ANALYSIS_DEFAULT_MODEL=TINY_A,
        ANALYSIS_DEFAULT_DATASET=DATASET,
        ANALYSIS_DEFAULT_SAMPLES=str(SAMPLES),
        ANALYSIS_DEFAULT_COMPARISON=f"{TINY_A},{TINY_B}",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, a=a, b=b, log=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def page(server, browser_path):
    """One browser tab for the module's tests, in order (they walk through the app like a user)."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport=VIEWPORT)
            tab.set_default_timeout(STEP_MS)
            yield tab
        finally:
            browser.close()


def _charts_rendered(tab, at_least: int, timeout: int = STEP_MS) -> int:
    """Wait until every Plotly chart on the page has drawn its SVG (and there are at least ``at_least``)."""
    tab.wait_for_function(
        """(n) => {
            const charts = document.querySelectorAll("[data-testid='stPlotlyChart']");
            const drawn = document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot .main-svg");
            return charts.length >= n && drawn.length >= charts.length;
        }""",
        arg=at_least, timeout=timeout,
    )
    _wait_idle(tab)
    return tab.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").count()


def _wait_idle(tab) -> None:
    """Wait until the script run has finished (Streamlit's 'running' indicator is gone)."""
    tab.wait_for_function("() => !document.querySelector(\"[data-testid='stStatusWidget'] [data-testid='stStatusWidgetRunningIcon']\")")
    tab.wait_for_timeout(800)  # let Plotly finish its transitions before a screenshot


def _open(tab, title: str) -> None:
    tab.locator("[data-testid='stSidebarNavLink']", has_text=title).click()
    tab.wait_for_selector(f"h1:has-text('{title}')")


def _sidebar_mlu(tab) -> str:
    return tab.locator("[data-testid='stSidebar'] [data-testid='stMetricValue']").first.inner_text().strip()


def _shot(tab, name: str) -> None:
    """Screenshot of the page, cut just below the end of its content (the viewport is tall)."""
    box = tab.locator("[data-testid='stMainBlockContainer']").bounding_box()
    height = VIEWPORT["height"] if box is None else min(VIEWPORT["height"], max(900, int(box["y"] + box["height"] + 24)))
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height})


def test_app_opens_the_default_result_with_rendered_charts(page, server):
    page.goto(server.url)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=FIRST_LOAD_MS)
    assert page.locator("h1").first.inner_text().strip() == "Layers"
    assert _charts_rendered(page, 2) == 2
    assert page.locator(".js-plotly-plot .main-svg").first.is_visible()
    assert _sidebar_mlu(page) == _pct(server.a.mlu)
    assert "analysis=" + server.a.key in page.url
    bars = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first
    assert bars.locator("g.point").count() == len(server.a.layers)  # one bar per analysed layer
    _shot(page, "layers")


def test_clicking_a_bar_selects_that_layer(page, server):
    picker = page.locator("[data-testid='stMain'] [data-testid='stSelectbox'] input[role='combobox']").first
    assert picker.input_value() == "blocks.0.attn.qkv"  # the first layer counted in the MLU
    # bars are drawn one trace per kind (patch embedding, q,k,v x2, attention output x2, ...): the 4th is
    # the first attention output projection
    bar = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first.locator("g.point").nth(3)
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-testid='stMain'] [data-testid='stSelectbox'] input\");"
        " return i && i.value === 'blocks.0.attn.proj'; }"
    )
    _wait_idle(page)


def _click_heatmap_cell(tab, layer: str) -> None:
    """Click the heatmap cell whose first layer is ``layer`` (its invisible marker, found by customdata)."""
    heatmap = tab.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").nth(1)
    index = heatmap.evaluate("(el, name) => el.data[1].customdata.findIndex(c => c[0] === name)", layer)
    assert index >= 0, f"no heatmap cell starts with {layer}"
    box = heatmap.locator(".scatterlayer .trace path.point").nth(index).bounding_box()
    tab.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.wait_for_function(
        "(want) => { const i = document.querySelector(\"[data-testid='stMain'] [data-testid='stSelectbox'] input\");"
        " return i && i.value === want; }",
        arg=layer,
    )
    _wait_idle(tab)


def test_clicking_a_heatmap_cell_selects_its_layer(page, server):
    _click_heatmap_cell(page, "blocks.1.attn.proj")
    _click_heatmap_cell(page, "blocks.0.attn.proj")  # back to the bar's layer, which the Spectra test expects


def test_moving_an_energy_slider_changes_the_numbers(page, server):
    expected = server.a.at_energy(0.98, 0.99)
    assert _pct(expected.mlu) != _pct(server.a.mlu)
    thumb = page.locator("[data-testid='stSidebar'] input[type='range']").first
    thumb.focus()
    thumb.press("ArrowLeft")  # e_in: 0.99 -> 0.98 (the previous grid value)
    page.wait_for_function(
        "(want) => { const m = document.querySelector(\"[data-testid='stSidebar'] [data-testid='stMetricValue']\");"
        " return m && m.innerText.trim() === want; }",
        arg=_pct(expected.mlu),
    )
    assert thumb.get_attribute("aria-valuetext") == "0.98"
    # the main area re-renders after the sidebar: wait for it rather than reading a stale frame
    page.wait_for_function(
        "(want) => Array.from(document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stMetricValue']\"))"
        ".some(m => m.innerText.trim() === want)",
        arg="0.98 / 0.99",
    )
    main_metrics = page.locator("[data-testid='stMain'] [data-testid='stMetricValue']").all_inner_texts()
    assert _pct(expected.mlu) in [m.strip() for m in main_metrics]
    assert "0.98 / 0.99" in [m.strip() for m in main_metrics]


def test_spectra_page(page, server):
    _open(page, "Spectra")
    assert _charts_rendered(page, 3) == 3
    layer = "blocks.0.attn.proj"  # selected by the click on the Layers page
    assert page.get_by_text(f"Singular values of W and W' — {layer}").count() >= 1
    assert _sidebar_mlu(page) == _pct(server.a.at_energy(0.98, 0.99).mlu)  # the energies stay shared
    _shot(page, "spectra")


def test_compare_page_shows_both_analyses(page, server):
    _open(page, "Compare")
    page.locator("[data-testid='stMultiSelect'] input").click()
    page.locator("[role='option']").first.click()  # the open analysis is preselected; add the other
    page.keyboard.press("Escape")
    assert _charts_rendered(page, 3) == 3
    labels = page.locator("[data-testid='stMain'] [data-testid='stMetricLabel']").all_inner_texts()
    assert [label.strip()[:2] for label in labels] == ["A:", "B:"]
    values = page.locator("[data-testid='stMain'] [data-testid='stMetricValue']").all_inner_texts()
    expected = {_pct(r.at_energy(0.98, 0.99).mlu) for r in (server.a, server.b)}
    assert {v.strip() for v in values} == expected
    _shot(page, "compare")


@pytest.mark.parametrize("title, charts", [("Compress", 2), ("Library", 0), ("Analyze", 0)])
def test_other_pages_render(page, server, title, charts):
    _open(page, title)
    if charts:
        assert _charts_rendered(page, charts) == charts
    else:
        _wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, title.lower())
