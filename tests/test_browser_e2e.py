"""End to end in a real browser: ``streamlit run app.py`` as the README says, driven by Playwright with
Debian's chromium, on a fresh (empty) cache folder.

Set-up installs the browser with ``scripts/install_browser.sh`` (idempotent; the tests are skipped, with the
reason, only when it cannot be installed) and starts the server on a free loopback port with nothing but
the cache folder changed: the app must open on the zoo's regimes comparison and the embedded default from
the entries shipped in ``analysis/demo_results``. Two times are measured from the server's start and
written to ``tests/artifacts/e2e_times.json`` (and printed): the first chart on screen, and the Compare page
showing at least three regimes. The tests then walk through the app like a teacher: the regimes with their
accuracy and caveat, Layers (click a bar and heatmap cells, step with next/previous, move an energy slider),
Spectra (press Play on the energy sweep), every page, presentation mode, and every page again at 1920x1080.
Screenshots of every page at 1280x720 go to ``tests/artifacts/screenshots/`` (``docs/screenshots/``, the
README's copies, with ``UPDATE_SCREENSHOTS=1``). The server is always terminated.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
# screenshots go to a git-ignored folder, so a test run never edits tracked files; set
# UPDATE_SCREENSHOTS=1 to refresh the README's copies in docs/screenshots/
SCREENSHOTS = ROOT / ("docs/screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else "tests/artifacts/screenshots")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SMALL = {"width": 1280, "height": 720}
LARGE = {"width": 1920, "height": 1080}
FIRST_LOAD_MS = 240_000  # generous: the server imports torch and timm on a shared 2-core machine
STEP_MS = 90_000
PAGES = ["Compare", "Layers", "Heads", "Spectra", "One image", "Analyze", "Timeline", "Compress", "Library", "Learn"]
REGIMES = ("supervised", "self-supervised: MAE", "self-supervised: DINO", "untrained (random init)")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlu(result) -> str:
    """The MLU as a metric shows it (its split-half error bar sits under it, in the metric's grey pill)."""
    from ui.text import pct

    return pct(result.mlu)


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


def _default_result():
    """The embedded default analysis as shipped (the numbers the app must show)."""
    from analysis import defaults
    from analysis.cache import ResultCache
    from analysis.demo_results import SEED_ROOT, read_index

    entry = next(e for e in read_index().get("entries", []) if e["model_id"] == defaults.DEFAULT_MODEL)
    return ResultCache(SEED_ROOT).load(entry["key"])


@contextlib.contextmanager
def _streamlit(cache_dir: Path, log_path: Path):
    """``python -m streamlit run app.py`` in the repository root (the README's command; only the port is
    chosen) on ``cache_dir``; yields ``(url, started)`` once the server answers; always terminated."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "ANALYSIS_DEFAULT"))}
    env.update(ANALYSIS_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1"]
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
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
                pytest.fail(f"streamlit did not answer within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, started
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser_path):
    """The app's server on a fresh cache folder; the clock starts when the process is started."""
    cache_dir = tmp_path_factory.mktemp("e2e-fresh-cache")
    a = _default_result()
    assert a is not None, "the shipped default entry is missing or stale: run python -m analysis.demo_results"
    log_path = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    with _streamlit(cache_dir, log_path) as (url, started):
        yield SimpleNamespace(url=url, a=a, log=log_path, started=started, cache_dir=cache_dir, times={})


@pytest.fixture(scope="module")
def page(server, browser_path):
    """One browser tab at 1280x720 for the module's tests, in order (they walk through the app like a user)."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport=SMALL)
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
    """Screenshot of what the viewport shows (what a projector shows)."""
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _first_chart_top(tab) -> float:
    box = tab.locator("[data-testid='stPlotlyChart']").first.bounding_box()
    assert box is not None
    return box["y"]


def _regimes_shown(tab) -> int:
    text = tab.locator("[data-testid='stMain']").inner_text()
    return sum(regime in text for regime in REGIMES)


# ------------------------------------------------------------------------------------------ the walk
def test_app_opens_on_the_regimes_comparison_fast(page, server):
    page.goto(server.url)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=FIRST_LOAD_MS)
    first_chart = time.monotonic() - server.started
    page.wait_for_function(
        "(regimes) => { const m = document.querySelector(\"[data-testid='stMain']\");"
        " return m && regimes.filter(r => m.innerText.includes(r)).length >= 3; }",
        arg=list(REGIMES), timeout=FIRST_LOAD_MS,
    )
    regimes = time.monotonic() - server.started
    assert page.locator("h1").first.inner_text().strip() == "Compare"
    assert _charts_rendered(page, 3) == 3
    _open(page, "Layers")
    _charts_rendered(page, 2)
    start = time.monotonic()
    _open(page, "Compare")
    page.wait_for_function(
        "(regimes) => { const m = document.querySelector(\"[data-testid='stMain']\");"
        " return m && regimes.filter(r => m.innerText.includes(r)).length >= 3; }", arg=list(REGIMES))
    _charts_rendered(page, 3)
    back = time.monotonic() - start
    server.times.update(first_chart_s=round(first_chart, 1), compare_regimes_s=round(regimes, 1),
                        compare_again_s=round(back, 1))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "e2e_times.json").write_text(json.dumps(server.times, indent=1))
    print(f"\nfrom server start: first chart {first_chart:.1f} s, Compare with >= 3 regimes {regimes:.1f} s; "
          f"Compare again from Layers {back:.1f} s")
    assert "Inotify" not in server.log.read_text()


def test_compare_shows_regime_accuracy_and_caveat_for_each_zoo_model(page, server):
    assert _regimes_shown(page) == 4
    labels = page.locator("[data-testid='stMain'] [data-testid='stMetricLabel']").all_inner_texts()
    assert [label.strip()[:2] for label in labels] == ["A:", "B:", "C:", "D:"]
    text = page.locator("[data-testid='stMain']").inner_text()
    from analysis.regimes import training_facts

    probes = [f"{training_facts(m).linear_probe:.1%}" for m in ("zoo:vit-fmnist-supervised", "zoo:vit-fmnist-dino")]
    assert "linear probe" in text and all(p in text for p in probes), probes  # the manifest's measured values
    assert "pp" in text  # deltas in percentage points
    alerts = page.locator("[data-testid='stAlert']").all_inner_texts()
    assert any("vit-fmnist-dino" in a and "fell short" in a for a in alerts)
    assert _first_chart_top(page) < SMALL["height"]  # a chart above the fold at 1280x720
    _shot(page, "compare")


def test_layers_chart_first_and_clicking_a_bar_selects_that_layer(page, server):
    _open(page, "Layers")
    assert _charts_rendered(page, 2) == 2  # bars, block x kind heatmap (the folded convergence: built when opened)
    assert _first_chart_top(page) < SMALL["height"] * 0.6
    assert _sidebar_mlu(page) == _mlu(server.a)
    assert "analysis=" + server.a.key in page.url
    bars = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first
    assert bars.locator("g.point").count() == len(server.a.layers)  # one bar per analysed layer
    _shot(page, "layers")
    picker = page.locator("[data-testid='stMain'] [data-testid='stSelectbox'] input[role='combobox']").first
    assert picker.input_value() == "blocks.0.attn.qkv"  # the first layer counted in the MLU
    # bars are drawn one trace per kind: patch embedding (1), q,k,v (6), then attention outputs: the 8th
    # point is the first attention output projection
    bar = bars.locator("g.point").nth(7)
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    _wait_for_layer(page, "blocks.0.attn.proj")
    page.get_by_text("How sure is this?").click()  # a folded panel builds its chart when opened
    assert _charts_rendered(page, 3) == 3


def _wait_for_layer(tab, layer: str) -> None:
    tab.wait_for_function(
        "(want) => { const i = document.querySelector(\"[data-testid='stMain'] [data-testid='stSelectbox'] input\");"
        " return i && i.value === want; }",
        arg=layer,
    )
    _wait_idle(tab)


def _click_heatmap_cell(tab, layer: str) -> None:
    """Click the heatmap cell whose first layer is ``layer`` (its invisible marker, found by customdata)."""
    heatmap = tab.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").nth(1)
    heatmap.scroll_into_view_if_needed()
    index = heatmap.evaluate("(el, name) => el.data[1].customdata.findIndex(c => c[0] === name)", layer)
    assert index >= 0, f"no heatmap cell starts with {layer}"
    box = heatmap.locator(".scatterlayer .trace path.point").nth(index).bounding_box()
    tab.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    _wait_for_layer(tab, layer)


def test_clicking_a_heatmap_cell_selects_and_outlines_it(page, server):
    _click_heatmap_cell(page, "blocks.1.attn.proj")
    heatmap = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").nth(1)
    shapes = heatmap.evaluate("(el) => (el.layout.shapes || []).filter(s => s.type === 'rect').length")
    assert shapes == 1  # the selected cell is outlined
    _click_heatmap_cell(page, "blocks.0.attn.proj")  # back to the bar's layer, which the Spectra test expects


def test_next_and_previous_step_through_the_layers(page, server):
    page.locator(".st-key-layers_layer_pick_next button").first.click()
    _wait_for_layer(page, "blocks.0.mlp.fc1")
    page.locator(".st-key-layers_layer_pick_prev button").first.click()
    _wait_for_layer(page, "blocks.0.attn.proj")


def test_moving_an_energy_slider_changes_the_numbers(page, server):
    expected = server.a.at_energy(0.99, 0.98)  # this model's ranks are set by k_out: move e_out
    assert _mlu(expected) != _mlu(server.a)
    thumb = page.locator("[data-testid='stSidebar'] input[type='range']").nth(1)
    thumb.focus()
    thumb.press("ArrowLeft")  # e_out: 0.99 -> 0.98 (the previous grid value)
    page.wait_for_function(
        "(want) => { const m = document.querySelector(\"[data-testid='stSidebar'] [data-testid='stMetricValue']\");"
        " return m && m.innerText.trim() === want; }",
        arg=_mlu(expected),
    )
    assert thumb.get_attribute("aria-valuetext") == "0.98"
    page.wait_for_function(
        "(want) => Array.from(document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stMetricValue']\"))"
        ".some(m => m.innerText.trim() === want)",
        arg="0.99 / 0.98",
    )
    main_metrics = page.locator("[data-testid='stMain'] [data-testid='stMetricValue']").all_inner_texts()
    assert _mlu(expected) in [m.strip() for m in main_metrics]


def test_spectra_page_and_the_energy_sweep_plays(page, server):
    _open(page, "Spectra")
    assert _charts_rendered(page, 4) == 4
    layer = "blocks.0.attn.proj"  # selected by the clicks on the Layers page
    assert page.get_by_text(f"Singular values of W and W' — {layer}").count() >= 1
    assert _sidebar_mlu(page) == _mlu(server.a.at_energy(0.99, 0.98))  # the energies stay shared
    assert _first_chart_top(page) < SMALL["height"]
    _shot(page, "spectra")
    sweep = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").nth(1)
    before = sweep.evaluate("(el) => el.layout.title.text")
    sweep.scroll_into_view_if_needed()
    sweep.locator("g.updatemenu-button").first.click()  # ▶ Play
    page.wait_for_function("([el, t]) => el.layout.title.text !== t", arg=[sweep.element_handle(), before],
                           timeout=20_000)
    assert "Sweep the energy: e = " in sweep.evaluate("(el) => el.layout.title.text")


@pytest.mark.parametrize("title, charts", [("Analyze", 0), ("Timeline", 3), ("Compress", 2), ("Library", 0), ("Learn", 2)])
def test_other_pages_render(page, server, title, charts):
    _open(page, title)
    if charts:
        assert _charts_rendered(page, charts) >= charts
    else:
        _wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    page.evaluate("() => window.scrollTo(0, 0)")
    _shot(page, title.lower())


def test_presentation_mode_puts_larger_charts_first(page, server):
    _open(page, "Layers")
    _charts_rendered(page, 2)
    normal = page.locator("[data-testid='stPlotlyChart']").first.bounding_box()["height"]
    page.locator("[data-testid='stSidebar'] [data-testid='stCheckbox']", has_text="Presentation mode").click()
    page.wait_for_function(
        "(h) => { const c = document.querySelector(\"[data-testid='stPlotlyChart']\");"
        " return c && c.getBoundingClientRect().height > h + 40; }", arg=normal)
    _wait_idle(page)
    assert _first_chart_top(page) < SMALL["height"] * 0.6
    page.locator("[data-testid='stSidebar'] [data-testid='stCheckbox']", has_text="Presentation mode").click()
    _wait_idle(page)


BARE_WORDS = """() => {
    const out = []; const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;
    while ((n = walk.nextNode())) { const t = n.textContent.trim(); const e = n.parentElement;
      if (!e) continue; const r = e.getBoundingClientRect();
      if (r.width > 0 && r.height > 0 && /^(nan|NaN|None|null|undefined|-?inf|NaT)$/.test(t)) out.push(t); }
    return out; }"""
"""Visible text nodes that are a bare missing value (what tools/ui_sweep.py looks for)."""


def _check_page(tab, title: str, size: dict) -> None:
    """No exception box, no bare nan/None on screen, and the first chart (if any) above the fold."""
    assert tab.locator("[data-testid='stException']").count() == 0, title
    if tab.locator("[data-testid='stPlotlyChart']").count():
        _charts_rendered(tab, 1)
        assert _first_chart_top(tab) < size["height"], title
    assert tab.evaluate(BARE_WORDS) == [], title


def test_every_page_at_1920x1080(page, server):
    page.set_viewport_size(LARGE)
    try:
        for title in PAGES:
            _open(page, title)
            _wait_idle(page)
            _check_page(page, title, LARGE)
            page.screenshot(path=str(ARTIFACTS / f"1920x1080-{title.lower()}.png"))
    finally:
        page.set_viewport_size(SMALL)


def _bar_labels_apart_and_above_the_fold(tab, size: dict) -> None:
    """The first chart's category labels (Compare's MLU bars: a letter over its regime) do not touch each other,
    and the lowest of them is above the fold: on a projector "supervised" and "MAE" ran together, under the fold."""
    chart = tab.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first
    boxes = chart.evaluate("(el) => [...el.querySelectorAll('.xtick text')].map(t => {"
                           " const b = t.getBoundingClientRect(); return [b.left, b.right, b.bottom]; })")
    assert len(boxes) >= 2, boxes
    boxes.sort()
    assert all(right + 4 <= left for (_, right, _), (left, _, _) in zip(boxes, boxes[1:])), boxes
    assert max(bottom for _, _, bottom in boxes) <= size["height"], boxes


def test_every_page_in_presentation_mode_and_a_reload_keeps_it(page, server):
    """Presentation mode at 1280x720: every page right (no bare missing value, the first chart above the
    fold; on Compare, the whole MLU chart with its labels apart), and a reload keeps the mode, the energies and
    the selected layer (they are in the URL)."""
    page.locator("[data-testid='stSidebar'] [data-testid='stCheckbox']", has_text="Presentation mode").click()
    _wait_idle(page)
    try:
        for title in PAGES:
            _open(page, title)
            _wait_idle(page)
            _check_page(page, title, SMALL)
            if title == "Compare":
                _bar_labels_apart_and_above_the_fold(page, SMALL)
            page.screenshot(path=str(ARTIFACTS / f"presentation-{title.lower()}.png"))
        _open(page, "Spectra")
        assert "present=1" in page.url and "e_out=0.98" in page.url and "layer=blocks.0.attn.proj" in page.url
        page.reload()
        page.wait_for_selector("h1:has-text('Spectra')")
        _charts_rendered(page, 4)
        assert page.locator("[data-testid='stSidebar'] input[role='switch']").first.is_checked()
        assert page.locator("[data-testid='stSidebar'] input[type='range']").nth(1).get_attribute(
            "aria-valuetext") == "0.98"
        assert page.get_by_text("Singular values of W and W' — blocks.0.attn.proj").count() >= 1
    finally:
        toggle = page.locator("[data-testid='stSidebar'] [data-testid='stCheckbox']", has_text="Presentation mode")
        if page.locator("[data-testid='stSidebar'] input[role='switch']").first.is_checked():
            toggle.click()
            _wait_idle(page)


def test_a_page_that_does_not_exist_says_so(server, page):
    context = page.context.browser.new_context(viewport=SMALL)
    try:
        tab = context.new_page()
        tab.set_default_timeout(STEP_MS)
        tab.goto(f"{server.url}/nosuchpage")
        tab.wait_for_function("() => document.querySelector(\"[data-testid='stMain']\") && "
                              "document.querySelector(\"[data-testid='stMain']\").innerText.includes('no page')")
        assert "nosuchpage" in tab.locator("[data-testid='stMain']").inner_text()
    finally:
        context.close()


ADDRESSES = {"compare": "Compare", "layers": "Layers", "heads": "Heads", "spectra": "Spectra", "one_image": "One image",
             "analyze": "Analyze", "timeline": "Timeline", "compress": "Compress", "library": "Library",
             "learn": "Learn"}
"""Each page's own address (its file's name in ``pages/``) and the title it opens on."""


def test_every_page_opens_by_its_own_address(server, page):
    """Typed or bookmarked, ``/<page>`` opens that page, Compare too (whose home is "/"), without Streamlit's
    "Page not found" and without the app's "no page" notice; a link's query parameters are kept."""
    assert set(ADDRESSES) == {p.stem for p in (ROOT / "pages").glob("*.py")}
    assert list(ADDRESSES.values()) == PAGES
    context = page.context.browser.new_context(viewport=SMALL)
    try:
        tab = context.new_page()
        tab.set_default_timeout(STEP_MS)
        tab.goto(server.url)  # the router has run once (a fresh server's first request: the test below)
        tab.wait_for_selector("[data-testid='stMain'] h1")
        for address, title in ADDRESSES.items():
            tab.goto(f"{server.url}/{address}?e_in=0.95")
            tab.wait_for_function(
                "(want) => { const h = document.querySelector(\"[data-testid='stMain'] h1\");"
                " return h && h.innerText.trim() === want; }", arg=title)
            _wait_idle(tab)
            assert tab.get_by_text("Page not found").count() == 0, address
            assert "no page" not in tab.locator("[data-testid='stMain']").inner_text(), address
            assert "e_in=0.95" in tab.url, address
            active = tab.locator("[data-testid='stSidebarNavLink'][aria-current='page']")
            assert active.count() == 1 and active.inner_text().strip().splitlines()[-1] == title, address
    finally:
        context.close()


def test_a_deep_link_as_the_first_request_to_a_fresh_server_opens_that_page_in_the_app(tmp_path, page):
    """A shared link opened first on a just-started server: Streamlit may serve it through its legacy pages/
    navigation (the page alone, no router); the page must come back through app.py, to the same page, with
    the link's query parameters."""
    key = _default_result().key
    with _streamlit(tmp_path / "cache", tmp_path / "streamlit.log") as (url, _started):
        context = page.context.browser.new_context(viewport=SMALL)  # a new visitor, in the module's browser
        try:
            tab = context.new_page()
            tab.set_default_timeout(STEP_MS)
            tab.goto(f"{url}/heads?analysis={key}&e_in=0.95")
            tab.wait_for_function(
                "() => { const h = document.querySelector(\"[data-testid='stMain'] h1\");"
                " return h && h.innerText.trim() === 'Heads'; }")
            _charts_rendered(tab, 1)
            nav = [t.strip().splitlines()[-1] for t in tab.locator("[data-testid='stSidebarNav'] a").all_inner_texts()]
            assert nav[:3] == ["Compare", "Layers", "Heads"] and "app" not in nav  # the router's pages
            assert _sidebar_mlu(tab) == _mlu(_default_result())  # the frame and the analysis are there
            assert f"analysis={key}" in tab.url and "e_in=0.95" in tab.url  # not the default's e_in = 0.99
        finally:
            context.close()
