"""The Heads page with ``streamlit.testing.v1.AppTest``: a tiny ViT analysed once (64 images) into a private
cache; the heads x layers map shows the head table of :mod:`analysis.heads`, follows the part picker and the
sidebar's energies, and an analysis without head data (as an entry from before per-head analysis reads)
gets the note instead of a chart. See tests/test_app.py for the AppTest quirks with ``st.navigation``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from analysis import defaults
from analysis.cache import ResultCache
from analysis.engine import analyze
from analysis.heads import head_table
from tests.helpers import TINY_VIT, unfold
from tests.helpers import assert_page_ok as _ok

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DATASET = "fashion-mnist:test"
SAMPLES = 64
TIMEOUT = 180
OLD_KEY = "0123456789abcdef01234567"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("heads-page-cache")
    result = analyze(TINY_VIT, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))
    old = replace(result, meta=replace(result.meta, key=OLD_KEY),
                  spectra=[replace(s, extras={}) for s in result.spectra])
    ResultCache(str(cache_dir)).store(OLD_KEY, old)
    return result, cache_dir


@pytest.fixture
def app(analysed, monkeypatch):
    from streamlit.testing.v1 import AppTest

    result, cache_dir = analysed
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(defaults, "DEFAULT_MODEL", TINY_VIT)
    monkeypatch.setattr(defaults, "DEFAULT_DATASET", DATASET)
    monkeypatch.setattr(defaults, "DEFAULT_SAMPLES", SAMPLES)
    monkeypatch.setattr(defaults, "DEFAULT_COMPARISON", (TINY_VIT,))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _heatmap(at) -> tuple[dict, dict]:
    """(the heatmap trace, the figure layout) of the page's only chart."""
    charts = [json.loads(node.proto.spec) for node in at.get("plotly_chart")]
    assert len(charts) == 1
    trace = next(t for t in charts[0]["data"] if t["type"] == "heatmap")
    return trace, charts[0]["layout"]


def _z(trace) -> np.ndarray:
    import base64

    z = trace["z"]
    if isinstance(z, dict) and "bdata" in z:
        shape = tuple(int(v) for v in str(z["shape"]).split(","))  # Plotly sends "rows, cols"
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"])).reshape(shape)
    return np.array(z, dtype=float)


def _expected(result, part: str) -> np.ndarray:
    """Heads x blocks utilization of ``part`` from the library's head table."""
    table = head_table(result)
    rows = table[(table["part"] == part) & table["head"].notna()]
    return rows.pivot(index="head", columns="block", values="utilization").to_numpy(dtype=float)


def test_heads_page_maps_heads_by_layers_follows_part_and_energies(app, analysed):
    result, _ = analysed
    at = app.run()
    at.select_slider(key="energy_in_slider").set_value(0.9)
    at.select_slider(key="energy_out_slider").set_value(0.9)
    at.run()
    unfold(at).switch_page("pages/heads.py").run()  # the per-head table is built once its panel is open
    _ok(at)
    assert at.title[0].value == "Heads"
    low = result.at_energy(0.9, 0.9)
    trace, layout = _heatmap(at)
    assert trace["x"] == ["0", "1"] and trace["y"] == ["head 0", "head 1"]  # two blocks, two heads each
    np.testing.assert_allclose(_z(trace), _expected(low, "q"))
    assert "queries q" in layout["title"]["text"] and "e_out = 0.9" in layout["title"]["text"]
    table = head_table(low)
    mean_v = table[(table["part"] == "v") & table["head"].notna()]["utilization"].mean()
    assert [m.value for m in at.main.metric if m.label.endswith(", v")] == [f"{mean_v:.1%}"]

    at.radio(key="heads_part").set_value("proj_in").run()
    _ok(at)
    trace, layout = _heatmap(at)
    np.testing.assert_allclose(_z(trace), _expected(low, "proj_in"))
    assert "output projection's input" in layout["title"]["text"] and "e_in = 0.9" in layout["title"]["text"]
    # the energies are the sidebar's: at 0.99 (the result's) the map holds other numbers
    assert not np.allclose(_expected(low, "proj_in"), _expected(result, "proj_in"))
    # shown in percent with one decimal (ui.tables.percent_bars)
    assert at.main.dataframe[0].value["utilization"].tolist() == (100.0 * table["utilization"]).tolist()
    assert any("part-major [q; k; v] in 2 attention layers" in c.value for c in at.caption)


def test_heads_page_explains_a_result_without_head_data(app):
    at = app.run()
    at.session_state["current_key"] = OLD_KEY
    at.switch_page("pages/heads.py").run()
    _ok(at)
    assert not at.get("plotly_chart")
    assert any("no per-head numbers" in info.value for info in at.info)
