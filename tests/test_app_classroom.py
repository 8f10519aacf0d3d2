"""The classroom release (issue 23), page by page with ``streamlit.testing.v1.AppTest``: no page shows a bare
nan/None/NaN in either mode; the state a reload or a shared link must keep is in the URL and what cannot be
used is said; a job link opens beside the default analysis with the job's settings in the form; Run never
starts settings other than those on screen, and asks before a long run; Compare shows accuracy only where it
was measured and warns when analyses were not made alike; Enter never submits a compression.

Uses the module fixtures of :mod:`tests.test_app` (two tiny analyses in a private cache) and a third analysis
of the first model on fewer images.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import calibration, jobs
from analysis.engine import analyze
from analysis.jobs.files import JobFiles, write_json
from tests.helpers import assert_page_ok as _ok
from tests.helpers import plotly_figures as _charts
from tests.helpers import unfold
from tests.test_app import APP, DATASET, SAMPLES, TIMEOUT, TINY_A, TINY_B, _point_app_at, _status, results  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["compare", "layers", "heads", "spectra", "one_image", "analyze", "timeline", "compress", "library", "learn"]
BAD = re.compile(r"(?<![\w.])(nan|NaN|None|null|undefined|-?inf|NaT)(?![\w(])")
"""A bare missing-value word, as Python or JavaScript print it (not inside identifiers like ``None_x``)."""
METRIC_LABEL_CHARS = 23
"""The longest metric label that stays on one line in a quarter of the page at 1280x720 in presentation mode
(seen in the browser: "Mean preservation error", 23 characters, fits; "Parameters kept if factorized" and
"A: zoo:vit-fmnist-supervised" wrapped onto two lines). Detail goes in the metric's help."""


@pytest.fixture
def app(results, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _point_app_at(results.cache_dir, monkeypatch)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _texts(at) -> list[str]:
    """Every text the pages show: titles, markdown, captions, alerts, metrics, buttons, progress lines."""
    found = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "warning", "error", "info", "success",
                 "exception"):
        found += [str(e.value) for e in at.get(kind)]
    for metric in at.get("metric"):
        found += [metric.label, str(metric.value), metric.proto.delta]
    found += [b.label for b in at.get("button")]
    found += [p.proto.text for p in at.get("progress")]
    return found


def _chart_texts(figure: dict) -> list[str]:
    """The visible words of a Plotly figure: titles, axis titles and tick labels, annotations, legend names,
    bar and point labels."""
    layout = figure.get("layout", {})
    found = [str((layout.get("title") or {}).get("text", ""))]
    for name, axis in layout.items():
        if name.startswith(("xaxis", "yaxis")) and isinstance(axis, dict):
            found.append(str((axis.get("title") or {}).get("text", "")))
            found += [str(t) for t in axis.get("ticktext") or []]
    found += [str(a.get("text", "")) for a in layout.get("annotations", [])]
    for trace in figure.get("data", []):
        found.append(str(trace.get("name", "")))
        text = trace.get("text")
        found += [str(t) for t in text] if isinstance(text, list) else [str(text or "")]
    return found


def _long_metric_labels(at) -> list[str]:
    return [m.label for m in at.main.metric if len(m.label) > METRIC_LABEL_CHARS]


def _bad_words(at) -> list[str]:
    words = [t for t in _texts(at) if BAD.search(t)]
    for figure in _charts(at):
        words += [t for t in _chart_texts(figure) if BAD.search(t)]
    for frame in at.get("arrow_data_frame") + at.get("dataframe"):
        table = frame.value
        if isinstance(table, pd.DataFrame):
            for column in table.columns:
                for value in table[column]:
                    if value is None or (isinstance(value, float) and value != value) or \
                            (isinstance(value, str) and BAD.fullmatch(value.strip())):
                        words.append(f"table column {column!r}: {value!r}")
    return words


@pytest.mark.parametrize("mode", ["normal", "presentation"])
@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_a_bare_missing_value(app, results, page, mode, monkeypatch):
    """Every page, in both modes, on an analysis whose layers include ones outside the blocks (no block, no
    error bar) and with a compression on record: no nan/None/NaN anywhere a person can read, and no metric label
    too long for one line."""
    monkeypatch.setattr(jobs, "status", lambda k, **kw: _status("failed", k))
    if mode == "presentation":
        app.query_params["present"] = "1"
    at = app.run()
    _ok(at)
    assert at.session_state["presentation_mode"] is (mode == "presentation")  # from the URL
    # AppTest runs a switched-to page alone (no sidebar, hence no toggle): the mode is kept as a plain value
    at.session_state["presentation_mode"] = mode == "presentation"
    at.switch_page(f"pages/{page}.py").run()
    _ok(at)
    unfold(at).run()  # the folded panels' text, tables and charts read too
    _ok(at)
    assert _bad_words(at) == [], page
    assert _long_metric_labels(at) == [], page


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """A cache holding the shipped zoo analyses (the landing page's regimes comparison), copied as they are."""
    import shutil

    from analysis.cache import KEY_PATTERN
    from analysis.demo_results import SEED_ROOT

    root = tmp_path_factory.mktemp("zoo-cache")
    for entry in SEED_ROOT.iterdir():
        if entry.is_dir() and KEY_PATTERN.fullmatch(entry.name):
            shutil.copytree(entry, root / entry.name)
    return root


@pytest.mark.parametrize("mode", ["normal", "presentation"])
@pytest.mark.parametrize("page", ["compare", "layers", "spectra", "compress", "library"])
def test_the_zoo_regimes_show_no_bare_missing_value(zoo_cache, page, mode, monkeypatch):
    """The landing page as a newcomer sees it, on the real zoo models: some fell short of their recipe and
    some did not, some have an accuracy and one has none (the mix that once printed "nan" three times); metric
    labels short enough for one line (the model ids were not)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(zoo_cache))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if mode == "presentation":
        at.query_params["present"] = "1"
    at.run()
    _ok(at)
    assert len(at.session_state["compare_keys"]) == 4
    at.session_state["presentation_mode"] = mode == "presentation"
    at.switch_page(f"pages/{page}.py").run()
    _ok(at)
    unfold(at).run()  # the folded panels' text, tables and charts read too
    _ok(at)
    assert _bad_words(at) == [], page
    assert _long_metric_labels(at) == [], page
    if page == "compare":
        assert sum("fell short" in w.value for w in at.warning) == 1  # the one real caveat, and no empty ones


def test_pages_have_no_stray_string_statements():
    """Streamlit writes a page's bare string statements on the page ("magic"): a docstring of a module variable
    would appear above the title. Only the module docstring may be a bare string."""
    for path in sorted((ROOT / "pages").glob("*.py")):
        body = ast.parse(path.read_text()).body
        stray = [node.lineno for node in body[1:]
                 if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str)]
        assert stray == [], f"{path.name}: string statements at lines {stray}"


def test_the_url_keeps_the_state_and_says_what_it_cannot_use(app, results):
    names = list(results.a.layers["layer"])
    app.query_params.update({"e_in": "0.95", "e_out": "0.9", "layer": names[3], "present": "1",
                             "compare": f"{results.b.key},{results.a.key}"})
    at = app.run()
    _ok(at)
    state = at.session_state
    assert (state["energy_in"], state["energy_out"], state["selected_layer"]) == (0.95, 0.9, names[3])
    assert state["presentation_mode"] is True and state["compare_keys"] == [results.b.key, results.a.key]
    assert [m.label[:2] for m in at.main.metric] == ["A:", "B:"] and at.main.metric[0].value == \
        f"{results.b.at_energy(0.95, 0.9).mlu:.1%}"
    published = {k: at.query_params.get(k) for k in ("e_in", "e_out", "layer", "present", "compare")}
    assert published == {"e_in": "0.95", "e_out": "0.9", "layer": names[3], "present": "1",
                         "compare": f"{results.b.key},{results.a.key}"}
    at.switch_page("pages/spectra.py").run()
    assert at.selectbox(key="spectra_layer_pick").value == names[3]


def test_a_bad_link_says_so(app, results):
    app.query_params.update({"analysis": "f" * 24, "e_in": "0.37", "layer": "no.such.layer",
                             "compare": f"{results.a.key},{'e' * 24}", "job": "not-a-key"})
    at = app.run()
    _ok(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "ffffffffffffffffffffffff" in warnings and "not in this cache" in warnings  # the analysis
    assert "e_in = 0.37" in warnings and "not one of the energies" in warnings
    assert "eeeeeeee" in warnings and "not-a-key" in warnings
    assert at.session_state["current_key"] == results.a.key  # the default analysis, said, not silent
    at.switch_page("pages/layers.py").run()
    assert any("no.such.layer" in w.value for w in at.warning)


def test_a_job_link_alone_opens_the_default_beside_it_and_shows_the_jobs_settings(app, results, monkeypatch):
    key = "a" * 24
    files = JobFiles.of(key, results.cache_dir)
    files.folder.mkdir(parents=True, exist_ok=True)
    write_json(files.request, {"kind": "analysis", "model_id": TINY_B, "dataset_id": DATASET, "key": key,
                               "settings": {"samples": 48, "seed": 3, "token_set": "patch", "uncertainty": False}})
    monkeypatch.setattr(jobs, "status", lambda k, **kw: _status("running", k))
    app.query_params["job"] = key
    at = app.run()
    _ok(at)
    assert at.session_state["current_key"] == results.a.key  # not "No analysis open yet"
    assert at.sidebar.metric[0].value == f"{results.a.mlu:.1%}"
    at.switch_page("pages/analyze.py").run()
    _ok(at)
    assert at.text_input(key="analyze_any_model").value == TINY_B
    assert at.text_input(key="analyze_any_dataset").value == DATASET
    assert at.number_input(key="analyze_samples").value == 48 and at.checkbox(key="analyze_all").value is False
    assert at.number_input(key="analyze_seed").value == 3
    assert at.text_input(key="analyze_token_set").value == "patch"
    assert at.checkbox(key="analyze_uncertainty").value is False
    assert at.get("progress"), "the job's progress is right below the Run button"


def _analyze_with(app, model_id: str):
    at = app.run()
    at.switch_page("pages/analyze.py").run()
    at.radio(key="analyze_model_source").set_value("any model id").run()
    at.text_input(key="analyze_any_model").set_value(model_id).run()
    _ok(at)
    return at


def test_a_click_on_run_drawn_for_other_settings_starts_nothing(app, results, monkeypatch):
    """Every change of the form is counted by its widget's callback, which runs before any later click's. A
    click on the Run button drawn before a change (the user changed a setting and clicked while the new
    estimate was being made) carries the old count and the old settings: it is refused with a message. The
    button drawn for the settings on screen starts exactly those."""
    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda *a, **kw: submitted.append(a) or results.a.key)
    at = _analyze_with(app, TINY_A)
    submitted.clear()  # the app's first run submitted (opened) its default analysis
    drawn_for = at.session_state["analyze_generation"]
    at.number_input(key="analyze_seed").set_value(7).run()
    assert at.session_state["analyze_generation"] == drawn_for + 1  # the change was counted
    # a change and a click on the button drawn before it, arriving together: the change is counted first
    at.number_input(key="analyze_seed").set_value(8)
    at.button(key="analyze_launch").click().run()
    assert submitted == []
    assert any("settings changed while their estimate was being made" in w.value for w in at.warning)
    at.button(key="analyze_launch").click().run()  # the button drawn for what is on screen now
    assert len(submitted) == 1 and submitted[0][0] == TINY_A and submitted[0][2].seed == 8


def test_run_asks_before_a_long_run(app, results, monkeypatch):
    long = calibration.TimeEstimate(seconds=3600, low=1800, high=7200, start_s=8, pass_s=3000, post_s=592,
                                    basis="other runs")
    monkeypatch.setattr(calibration, "predict", lambda work, root: long)
    at = _analyze_with(app, f"{TINY_A}&seed=9")
    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda *a, **kw: submitted.append(a) or "b" * 24)
    monkeypatch.setattr(jobs, "status", lambda k, **kw: _status("queued", k))
    assert not at.error, [e.value for e in at.error]
    assert any("30 min - 2.0 h here" in c.value for c in at.caption), [c.value for c in at.caption]
    at.button(key="analyze_launch").click().run()
    assert submitted == []  # asked first
    assert any("Run it anyway?" in w.value for w in at.warning)
    at.button(key="analyze_confirm_yes").click().run()
    assert len(submitted) == 1 and submitted[0][0] == f"{TINY_A}&seed=9"
    assert at.session_state["job_key"] == "b" * 24


@pytest.fixture(scope="module")
def fewer(results):
    """The first model again, on half the images: an analysis not made like the others."""
    return analyze(TINY_A, DATASET, samples=SAMPLES // 2, cache_dir=str(results.cache_dir))


def test_compare_warns_when_analyses_were_not_made_alike_and_shows_no_accuracy_it_did_not_measure(app, results,
                                                                                                   fewer):
    app.query_params["compare"] = f"{results.a.key},{fewer.key}"
    at = app.run()
    _ok(at)
    assert any("different numbers of images (64, 32)" in w.value for w in at.warning)
    words = " ".join(m.value for m in at.main.markdown)
    assert "accuracy: not measured here" in words and "linear probe" not in words


def test_zoo_accuracy_belongs_to_the_dataset_it_was_measured_on():
    from analysis.regimes import training_facts

    facts = training_facts("zoo:vit-fmnist-mae")
    assert facts.linear_probe is not None
    assert facts.measured_on("fashion-mnist:test") and not facts.measured_on("mnist")
    assert not training_facts(TINY_A).measured_on(DATASET)  # no accuracy recorded at all


def test_enter_in_the_compression_form_never_submits(app):
    at = app.run()
    at.switch_page("pages/compress.py").run()
    _ok(at)
    (form,) = [block for block in at.get("form")] or [None]
    assert form is not None and form.proto.form.enter_to_submit is False


def test_presentation_mode_is_kept_by_a_reload_and_dropped_when_switched_off(app):
    app.query_params["present"] = "1"
    at = app.run()
    assert at.session_state["presentation_mode"] is True and at.query_params.get("present") == "1"
    at.toggle(key="presentation_mode").set_value(False).run()
    assert "present" not in at.query_params


def test_a_followed_compare_batch_shows_each_jobs_place_in_the_queue(app, results, monkeypatch):
    from ui import jobs_view

    places = {"c" * 24: 0, "d" * 24: 1}
    monkeypatch.setattr(jobs, "status", lambda k, **kw: _status(
        "running" if places[k] == 0 else "queued", k, queue_position=places[k] or None,
        message="waiting for its turn on this machine: 1 job ahead of it" if places[k] else ""))
    at = app.run()
    at.session_state[jobs_view.FOLLOW.format("compare")] = {"A": "c" * 24, "B": "d" * 24}
    at.switch_page("pages/compare.py").run()
    _ok(at)
    lines = [p.proto.text for p in at.get("progress")]
    assert any(line.startswith("**A**") and "batch 1/2" in line for line in lines)
    assert any(line.startswith("**B**") and "1 job ahead of it" in line for line in lines)
    assert at.button(key="compare_quick").disabled  # one batch at a time per page


def test_cancel_says_cancelling_at_once(app, monkeypatch):
    cancelled = []
    monkeypatch.setattr(jobs, "status", lambda k, **kw: _status("running", k))
    monkeypatch.setattr(jobs, "cancel", lambda k, **kw: cancelled.append(k) or True)
    at = app.run()
    at.session_state["job_key"] = "e" * 24
    at.switch_page("pages/analyze.py").run()
    at.button(key=f"cancel-{'e' * 24}").click().run()
    assert cancelled == ["e" * 24]
    assert any("cancelling" in p.proto.text for p in at.get("progress"))
    assert at.button(key=f"cancel-{'e' * 24}").disabled and at.button(key=f"cancel-{'e' * 24}").label == "Cancelling ..."


@pytest.mark.parametrize("low, high", [(0.312, 0.365), (0.99, 0.998), (0.0, 1.05), (0.2, 0.205), (0.0, 0.031)])
def test_percent_ticks_never_repeat_and_carry_no_empty_digits(low, high):
    """The Compress page's accuracy chart once read "33%, 33%, 34%, 34%": ticks at a round step, with the
    decimals that step needs, are all different."""
    import math

    from ui.charts import percent_axis

    axis = percent_axis(low, high)
    step, digits = axis["dtick"], int(axis["tickformat"][1:-1])
    ticks = [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]
    labels = [f"{100 * t:.{digits}f}%" for t in ticks]
    assert len(ticks) >= 2 and len(set(labels)) == len(labels), labels
    coarser = [f"{100 * t:.{digits - 1}f}%" for t in ticks] if digits else labels[:1]
    assert digits == 0 or len(set(coarser)) < len(coarser)  # one digit fewer would repeat


def test_the_timeline_log_axis_has_readable_ticks_in_dark_text():
    from ui import timeline_charts as tc

    steps = [0, 29, 58, 117, 234, 468, 1170, 2340, 5850]
    table = pd.DataFrame({"series": "s", "checkpoint": [f"step {s}" for s in steps], "step": steps, "status": "ok",
                          "mlu": 0.2, "model_id": "zoo:x", "linear_probe_top1": 0.8})
    axis = tc.story_chart(table).layout.xaxis
    assert list(axis.ticktext) == ["0", "30", "100", "300", "1k", "3k", "10k"]  # not only "0" and "1000"
    assert axis.tickfont.color == "#222"  # the other pages' dark ticks, not Plotly's faint grey


def test_spectra_calls_a_curve_now_only_at_its_own_energy(results):
    from ui import charts

    layer = results.a.layer("blocks.0.mlp.fc1")
    names = [t.name for t in charts.singular_values_chart(layer, 0.5, 0.5).data]
    assert not any("(now)" in n for n in names)
    assert "W' at e = 0.9 (nearest stored to 0.5)" in names
    assert "W' at e = 0.95 (now)" in [t.name for t in charts.singular_values_chart(layer, 0.95, 0.99).data]


def test_one_image_bars_start_at_zero():
    """Shares of the image's energy outside the dataset's subspace, from zero (a bar axis that started near
    97 % made every difference look huge)."""
    from types import SimpleNamespace

    from ui import image_charts

    items = [SimpleNamespace(layer=f"l{i}", kind="mlp_fc1", energy_fraction=f, own_rank=3, k_in=5, loss=0.01)
             for i, f in enumerate([0.995, 0.97, 0.999])]
    report = SimpleNamespace(layers=items, energy_in=0.99, index=0)
    figure = image_charts.energy_fraction_chart(report, "l1")
    low, high = figure.layout.yaxis.range
    assert low == 0.0 and high > 0.03
    bars = [y for t in figure.data if t.type == "bar" for y in t.y]
    assert bars == pytest.approx([0.005, 0.03, 0.001])
