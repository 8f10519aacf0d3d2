"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` (no browser), and its chart builders.

Two real analyses of a tiny random ViT (seeds 0 and 1, 64 Fashion-MNIST test images) are computed once for
the module into a private cache; the app's default analysis points at the first one, so the app opens on a
ready result exactly as it does for the embedded default. Jobs that would start a worker process are
replaced by recorded stand-ins where a test is about the UI's reaction to job states.

Note on AppTest 1.67 with ``st.navigation``: only the first run of an ``AppTest`` executes the entry point
``app.py``; later runs (and ``switch_page``) execute the page file alone, with the session state the first
run left. So the sidebar (drawn by the entry point) is checked right after the first run, and everything
else in the main area, which pages draw themselves (notices and the URL are refreshed by each page too).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import defaults
from analysis.engine import analyze
from analysis.result import ENERGY_GRID
from tests.helpers import TINY_VIT, TINY_VIT_OPTIONS, save_tiny_vit_checkpoint, unfold
from tests.helpers import assert_page_ok as _ok, main_metric as _metric
from tests.helpers import plotly_figures as _charts, trace_values as _values

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DATASET = "fashion-mnist:test"
SAMPLES = 64
TINY_A = TINY_VIT
TINY_B = f"{TINY_VIT}&seed=1"
TIMEOUT = 180  # the first run imports torch and timm; the machine is shared


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two analyses in a module-wide cache (about 10 s on two CPU cores)."""
    cache_dir = tmp_path_factory.mktemp("app-cache")
    a = analyze(TINY_A, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    b = analyze(TINY_B, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    return SimpleNamespace(cache_dir=cache_dir, a=a, b=b)


def _point_app_at(cache_dir: Path, monkeypatch, comparison=(TINY_A, TINY_B, "zoo:not-in-this-zoo")) -> None:
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", TINY_A)
    monkeypatch.setattr(defaults, "DEFAULT_DATASET", DATASET)
    monkeypatch.setattr(defaults, "DEFAULT_SAMPLES", SAMPLES)
    monkeypatch.setattr(defaults, "DEFAULT_COMPARISON", tuple(comparison))


@pytest.fixture
def app(results, monkeypatch):
    """An AppTest of ``app.py`` on the module's cache (not yet run)."""
    from streamlit.testing.v1 import AppTest

    _point_app_at(results.cache_dir, monkeypatch)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _pct(value: float) -> str:
    return f"{value:.1%}"


# ------------------------------------------------------------------------------------------ pages
def test_app_opens_on_the_comparison_with_the_default_result_open(app, results):
    at = app.run()
    _ok(at)
    assert at.title[0].value == "Compare"  # a newcomer first sees the regimes comparison
    assert at.session_state["compare_keys"] == [results.a.key, results.b.key]  # the comparison set, cached
    assert [m.value for m in at.main.metric] == [_pct(results.a.mlu), _pct(results.b.mlu)]
    assert at.session_state["current_key"] == results.a.key  # the default analysis is open for the other pages
    assert at.query_params.get("analysis") == results.a.key
    sidebar_text = " ".join(m.value for m in at.sidebar.markdown)
    assert "fashion-mnist:test" in re.sub(r"<[^>]+>", "", sidebar_text) and "64" in sidebar_text
    # the ids never break in a narrow (presentation-mode) sidebar: whole on one line, scaled to fit it
    assert "<span class='lu-fit' style='--n:18'>fashion-mnist:test</span>" in sidebar_text
    # the MLU with its split-half error bar (percentage points) under it, never cut off with the value
    from ui.text import error_bar

    assert [(m.value, m.proto.delta) for m in at.sidebar.metric if m.label == "MLU"] == [
        (_pct(results.a.mlu), error_bar(results.a.mlu_err))]
    assert {s.key for s in at.sidebar.select_slider} == {"energy_in_slider", "energy_out_slider"}


def _layers(app, unfolded: bool = False):
    """The app after its first run (on Compare), switched to the Layers page (its folded panels opened)."""
    at = app.run()
    if unfolded:
        unfold(at)
    return at.switch_page("pages/layers.py").run()


def test_layers_page_shows_the_default_result(app, results):
    at = _layers(app, unfolded=True)
    _ok(at)
    assert at.title[0].value == "Layers"
    assert _metric(at, "MLU") == _pct(results.a.mlu)
    figures = _charts(at)
    assert len(figures) == 3  # utilization bars + block x kind heatmap + convergence (in its opened panel)
    bars = figures[0]
    shown = [name for trace in bars["data"] for name in _values(trace["x"])]
    assert sorted(shown) == sorted(results.a.layers["layer"])
    assert any(shape.get("y0") == pytest.approx(results.a.mlu) for shape in bars["layout"]["shapes"])
    # split-half whiskers on the bars, and the token set in every title
    assert all(trace["error_y"]["visible"] for trace in bars["data"])
    assert all("all tokens" in figure["layout"]["title"]["text"] for figure in figures)
    convergence = figures[2]
    mlu_line = next(trace for trace in convergence["data"] if trace["name"] == "MLU")
    assert _values(mlu_line["x"])[-1] == results.a.meta.n_images
    assert _values(mlu_line["y"])[-1] == pytest.approx(results.a.mlu)


INLINE_MATH = re.compile(r"(?<![$\\])\$(?!\$)([^$]+?)(?<!\\)\$")
BREAKS_AFTER = re.compile(r"=|\+|(?<!^)-|<|>|\\le|\\ge")
"""Where KaTeX may break an inline formula across lines: after a relation or a binary operator."""


def _unbreakable_formulas(markdowns) -> list[str]:
    """The inline formulas of ``markdowns`` that KaTeX could wrap inside (a relation or an operator outside
    braces): ``d_out =`` at a line's end and ``288`` on the next."""
    found = []
    for value in markdowns:
        for formula in INLINE_MATH.findall(value):
            body = formula.strip()
            if BREAKS_AFTER.search(body) and not (body.startswith("{") and body.endswith("}")):
                found.append(formula)
    return found


def test_formulas_in_the_text_never_wrap_inside(app, results):
    """The Layers page's line on the selected layer ("d_in = 96, d_out = 288, ...") and the pages' teaching texts
    write every formula as one unbreakable group: KaTeX wrapped "d_out =" and "288" onto two lines."""
    at = _layers(app)
    _ok(at)
    line = next(m.value for m in at.main.markdown if "d_{in}" in m.value)
    table = results.a.layers
    row = table[table["layer"] == at.session_state["selected_layer"]].iloc[0]
    assert f"${{d_{{in}} = {row['d_in']}}}$, ${{d_{{out}} = {row['d_out']}}}$" in line
    assert len(INLINE_MATH.findall(line)) == 6 and _unbreakable_formulas([line]) == []
    for page in ("pages/learn.py", "pages/spectra.py", "pages/compress.py", "pages/analyze.py"):
        at.switch_page(page).run()
        _ok(at)
        texts = [m.value for m in at.main.markdown]
        assert texts and _unbreakable_formulas(texts) == [], page
    assert _unbreakable_formulas(["$d_{out} = 288$", "${d_{out} = 288}$", "$r$"]) == ["d_{out} = 288"]


def test_folded_panels_are_built_only_when_opened(app, results):
    """A page run sends what is on screen: the collapsed panels (tables, the card, the convergence chart, the
    page's idea) are built when opened, not drawn by every visitor's browser on every page switch (issue 23: these were about
    half of a switch to Layers in the browser). Opened, they show what they showed before."""
    at = app.run()
    _ok(at)
    assert "Tables" in [e.label for e in at.main.expander] and not at.main.dataframe  # Compare
    at.switch_page("pages/layers.py").run()
    _ok(at)
    assert {"How sure is this? Convergence with the number of images", "Per-layer table",
            "Reproducibility card"} <= {e.label for e in at.main.expander}
    assert len(_charts(at)) == 2 and not at.main.dataframe and not at.main.code  # bars and heatmap only
    assert not at.main.latex  # the page's idea (its formula) folded under the lead
    unfold(at, "layers_convergence_open", "layers_table_open", "layers_card_open", "page_idea_open").run()
    _ok(at)
    assert len(_charts(at)) == 3 and len(at.main.dataframe) == 2 and len(at.main.code) == 1
    assert len(at.main.latex) == 1
    at.switch_page("pages/heads.py").run()
    _ok(at)
    assert "Per-head table" in [e.label for e in at.main.expander] and not at.main.dataframe
    unfold(at, "heads_table_open").run()
    _ok(at)
    assert len(at.main.dataframe) == 1
    at.switch_page("pages/compare.py").run()
    unfold(at, "compare_tables_open").run()
    _ok(at)
    assert len(at.main.dataframe) == 2


def test_layers_next_and_previous_step_through_the_layers_in_depth_order(app, results):
    at = _layers(app)
    names = list(results.a.layers["layer"])
    first = at.session_state["selected_layer"]
    at.button(key="layers_layer_pick_next").click().run()
    _ok(at)
    assert at.session_state["selected_layer"] == names[names.index(first) + 1]
    assert at.selectbox(key="layers_layer_pick").value == names[names.index(first) + 1]
    at.button(key="layers_layer_pick_prev").click().run()
    assert at.session_state["selected_layer"] == first
    # the heatmap outlines the selected layer's cell
    heatmap = _charts(at)[1]
    outlines = [sh for sh in heatmap["layout"].get("shapes", []) if sh.get("type") == "rect"]
    assert len(outlines) == 1


@pytest.mark.parametrize("page, title", [
    ("pages/analyze.py", "Analyze"),
    ("pages/layers.py", "Layers"),
    ("pages/heads.py", "Heads"),
    ("pages/spectra.py", "Spectra"),
    ("pages/one_image.py", "One image"),
    ("pages/learn.py", "Learn"),
    ("pages/compare.py", "Compare"),
    ("pages/compress.py", "Compress"),
    ("pages/library.py", "Library"),
])
def test_every_page_renders(app, page, title):
    at = app.run()
    at.switch_page(page).run()
    _ok(at)
    assert at.title[0].value == title
    assert at.markdown, "each page explains what it shows"


def test_learn_page_explains_the_method_on_a_picture(app):
    at = app.run()
    at.switch_page("pages/learn.py").run()
    _ok(at)
    assert any("arxiv.org/abs/2407.04797" in m.value for m in at.markdown)
    assert _metric(at, "k(e)") == "1 of 2"  # a thin cloud: one direction holds 90 % of the energy
    at.slider(key="learn_spread").set_value(1.0).run()  # a round cloud needs both directions
    assert _metric(at, "k(e)") == "2 of 2"
    assert len(_charts(at)) == 2


def test_energy_change_changes_k_and_mlu(app, results):
    at = app.run()  # the sidebar sliders are drawn by the entry point (first run, on Compare)
    before = list(results.a.layers["k_in"])
    at.select_slider(key="energy_in_slider").set_value(0.9)
    at.select_slider(key="energy_out_slider").set_value(0.9)
    at.run()
    _ok(at)
    expected = results.a.at_energy(0.9, 0.9)
    assert expected.mlu != results.a.mlu
    assert [m.value for m in at.main.metric] == [_pct(expected.mlu), _pct(results.b.at_energy(0.9, 0.9).mlu)]
    unfold(at).switch_page("pages/layers.py").run()
    _ok(at)
    assert _metric(at, "MLU") == _pct(expected.mlu)
    assert _metric(at, "Energies") == "0.9 / 0.9"
    after = at.main.dataframe[0].value
    assert list(after["k_in"]) == list(expected.layers["k_in"])
    assert list(after["k_in"]) != before
    # the energies are shared: the Compress page shows the same re-thresholded result
    at.switch_page("pages/compress.py").run()
    _ok(at)
    assert _metric(at, "MLU") == _pct(expected.mlu)
    assert _metric(at, "Parameters kept") == _pct(expected.parameters()["kept"])


def test_selecting_a_layer_changes_the_spectra(app, results):
    at = app.run()
    at.switch_page("pages/spectra.py").run()
    _ok(at)
    first = at.session_state["selected_layer"]
    assert first == "blocks.0.attn.qkv"  # the first layer counted in the MLU
    assert _metric(at, "d_in x d_out") == "48 x 144"
    assert first in _charts(at)[0]["layout"]["title"]["text"]

    at.session_state["selected_layer"] = "blocks.0.mlp.fc2"
    at.run()
    _ok(at)
    layer = results.a.layer("blocks.0.mlp.fc2")
    assert _metric(at, "d_in x d_out") == f"{layer.d_in} x {layer.d_out}"
    figures = _charts(at)
    assert "blocks.0.mlp.fc2" in figures[0]["layout"]["title"]["text"]
    w_trace = figures[0]["data"][0]
    np.testing.assert_allclose(_values(w_trace["y"]), layer.w_singular / layer.w_singular[0], rtol=1e-6)
    row = results.a.layers.set_index("layer").loc["blocks.0.mlp.fc2"]
    assert _metric(at, "k_in / k_out") == f"{row['k_in']} / {row['k_out']}"
    assert at.selectbox(key="spectra_layer_pick").value == "blocks.0.mlp.fc2"
    # C_in and C_out side by side: one log range on all four of their axes, so their decades are level
    c_in, c_out = figures[2], figures[3]
    ranges = [figure["layout"][axis]["range"] for figure in (c_in, c_out) for axis in ("yaxis", "yaxis2")]
    assert ranges[0] and all(r == ranges[0] for r in ranges), ranges


def test_layer_selection_from_the_layers_page_is_shared(app):
    at = _layers(app)
    at.selectbox(key="layers_layer_pick").set_value("blocks.1.mlp.fc1").run()
    _ok(at)
    assert at.session_state["selected_layer"] == "blocks.1.mlp.fc1"
    at.switch_page("pages/spectra.py").run()
    assert at.selectbox(key="spectra_layer_pick").value == "blocks.1.mlp.fc1"


def test_compare_shows_every_chosen_analysis(app, results):
    at = app.run()
    at.session_state["compare_keys"] = [results.a.key, results.b.key]
    at.switch_page("pages/compare.py").run()
    _ok(at)
    labels = [m.label for m in at.main.metric]
    assert len(labels) == 2 and labels[0].startswith("A: ") and labels[1].startswith("B: ")
    assert [m.value for m in at.main.metric] == [_pct(results.a.mlu), _pct(results.b.mlu)]
    figures = _charts(at)
    assert len(figures) == 3  # MLU bars, overlay, differences
    overlay = figures[1]
    # legend: the letter of each card and its regime (one short row), in the cards' order
    assert [t["name"] for t in overlay["data"]] == ["A · random init", "B · random init"]
    assert _values(overlay["data"][0]["x"]) == list(results.a.layers["layer"])  # depth order, not alphabetical


def test_compare_preset_opens_the_set_and_names_missing_models(app, results):
    at = app.run()
    at.switch_page("pages/compare.py").run()
    at.button(key="compare_preset").click().run()  # "Supervised vs self-supervised": both tiny models are cached already
    _ok(at)
    assert at.session_state["compare_keys"] == [results.a.key, results.b.key]
    assert any("zoo:not-in-this-zoo" in w.value for w in at.warning)
    assert len(at.main.metric) == 2


def test_compress_page_sweeps_energy_and_offers_downloads(app, results):
    at = app.run()
    at.switch_page("pages/compress.py").run()
    _ok(at)
    sweep = _charts(at)[0]
    kept = next(t for t in sweep["data"] if t["name"] == "parameters kept")
    kept_values = _values(kept["y"])
    assert len(kept_values) == len(ENERGY_GRID)
    assert kept_values[-1] >= kept_values[0]
    assert [d.label for d in at.get("download_button")] == ["CSV", "PARQUET", "JSON"]


def _rerun_until(at, predicate, what: str, timeout_s: float = 900.0) -> None:
    """Rerun the app (AppTest reruns only after a change) until ``predicate(at)``; ``timeout_s`` only guards
    against a hang (a real compression on a shared 2-core machine can take minutes)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate(at):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        assert not at.exception and not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.session_state["poll"] = time.monotonic()
        at.run()


def test_compression_runs_as_a_job_survives_a_page_switch_and_reports_done(results, monkeypatch, tmp_path):
    """Compress -> a real worker process (held after its first step) -> another page -> back: still running,
    also after a reload -> released -> reports done with top-1 and its interval, the chart and the model."""
    from streamlit.testing.v1 import AppTest

    from analysis.jobs.worker import HOLD_ENV

    cache_dir = tmp_path / "cache"  # a private copy: the compression adds an analysis and a summary to it
    shutil.copytree(results.cache_dir, cache_dir)
    _point_app_at(cache_dir, monkeypatch)
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))  # the worker pauses after each step while this file exists
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/compress.py").run()
    assert at.text_input(key="compress_dataset").value == "fashion-mnist:train"  # the test split stays held out
    assert at.text_input(key="compress_eval_dataset").value == "fashion-mnist:test"
    at.number_input(key="compress_samples").set_value(64)
    at.number_input(key="compress_eval_samples").set_value(64)
    at.number_input(key="compress_steps").set_value(1)
    at.button(key="compress_submit").click().run()
    _ok(at)
    key = at.session_state["compress_job"]
    assert at.get("progress"), "the compression's progress shows at once"

    at.switch_page("pages/layers.py").run()
    _ok(at)
    at.switch_page("pages/compress.py").run()
    _ok(at)
    assert at.session_state["compress_job"] == key
    _rerun_until(at, lambda a: any(re.search(r"about .+ left$", p.proto.text) for p in a.get("progress")),
                 "a progress line with the time left")

    reloaded = AppTest.from_file(APP, default_timeout=TIMEOUT).run()  # a reload: a fresh session, same cache
    reloaded.switch_page("pages/compress.py").run()
    _ok(reloaded)
    assert reloaded.session_state["compress_job"] == key and reloaded.get("progress")

    hold.unlink()
    _rerun_until(at, lambda a: "compress_job" not in a.session_state, "the compression's end")
    _ok(at)
    assert any("Kept" in s.value and "top-1" in s.value for s in at.success)
    assert any("(n = 64)" in s.value and "±" in s.value for s in at.success)
    accuracy = next(f for f in _charts(at) if f["layout"]["title"]["text"].startswith("Top-1 against"))
    assert {t["name"] for t in accuracy["data"]} == {"factorized", "fine-tuned"}
    labels = [d.label for d in at.get("download_button")]
    assert "Download the factorized model (safetensors)" in labels
    assert len(list((cache_dir / "compressions").glob("*.json"))) == 1


def test_library_opens_and_deletes_with_confirmation(results, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    cache_dir = tmp_path / "cache"
    shutil.copytree(results.cache_dir, cache_dir)
    _point_app_at(cache_dir, monkeypatch)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/library.py").run()
    _ok(at)
    assert len(at.main.dataframe[0].value) == 2
    at.selectbox(key="library_pick").set_value(results.b.key).run()
    at.button(key="library_open").click().run()
    assert at.session_state["current_key"] == results.b.key
    assert at.query_params.get("analysis") == results.b.key

    at.button(key="library_delete").click().run()
    assert any("Delete" in w.value for w in at.warning)
    assert (cache_dir / results.b.key).is_dir()  # nothing removed before the confirmation
    at.button(key="library_delete_yes").click().run()
    _ok(at)
    assert not (cache_dir / results.b.key).exists()
    assert at.session_state.get("current_key") != results.b.key
    assert len(at.main.dataframe[0].value) == 1


# ------------------------------------------------------------------------------------------ jobs
def _status(state: str, key: str, **fields) -> SimpleNamespace:
    base = dict(state=state, key=key, stage="statistics", batches_done=1, batches_total=2, images_done=32,
                images_total=64, elapsed_s=3.0, eta_s=3.0, fraction=0.5, message="", model_id=TINY_B,
                dataset_id=DATASET, cancelling=False, queue_position=None, kind="analysis", updated=0.0)
    base.update(fields)
    return SimpleNamespace(**base)


def test_running_job_shows_progress_survives_reload_and_opens_when_done(app, results, monkeypatch):
    from analysis import jobs
    from streamlit.testing.v1 import AppTest

    key = results.b.key
    states = {"now": "running"}
    monkeypatch.setattr(jobs, "status", lambda k: _status(states["now"], k))
    cancelled = []
    monkeypatch.setattr(jobs, "cancel", lambda k: cancelled.append(k) or True)

    at = app.run()
    at.session_state["job_key"] = key
    at.switch_page("pages/analyze.py").run()
    _ok(at)
    assert at.query_params.get("job") == key
    progress = at.get("progress")
    assert progress and "batch 1/2" in progress[0].proto.text and "images 32/64" in progress[0].proto.text
    assert "3 s since it was asked for" in progress[0].proto.text and "about 3 s left" in progress[0].proto.text

    # a reload is a fresh session with the same URL: the job is followed again
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)
    again.query_params["job"] = key
    again.run()
    assert again.session_state["job_key"] == key

    at.button(key=f"cancel-{key}").click().run()
    assert cancelled == [key]

    states["now"] = "done"
    at.run()
    _ok(at)
    assert at.session_state["current_key"] == key
    assert "job_key" not in at.session_state
    assert "job" not in at.query_params
    assert any("finished" in s.value for s in at.success)


def test_failed_job_shows_its_reason(app, results, monkeypatch):
    from analysis import jobs

    monkeypatch.setattr(jobs, "status", lambda k: _status("failed", k, message="dataset folder:/x has no images"))
    at = app.run()
    at.session_state["job_key"] = "f" * 24
    at.switch_page("pages/analyze.py").run()
    assert "job_key" not in at.session_state
    assert [e.value for e in at.error] == ["dataset folder:/x has no images"]
    assert not at.exception


def test_first_launch_with_empty_cache_submits_the_default_and_shows_progress(monkeypatch, tmp_path):
    from analysis import jobs
    from streamlit.testing.v1 import AppTest

    _point_app_at(tmp_path / "empty-cache", monkeypatch)
    submitted = []

    def fake_submit(model_id, dataset_id, settings, *, cache_dir=None):
        submitted.append((model_id, dataset_id, settings.samples))
        return "a" * 24

    monkeypatch.setattr(jobs, "submit", fake_submit)
    monkeypatch.setattr(jobs, "status", lambda k: _status("running", k, model_id=TINY_A))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert submitted == [(TINY_A, DATASET, SAMPLES)]
    assert at.title[0].value == "Compare"
    assert at.session_state["job_key"] == "a" * 24
    assert at.get("progress"), "the default analysis's progress is visible on the opening page"
    assert any("First launch" in i.value for i in at.info)


def test_unavailable_default_opens_the_newest_cached_analysis_and_says_why(results, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _point_app_at(results.cache_dir, monkeypatch)
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", "zoo:not-trained-yet")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert at.session_state["current_key"] == results.b.key  # the newest entry
    assert "not-trained-yet" in at.session_state["default_error"]
    assert any("not available here" in c.value for c in at.sidebar.caption)


def test_reload_with_a_finished_job_in_the_url_opens_its_result_once(results, monkeypatch):
    from analysis import jobs
    from streamlit.testing.v1 import AppTest

    _point_app_at(results.cache_dir, monkeypatch)
    monkeypatch.setattr(jobs, "status", lambda k: _status("done", k))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["job"] = results.b.key
    at.run()
    _ok(at)
    assert at.session_state["current_key"] == results.b.key
    assert "job_key" not in at.session_state
    assert "job" not in at.query_params
    assert at.query_params.get("analysis") == results.b.key


def test_analyze_shows_a_bad_model_id_as_one_line(app):
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("any model id").run()
    at.text_input(key="analyze_any_model").set_value("nosuch:model").run()
    assert not at.exception
    errors = [e.value for e in at.error]  # refused before Run: the estimate loads the id and says why
    assert len(errors) == 1 and "nosuch" in errors[0] and "\n" not in errors[0]
    assert at.button(key="analyze_launch").disabled


def test_analyze_validates_timm_names(app):
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("timm by name").run()
    at.text_input(key="analyze_timm_name").set_value("vit_smal_patch16_224").run()
    assert not at.exception
    assert any("vit_small_patch16_224" in e.value for e in at.error)  # a close-match suggestion
    assert at.button(key="analyze_launch").disabled


def test_analyze_refuses_an_unknown_token_set_with_the_choices(app):
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    at.text_input(key="analyze_token_set").set_value("everything").run()
    _ok_or_error = [e.value for e in at.error]
    assert any("unknown token set 'everything'" in e and "no-outliers:Q" in e for e in _ok_or_error)
    assert at.button(key="analyze_launch").disabled
    at.text_input(key="analyze_token_set").set_value("patch").run()
    assert not any("token set" in e.value for e in at.error)


def test_analyze_cached_request_opens_at_once(app, results):
    at = app.run()
    at.session_state["current_key"] = results.b.key
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("any model id").run()
    at.text_input(key="analyze_any_model").set_value(TINY_A).run()
    at.button(key="analyze_launch").click().run()
    _ok(at)
    assert at.session_state["current_key"] == results.a.key
    assert "job_key" not in at.session_state


def test_uploaded_checkpoint_runs_as_a_real_job_and_opens(results, monkeypatch, tmp_path):
    """Upload -> file: id -> jobs.submit starts a real worker process -> progress -> the result opens."""
    import time

    from streamlit.testing.v1 import AppTest

    cache_dir = tmp_path / "cache"
    shutil.copytree(results.cache_dir, cache_dir)
    _point_app_at(cache_dir, monkeypatch)
    checkpoint = tmp_path / "tiny.safetensors"
    save_tiny_vit_checkpoint(checkpoint, seed=7)

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("upload a checkpoint").run()
    at.file_uploader(key="analyze_upload").upload("tiny.safetensors", checkpoint.read_bytes()).run()
    at.text_input(key="analyze_ckpt_arch").set_value("vit_tiny_patch16_224").run()
    at.text_input(key="analyze_ckpt_opts").set_value(TINY_VIT_OPTIONS).run()
    _ok(at)
    saved = list((cache_dir / "_uploads").glob("*-tiny.safetensors"))
    assert len(saved) == 1 and saved[0].read_bytes() == checkpoint.read_bytes()
    assert any(f"file:{saved[0]}?arch=vit_tiny_patch16_224&" in c.value for c in at.caption)

    at.button(key="analyze_launch").click().run()
    _ok(at)
    key = at.session_state["job_key"]
    assert at.query_params.get("job") == key
    deadline = time.monotonic() + 150
    while "current_key" not in at.session_state or at.session_state["current_key"] != key:
        assert time.monotonic() < deadline, "the worker did not finish in 150 s"
        assert not at.exception and not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.session_state["poll"] = time.monotonic()  # AppTest reruns only after a change
        at.run()
    assert (cache_dir / key / "manifest.json").is_file()
    assert "job_key" not in at.session_state
    unfold(at).switch_page("pages/layers.py").run()
    _ok(at)
    assert len(at.main.dataframe[0].value) == len(results.a.layers)
    from analysis.cache import ResultCache

    assert ResultCache(cache_dir).load(key).meta.model_id.startswith(f"file:{saved[0]}?arch=vit_tiny_patch16_224")


# ------------------------------------------------------------------------------------------ chart builders
def test_charts_colour_each_kind_the_same_everywhere(results):
    from ui import charts

    table = results.a.layers
    bars = charts.utilization_bars(table, results.a.mlu, selected="blocks.0.mlp.fc1")
    savings = charts.savings_bars(table)
    for figure in (bars, savings):
        for trace in figure.data:
            kind = next(k for k in charts.KIND_COLORS if charts.kind_label(k) == trace.name)
            assert trace.marker.color == charts.kind_color(kind)
            assert {str(c[0]) for c in trace.customdata} == set(table.loc[table["kind"] == kind, "layer"])
    assert len(set(charts.KIND_COLORS.values())) == len(charts.KIND_COLORS)
    assert charts.kind_color("some_new_kind") == charts.kind_color("some_new_kind")


def test_heatmap_cells_are_clickable_and_select_their_layer(results):
    """Heatmap cells send no selection events, so every filled cell has an invisible marker whose
    customdata[0] is the layer a click selects; the page's callback turns that point into the selection."""
    import streamlit as st

    from ui import charts, state

    table = results.a.layers
    fig = charts.block_kind_heatmap(table)
    heat, picker = fig.data
    assert heat.hoverinfo == "skip" and picker.marker.opacity == 0.0
    blocked = table[table["block"].notna()]
    assert 0 < len(picker.x) == blocked.groupby(["block", "kind"]).ngroups
    for x, y, (first, names, u) in zip(picker.x, picker.y, picker.customdata):
        cell = blocked[(blocked["block"].astype(int).astype(str) == x)
                       & (blocked["kind"].map(charts.kind_label) == y)]
        assert first == cell["layer"].iloc[0] and names == ", ".join(cell["layer"])
        assert math.isclose(u, cell["utilization"].mean())
    # the payload Streamlit stores for a clicked point (customdata as sent by the browser)
    chosen = list(picker.customdata[-1])
    st.session_state["test_heatmap"] = {"selection": {"points": [{"x": picker.x[-1], "customdata": chosen}]}}
    try:
        state.select_layer_from_chart("test_heatmap")
        assert st.session_state[state.SELECTED] == chosen[0]
    finally:
        for key in ("test_heatmap", state.SELECTED):
            st.session_state.pop(key, None)


def test_chart_builders_follow_the_energies(results):
    from ui import charts

    layer = results.a.layer("blocks.0.mlp.fc1")
    low = charts.eigen_chart(layer.eig_in, 0.9, "C_in")
    high = charts.eigen_chart(layer.eig_in, 0.999, "C_in")
    k_low = [s.x0 for s in low.layout.shapes if s.x0 == s.x1][0]
    k_high = [s.x0 for s in high.layout.shapes if s.x0 == s.x1][0]
    assert k_low < k_high
    sv = charts.singular_values_chart(layer, 0.99, 0.99)
    bold = [t for t in sv.data if t.name == "W' at e = 0.99 (now)"][0]
    assert bold.opacity == 1.0
    assert len(bold.y) == min(layer.d_in, layer.d_out)  # drawn down to its zeros
    assert all(v > 0 for v in bold.y)  # zeros cannot be drawn on a log axis: they sit on the floor line
    rank = int(layer.row(0.99, 0.99)["rank"])
    assert rank < min(layer.d_in, layer.d_out)
    floor = [v for v in bold.y if v == charts.ZERO_FLOOR]
    assert len(floor) >= min(layer.d_in, layer.d_out) - rank  # W' has rank at most r: the rest is zero
    assert any(s.y0 == s.y1 == charts.ZERO_FLOOR for s in sv.layout.shapes)  # the "zero beyond r" line
    others = [t for t in sv.data if t.name.startswith("W' at e") and t is not bold]
    assert others and all(t.opacity >= 0.7 and t.line.dash is None for t in others)  # readable, not faint dots


def test_energy_sweep_is_monotone_and_exact_on_the_grid(results):
    from ui import tables

    sweep = tables.energy_sweep(results.a)
    assert list(sweep["energy"]) == list(ENERGY_GRID)
    assert (np.diff(sweep["kept"]) >= -1e-12).all()
    assert not sweep["mean_error"].isna().any()  # the grid is where the exact error is stored
    last = sweep.iloc[-1]
    assert math.isclose(last["mlu"], results.a.at_energy(1.0, 1.0).mlu)


def test_display_labels_are_short_and_unique():
    from ui import tables

    labels = [f"{TINY_A} on {DATASET}", f"{TINY_B} on {DATASET}"]
    short = tables.display_labels(labels)
    assert short[0].startswith("A: ") and short[1].startswith("B: ")
    assert len(set(short)) == 2 and all(len(s) <= 60 for s in short)
    assert all(DATASET not in s for s in short)  # the common dataset is stated once on the page


def test_ids_wrap_between_their_parts_and_copy_whole():
    """A narrow column wraps an id after its separators (``zoo:`` | ``vit-fmnist-supervised``), not at a hyphen
    inside a part: each part is kept on one line by the frame's CSS (both modes), the id as a whole moves to its own
    line when it fits there, only a part longer than a line may wrap inside; the text reads (and copies) as the id,
    and nothing in it is taken for HTML, Markdown emphasis or math."""
    import html

    from ui import frame, text

    assert text.breakable_id("zoo:vit-fmnist-supervised") == (
        "<code class='lu-id'><span>zoo:</span><wbr><span>vit-fmnist-supervised</span></code>")
    assert text.breakable_id("blocks.3.mlp.fc1").count("<wbr>") == 3
    long_part = "x" * (text.ID_PART_MOST + 1)
    assert f"<wbr>{long_part}.<wbr>" in text.breakable_id(f"a.{long_part}.b")  # not held on one line
    odd = "file:/runs/_tmp_/<b>*$1$.pt?arch=vit_small_patch16_224&x=[y]"
    shown = text.breakable_id(odd)
    assert not re.search(r"[<>*_$\[\]`]", re.sub(r"</?(code|span|wbr)\b[^>]*>", "", shown)), shown
    assert html.unescape(re.sub(r"<[^>]+>", "", shown)) == odd
    for css in (frame._STYLE, frame._STYLE + frame._PRESENTATION_STYLE):
        assert "code.lu-id > span { white-space: nowrap; }" in css and "display: inline-block" in css
    assert frame.PRESENTATION_SIDEBAR in frame._PRESENTATION_STYLE


def test_learns_tour_table_breaks_model_ids_only_between_their_parts(app):
    """The guided tour's table broke "zoo:vit-fmnist-" | "supervised" at the hyphen at 1280 x 720 (the final
    sweep): its model cells are ids that wrap only after "zoo:" (:func:`ui.text.breakable_id`)."""
    at = app.run()
    at.switch_page("pages/learn.py").run()
    _ok(at)
    table = next(m.value for m in at.markdown if "| model | regime |" in m.value)
    rows = [line for line in table.splitlines() if line.startswith("|") and not line.startswith(("| model", "|---"))]
    cells = [row.split("|")[1].strip() for row in rows]
    assert len(cells) >= 2
    assert all(c.startswith("<code class='lu-id'><span>") and "</span><wbr><span>" in c for c in cells), cells
    assert "| `" not in table  # no plain inline code, which the browser breaks at a hyphen


def test_sidebar_ids_are_whole_on_one_line_scaled_to_fit():
    """The presentation-mode sidebar (240 px at 1280 x 720) broke "zoo:" | "vit-fmnist-supervised" over two lines:
    a model id now never breaks there; it is one unbreakable run whose text the frame's CSS scales to the line
    (from the sidebar block's width, a container, and the id's length), down to 0.6 of code's size; only an id
    too long for that (a file path) still wraps between its parts. It reads and copies as the id."""
    import html

    from ui import frame, text

    for model_id in ("zoo:vit-fmnist-supervised", "zoo:vit-fmnist-supervised?step=1872"):
        shown = text.fitted_id(model_id)
        assert "<wbr>" not in shown and f"style='--n:{len(model_id)}'" in shown and "class='lu-fit'" in shown
        assert html.unescape(re.sub(r"<[^>]+>", "", shown)) == model_id
    odd = "zoo:a_*b*_[x]"
    assert not re.search(r"[*_\[\]]", re.sub(r"<[^>]+>", "", text.fitted_id(odd)))  # no Markdown in it
    long_id = "file:/runs/experiment-42/checkpoints/step_1200.safetensors?arch=vit_small_patch16_224"
    assert text.fitted_id(long_id) == text.breakable_id(long_id)
    for css in (frame._STYLE, frame._STYLE + frame._PRESENTATION_STYLE):
        # only st.markdown blocks are size containers: a widget label made one (the presentation toggle's) took no width
        assert ('[data-testid="stSidebar"] [data-testid="stMarkdown"] [data-testid="stMarkdownContainer"] '
                '{ container-type: inline-size; }') in css
        assert re.search(r"span\.lu-fit \{ white-space: nowrap;\s+font-size: clamp\(0\.6em, calc\(\(100cqi", css)


# ------------------------------------------------------------------------------------------ the classroom demo
def test_a_fresh_clone_opens_on_the_zoo_regimes_with_accuracy_and_caveat(monkeypatch, tmp_path):
    """Real defaults, empty cache: the shipped entries make the regimes comparison appear at once."""
    from streamlit.testing.v1 import AppTest

    from analysis.regimes import training_facts

    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "fresh"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert at.title[0].value == "Compare"
    assert "job_key" not in at.session_state  # nothing to compute: the default is shipped too
    zoo = list(defaults.DEFAULT_COMPARISON)
    assert len(at.session_state["compare_keys"]) == len(zoo) == 4
    assert [m.label[:3] for m in at.main.metric] == ["A: ", "B: ", "C: ", "D: "]
    text = " ".join(m.value for m in at.main.markdown) + " ".join(c.value for c in at.main.caption)
    for model_id in zoo:
        facts = training_facts(model_id)
        assert f"**{facts.label}**" in text, model_id
        assert f"linear probe **{_pct(facts.linear_probe)}**" in text, model_id
        assert facts.budget in text, model_id
    caveats = [w.value for w in at.warning if "fell short" in w.value]
    assert len(caveats) == 1 and "zoo:vit-fmnist-dino" in caveats[0] and "74.5%" in caveats[0]
    deltas = [m.proto.delta for m in at.main.metric][1:]
    assert all(d.endswith(" pp") for d in deltas)  # percentage points, not percent


def test_the_default_is_planned_once_per_server_not_once_per_session(monkeypatch, tmp_path):
    """Twenty students arriving at once each planned the default (the model loaded, its weights hashed) on
    their first run; the key is now planned once per server and the shipped entry opened without a job."""
    from streamlit.testing.v1 import AppTest

    import analysis.engine as engine
    import analysis.jobs.api as jobs_api
    from ui import background, state

    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "class"))
    calls, default_plans = [], []
    original = jobs_api.plan_request
    monkeypatch.setattr(jobs_api, "plan_request", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    original_plan = engine.plan  # what the pages' own planning calls (imported at the call)
    monkeypatch.setattr(engine, "plan", lambda model_id, *a, **k: (
        default_plans.append(model_id) if model_id == defaults.DEFAULT_MODEL else None) or original_plan(model_id, *a, **k))
    state._default_key.clear()
    first = AppTest.from_file(APP, default_timeout=TIMEOUT).run()  # a fresh cache: the shipped entry is adopted
    assert background.idle(timeout=300)  # the landing page's once-per-server estimate plans on its own thread
    planned_by_first, default_planned_by_first = len(calls), len(default_plans)
    later = [AppTest.from_file(APP, default_timeout=TIMEOUT).run() for _ in range(2)]
    assert background.idle(timeout=300)
    for at in (first, *later):
        _ok(at)
        assert at.session_state["current_key"] == first.session_state["current_key"]
        assert "job_key" not in at.session_state
    assert len(calls) == planned_by_first  # later sessions plan nothing (the first: the preset estimates' models)
    assert default_planned_by_first >= 1 and len(default_plans) == default_planned_by_first  # nor anywhere else


def test_zero_images_is_refused_with_a_message(app):
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    assert at.checkbox(key="analyze_all").value is False
    at.number_input(key="analyze_samples").set_value(0).run()
    assert not at.exception
    assert at.number_input(key="analyze_samples").value == 0  # kept as typed, not silently replaced
    assert any("samples must be a positive integer, got 0" in e.value for e in at.error)
    assert at.button(key="analyze_launch").disabled


def test_analyze_preselects_the_default_model_in_the_zoo(app, monkeypatch):
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", "zoo:vit-fmnist-supervised")
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    _ok(at)
    assert "zoo" in at.radio(key="analyze_model_source").value  # the zoo group comes first
    group = at.radio(key="analyze_model_source").value
    box = at.selectbox(key=f"analyze_model_{group}")
    assert box.value.model_id == "zoo:vit-fmnist-supervised"
    # the box shows the ids alone (with the long descriptions beside them the box cut its text off at 1280 px);
    # the chosen model's description is written out under it
    assert box.options and all(option.startswith("zoo:") and " " not in option for option in box.options)
    assert box.value.description in [c.value for c in at.caption]


def test_compression_chart_connects_only_runs_on_the_same_evaluation_set_and_fits_its_axes():
    from analysis.compression.summaries import accuracy_points
    from ui import charts

    def summary(n, kept, acc, dense, created):
        return {"eval_dataset": "fashion-mnist:test", "eval_samples": n, "seed": 0, "evaluation_method": "head",
                "kept_fraction": kept, "acc_projected": acc, "acc_dense": dense, "acc_finetuned": None,
                "energy_in": 0.99, "energy_out": 0.99, "finetune": {"steps": 0}, "created": created}

    summaries = [summary(16, 0.32, 14 / 16, 15 / 16, "1"), summary(500, 0.34, 0.87, 0.9, "2"),
                 summary(500, 0.40, 0.89, 0.9, "3")]
    figure = charts.compression_accuracy_chart(accuracy_points(summaries))
    factorized = [t for t in figure.data if t.name == "factorized"]
    assert sorted(len(t.x) for t in factorized) == [1, 2]  # one line per evaluation set, never joined
    assert {t.legendgroup for t in factorized} == {"fashion-mnist:test, n = 16", "fashion-mnist:test, n = 500"}
    for trace in factorized:  # asymmetric Wilson bars
        assert all(up >= 0 and down >= 0 for up, down in zip(trace.error_y.array, trace.error_y.arrayminus))
    low, high = figure.layout.xaxis.range
    assert 0.2 < low < 0.32 and 0.40 < high < 0.6  # fitted to the runs, not 0-150 %
    dense_lines = sorted(shape.y0 for shape in figure.layout.shapes)
    assert dense_lines == pytest.approx([0.9, 15 / 16])  # the dense model on each set as a reference
    y_low, y_high = figure.layout.yaxis.range
    assert y_low < min(t.y[0] for t in factorized) and y_high >= 15 / 16 and y_high <= 1.02
    single = charts.compression_accuracy_chart(accuracy_points(summaries[:1]))
    assert single.layout.xaxis.range[1] - single.layout.xaxis.range[0] < 0.1  # a single run: a narrow axis


def test_analyze_shows_a_cost_estimate_before_running(app, results):
    """The Analyze page states the run's time (a range, from this machine's measured speed), memory and content
    key before Run is pressed; a cached request says it opens at once; an impossible layer selection is
    refused with its reason (the button stays disabled)."""
    from analysis.engine import plan
    from analysis.settings import AnalysisSettings

    new_model = f"{TINY_VIT}&seed=5"
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("any model id").run()
    at.text_input(key="analyze_any_model").set_value(TINY_A).run()
    assert any("already analysed" in c.value and results.a.key[:8] in c.value for c in at.caption)
    at.number_input(key="analyze_samples").set_value(SAMPLES)
    at.checkbox(key="analyze_all").uncheck()
    at.text_input(key="analyze_any_model").set_value(new_model).run()
    _ok(at)
    key = plan(new_model, DATASET, AnalysisSettings(samples=SAMPLES)).key
    estimates = [c.value for c in at.caption if c.value.startswith(f"Will analyse `{new_model}`")]
    assert len(estimates) == 1 and " here (" in estimates[0] and "MB" in estimates[0] and key[:8] in estimates[0]
    assert not at.button(key="analyze_launch").disabled
    at.text_input(key="analyze_layers").set_value("no.such.layer*").run()
    assert not at.exception
    assert any("no.such.layer" in e.value for e in at.error)
    assert at.button(key="analyze_launch").disabled
    at.text_input(key="analyze_layers").set_value(",").run()  # names no pattern: refused, never "every layer"
    assert any("names no layer pattern" in e.value for e in at.error)
    assert at.button(key="analyze_launch").disabled


def test_wide_tables_show_their_key_column_first(app, results):
    """A wide table scrolls sideways at 1280 px: the column it is read for comes right after the row's name
    (Compress's "kept" was its 11th column, the Layers table's utilization its 11th, the Library's MLU came
    after a model id that can be 80 characters long), and long headers are short."""
    import json

    at = app.run()
    at.switch_page("pages/compress.py").run()
    _ok(at)
    savings = at.main.dataframe[0]
    assert list(savings.proto.column_order)[:2] == ["layer", "kept"]
    assert set(savings.proto.column_order) == set(savings.value.columns)  # none left out
    headers = {name: c.get("label") for name, c in json.loads(savings.proto.columns).items()}
    assert headers["params_factorized"] == "factorized" and headers["preservation_error"] == "error"
    at.switch_page("pages/layers.py").run()
    unfold(at, "layers_table_open").run()
    _ok(at)
    layers = at.main.dataframe[0]
    assert list(layers.proto.column_order)[:2] == ["layer", "utilization"]
    assert set(layers.proto.column_order) == set(layers.value.columns)
    at.switch_page("pages/library.py").run()
    _ok(at)
    library = at.main.dataframe[0]
    assert list(library.value.columns)[:3] == ["key", "MLU", "model"]
    assert json.loads(library.proto.columns)["model"]["width"] == 190  # fixed widths: see the next test


def test_percent_bars_show_one_decimal_on_every_row(app, results):
    """Streamlit's "percent" format drops trailing zeros: Compress's "kept" read "35.4%" beside "38.78%". The
    progress bars (Compress's kept, Layers' utilization) hold percents shown with one decimal."""
    import json

    at = app.run()
    at.switch_page("pages/compress.py").run()
    _ok(at)
    savings = at.main.dataframe[0]
    config = json.loads(savings.proto.columns)["kept"]
    assert config["type_config"]["format"] == "%.1f%%" and config["type_config"]["max_value"] == 100.0
    kept = savings.value["kept"].dropna()
    assert len(kept) and kept.between(0.0, 100.0).all() and kept.max() > 1.0  # percents, not fractions
    at.switch_page("pages/layers.py").run()
    unfold(at, "layers_table_open").run()
    _ok(at)
    layers = at.main.dataframe[0]
    assert json.loads(layers.proto.columns)["utilization"]["type_config"]["format"] == "%.1f%%"
    assert layers.value["utilization"].max() > 1.0


def _library_copy(entry_dir: Path, cache_dir: Path, key: str, model_id: str, created: float, statistics_s: float) -> None:
    """A copy of a cache entry under ``key`` with another model id, creation time and statistics time (the
    manifest's digests cover the arrays, not the meta, so the copy stays intact)."""
    import json

    shutil.copytree(entry_dir, cache_dir / key)
    path = cache_dir / key / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(key=key, created=created)
    manifest["meta"]["model_id"] = model_id
    manifest["meta"]["timings"]["statistics_s"] = statistics_s
    path.write_text(json.dumps(manifest))


def test_library_lists_whole_models_first_in_one_number_format_and_fits_1280_px(results, monkeypatch, tmp_path):
    """The Timeline adopts two dozen shipped checkpoint analyses at once, all newer than the main ones: newest
    first put them above the four main analyses, below the table's visible rows. Whole models come first (newest
    first), then the checkpoints by series and step. "statistics s" showed 15.4 beside 16.22: one decimal for all.
    The table scrolled sideways at 1280 px (main column about 820 px) for its settings: its columns now fit there,
    the key columns first and the few settings that rarely differ in one cell."""
    import json

    from streamlit.testing.v1 import AppTest

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    source = results.cache_dir / results.a.key
    copies = [("a" * 24, "zoo:one", 100.0, 15.4), ("b" * 24, "zoo:two", 200.0, 16.2204),
              ("c" * 24, "zoo:two?step=936", 900.0, 15.0), ("d" * 24, "zoo:two?step=58", 800.0, 17.0),
              ("e" * 24, "zoo:one?step=117", 950.0, 16.0)]
    for key, model_id, created, seconds in copies:
        _library_copy(source, cache_dir, key, model_id, created, seconds)
    _point_app_at(cache_dir, monkeypatch)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/library.py").run()
    _ok(at)
    library = at.main.dataframe[0]
    assert list(library.value["model"]) == ["zoo:two", "zoo:one", "zoo:one?step=117", "zoo:two?step=58",
                                            "zoo:two?step=936"]
    assert list(at.selectbox(key="library_pick").options)[0].startswith("b" * 8)  # the menu in the same order
    columns = json.loads(library.proto.columns)
    assert columns["stats s"]["type_config"]["format"] == "%.1f"  # 15.4 and 16.2, not 15.4 and 16.22
    assert sorted(library.value["stats s"]) == [15.0, 15.4, 16.0, 16.22, 17.0]  # the values themselves kept
    widths = [columns[name]["width"] for name in library.value.columns]
    assert all(isinstance(w, int) for w in widths) and sum(widths) <= 820, widths
    assert list(library.value.columns)[:6] == ["key", "MLU", "model", "dataset", "images", "created"]
    assert len(library.value.columns) <= 8 and "seed 0" in library.value["settings"].iloc[0]
    assert all(len(name) <= 8 for name in library.value.columns)  # short headers
