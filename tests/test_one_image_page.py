"""The One image page with ``streamlit.testing.v1.AppTest``: a tiny ViT analysed on 16 Fashion-MNIST images
without its moments, so the page first offers to compute the subspaces (the job is replaced by a synchronous
stand-in that runs the same analysis with the moments kept), then draws the energy fractions, ranks and the
residual heatmap, which must be the library's numbers (:func:`analysis.one_image.one_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis import defaults, jobs
from analysis.engine import analyze, plan, run_plan
from analysis.one_image import one_image, open_analysis
from tests.helpers import TINY_VIT
from tests.helpers import assert_page_ok as _ok, main_metric as _metric
from tests.helpers import plotly_figures as _charts, trace_values as _values

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DATASET = "fashion-mnist:test"
SAMPLES = 16
TIMEOUT = 180


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("one-image-page-cache")
    return analyze(TINY_VIT, DATASET, samples=SAMPLES, cache_dir=str(cache_dir)), cache_dir


def _bars(figure: dict) -> dict:
    """Layer -> bar height over the figure's bar traces (one trace per layer kind), in the x axis' order."""
    heights = {x: y for trace in figure["data"] if trace["type"] == "bar"
               for x, y in zip(_values(trace["x"]), _values(trace["y"]))}
    order = figure["layout"]["xaxis"].get("categoryarray") or list(heights)
    return {name: heights[name] for name in order if name in heights}


def _grid(data) -> np.ndarray:
    """A 2-D data array from a figure spec (a base64 block with its shape, or nested lists)."""
    if isinstance(data, dict) and "shape" in data:
        shape = tuple(int(n) for n in str(data["shape"]).split(","))
        return np.array(_values(data)).reshape(shape)
    return np.array([_values(row) for row in data])


def test_one_image_page_computes_the_subspaces_then_shows_the_image_against_them(analysed, monkeypatch):
    from streamlit.testing.v1 import AppTest

    result, cache_dir = analysed
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", TINY_VIT)
    monkeypatch.setattr(defaults, "DEFAULT_DATASET", DATASET)
    monkeypatch.setattr(defaults, "DEFAULT_SAMPLES", SAMPLES)
    submitted = []

    def run_now(model_id, dataset_id, settings, **_):  # the worker's work, done here
        submitted.append(settings)
        return run_plan(plan(model_id, dataset_id, settings), cache_dir=str(cache_dir)).key

    monkeypatch.setattr(jobs, "submit", run_now)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert at.session_state["current_key"] == result.key
    at.switch_page("pages/one_image.py").run()
    _ok(at)
    assert at.title[0].value == "One image"
    assert any("What one image uses of each layer" in m.value for m in at.markdown)  # says what it shows
    assert any("one more pass over its 16 images" in m.value for m in at.info)
    assert not _charts(at)

    at.button(key="one_image_compute").click().run()
    _ok(at)
    kept = [s for s in submitted if s.keep_moments]  # (the app also submits its default analysis: cached)
    assert len(kept) == 1 and kept[0].samples == SAMPLES
    figures = _charts(at)
    assert len(figures) == 2  # energy fractions + ranks, residual heatmap
    measured = open_analysis(result.key, cache_dir=str(cache_dir), compute_missing=False)
    expected = one_image(measured, 0, 0.99, 0.99)
    fractions = _bars(figures[0])
    assert list(fractions) == [item.layer for item in expected.layers]  # every layer, in depth order
    # bars from zero: the share of the image's energy outside the dataset's subspace
    np.testing.assert_allclose(list(fractions.values()), [1 - item.energy_fraction for item in expected.layers],
                               rtol=1e-9, atol=1e-15)
    ranks = next(trace for trace in figures[0]["data"] if trace.get("name") == "this image's own rank")
    assert _values(ranks["y"]) == [item.own_rank for item in expected.layers]
    selected = at.session_state["selected_layer"]
    item = expected.layer(selected)
    assert _metric(at, "own rank / dataset k_in") == f"{item.own_rank} / {item.k_in}"
    heat = next(trace for trace in figures[1]["data"] if trace["type"] == "heatmap")
    np.testing.assert_allclose(_grid(heat["z"]), item.heatmap(), rtol=1e-9)
    assert any("class" in m.value for m in at.markdown)  # the class token's loss, listed apart
    assert len(at.get("image")) == 1  # the thumbnail

    at.number_input(key="one_image_index").set_value(5).run()
    _ok(at)
    other = one_image(measured, 5, 0.99, 0.99)
    fractions = _bars(_charts(at)[0])
    np.testing.assert_allclose([fractions[i.layer] for i in other.layers],
                               [1 - i.energy_fraction for i in other.layers], rtol=1e-9, atol=1e-15)

    at.session_state["selected_layer"] = "head"
    at.run()
    _ok(at)
    assert any("No heatmap for head" in m.value and "pooled" in m.value for m in at.info)
    assert len(_charts(at)) == 1
