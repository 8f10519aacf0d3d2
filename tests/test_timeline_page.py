"""The Timeline page with ``streamlit.testing.v1.AppTest``: a folder series of three tiny ViT checkpoints
(analysed once into a private cache, 64 images each), so the page finds every checkpoint cached and draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import defaults, timeline
from tests.helpers import TINY_VIT_OPTIONS, save_tiny_vit_checkpoint, unfold
from tests.helpers import plotly_figures as _charts, trace_values as _values

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DATASET = "fashion-mnist:test"
SAMPLES = 64
TIMEOUT = 180


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("run")
    for seed, step, probe in ((0, 0, 0.5), (1, 10, 0.6), (2, 100, 0.7)):
        path = folder / f"step_{step}.safetensors"
        save_tiny_vit_checkpoint(path, seed=seed)
        save_file(load_file(str(path)), str(path), metadata={"linear_probe_top1": str(probe)})
    spec = f"folder-of-checkpoints:{folder}?arch=vit_tiny_patch16_224&{TINY_VIT_OPTIONS}"
    cache_dir = tmp_path_factory.mktemp("timeline-page-cache")
    result = timeline(spec, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    assert set(result.table["status"]) == {"ok"}
    return spec, cache_dir, result


def test_timeline_page_draws_the_series_scrubs_and_follows_the_energies(series, monkeypatch):
    from streamlit.testing.v1 import AppTest

    spec, cache_dir, result = series
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", result.points[0].model_id)  # cached: the app opens on it
    monkeypatch.setattr(defaults, "DEFAULT_DATASET", DATASET)
    monkeypatch.setattr(defaults, "DEFAULT_SAMPLES", SAMPLES)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/timeline.py").run()
    unfold(at, "page_idea_open").run()  # the page's idea is folded under its lead
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Timeline" and timeline_intro() in [m.value for m in at.markdown]
    at.multiselect(key="timeline_series").set_value([]).run()  # no zoo jobs in a test
    at.text_input(key="timeline_own").set_value(spec).run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning, [w.value for w in at.warning]

    figures = _charts(at)
    titles = [f["layout"]["title"]["text"] for f in figures]
    assert titles[0].startswith("MLU and linear-probe accuracy against training step") and titles[-1].startswith("MLU against linear-probe")
    assert all("all tokens" in title for title in titles)  # every chart says which vectors were counted
    mlus = list(result.table["mlu"])
    line = figures[0]["data"][0]
    assert _values(line["y"]) == pytest.approx(mlus)
    assert _values(line["x"]) == pytest.approx([5.0, 10.0, 100.0])  # step 0 at half the first positive step
    assert figures[0]["layout"]["xaxis"]["type"] == "log"
    assert figures[1]["layout"]["title"]["text"].startswith("Utilization by layer group against training step")
    assert any(m.value.startswith("**What the curves show.**") and "%" in m.value for m in at.markdown)
    heat = figures[2]
    assert list(heat["data"][0]["x"]) == ["step 0", "step 10", "step 100"]
    assert list(heat["data"][0]["y"]) == list(result.results[0].layers["layer"])
    scatter = figures[-1]["data"][0]
    assert _values(scatter["x"]) == pytest.approx([0.5, 0.6, 0.7]) and _values(scatter["y"]) == pytest.approx(mlus)

    def bars_mlu(at) -> float:
        bars = [f for f in _charts(at) if f["layout"]["title"]["text"].split(" <span")[0] == "Utilization per layer"][0]
        return [s["y0"] for s in bars["layout"]["shapes"] if s.get("type") == "line"][0]  # not the error band

    assert bars_mlu(at) == pytest.approx(mlus[2])  # the scrubber starts at the last checkpoint
    at.select_slider(key="timeline_scrub").set_value("step 10").run()
    assert bars_mlu(at) == pytest.approx(mlus[1])
    at.session_state["energy_in"] = 0.9
    at.session_state["energy_out"] = 0.9
    at.run()
    lower = result.at_energy(0.9, 0.9).table["mlu"]
    assert _values(_charts(at)[0]["data"][0]["y"]) == pytest.approx(list(lower))
    assert list(lower) != pytest.approx(mlus)
    assert bars_mlu(at) == pytest.approx(lower[1])

    # presentation mode at 1280x720: the curves above the fold, so the form folds into one line that still
    # names the series and the dataset; the reading of the curves follows the first chart
    at.session_state["presentation_mode"] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    form = [e for e in at.main.expander if e.label.startswith("Series: ")]
    assert len(form) == 1 and form[0].proto.expanded is False
    folder = spec.split("?", 1)[0].rpartition("/")[2]
    assert form[0].label == f"Series: {folder} (yours) · on {DATASET}", form[0].label
    assert [w.key for w in [*form[0].multiselect, *form[0].text_input, *form[0].button]] == [
        "timeline_series", "timeline_own", "timeline_analyse"]
    order = [n.type for n in at.main if n.type in ("plotly_chart", "markdown", "expander")]
    first_chart = order.index("plotly_chart")
    assert order[:first_chart].count("expander") == 2  # only the page's idea and the folded form
    reading = [i for i, n in enumerate(n for n in at.main if n.type in ("plotly_chart", "markdown", "expander"))
               if n.type == "markdown" and n.value.startswith("**What the curves show.**")]
    assert reading == [first_chart + 1]


def timeline_intro() -> str:
    from ui.timeline_charts import INTRO

    return INTRO


def test_the_zoo_series_open_at_once_from_the_shipped_entries(tmp_path, monkeypatch):
    """A fresh cache: the default zoo series are shipped (analysis/demo_results), so the page draws the story,
    the layer groups and the computed reading without a click and without a job."""
    from streamlit.testing.v1 import AppTest

    from analysis import jobs

    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "fresh-cache"))
    submitted = []
    original = jobs.submit
    monkeypatch.setattr(jobs, "submit", lambda model_id, *a, **k: submitted.append(model_id) or original(model_id, *a, **k))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/timeline.py").run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [f["layout"]["title"]["text"] for f in _charts(at)]
    assert titles[0].startswith("MLU and linear-probe accuracy against training step"), titles
    assert titles[1].startswith("Utilization by layer group"), titles
    story = _charts(at)[0]
    names = {t["name"] for t in story["data"] if t.get("showlegend", True) is not False}
    assert {"supervised", "MAE", "DINO"} <= names, names
    reading = [m.value for m in at.markdown if m.value.startswith("**What the curves show.**")]
    assert reading and "supervised" in reading[0], reading
    assert any("Training budgets:" in c.value and "steps" in c.value for c in at.caption)
    assert set(submitted) <= {defaults.DEFAULT_MODEL}, submitted  # the app's default (cached); no checkpoint
    assert not list((tmp_path / "fresh-cache").glob("_jobs/_queue/running/*.json"))
