"""The reproducibility card in the app (``streamlit.testing.v1.AppTest``): the Layers page and the Library page
show the card with the exact reproduce command, and offer the card as a download.

Two real analyses of the tiny random ViT (64 Fashion-MNIST test images, different seeds and settings) live in
a private cache; see ``tests/test_app.py`` for the AppTest and ``st.navigation`` conventions used here.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from analysis.card import reproduce_command
from analysis.engine import analyze
from tests.helpers import TINY_VIT, unfold
from tests.test_app import APP, DATASET, SAMPLES, TIMEOUT, _ok, _point_app_at


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("card-app-cache")
    a = analyze(TINY_VIT, DATASET, samples=SAMPLES, cache_dir=str(cache_dir))  # the app's default analysis
    b = analyze(TINY_VIT, DATASET, samples=SAMPLES, seed=2, cache_dir=str(cache_dir), uncertainty=False,
                layers="blocks.*", tokens_per_image=6)
    return SimpleNamespace(cache_dir=cache_dir, a=a, b=b)


@pytest.fixture
def app(results, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _point_app_at(results.cache_dir, monkeypatch, comparison=(TINY_VIT,))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _card_expanders(at) -> list:
    return [e for e in at.main.expander if e.label == "Reproducibility card"]


def test_layers_page_shows_the_card_and_its_command(app, results):
    at = app.run()
    assert at.session_state["current_key"] == results.a.key
    at.switch_page("pages/layers.py").run()
    _ok(at)
    (card,) = _card_expanders(at)
    assert not card.code and not card.dataframe  # folded: built only when opened (ui.frame.folded)
    unfold(at).run()
    (card,) = _card_expanders(at)
    assert [c.value for c in card.code] == [reproduce_command(results.a)]
    fields = dict(card.dataframe[0].value.itertuples(index=False))
    assert fields["key"] == results.a.key
    assert fields["model.weights_fingerprint"] == results.a.meta.weights_fingerprint
    assert fields["statistics.token_set_words"] == "all tokens"
    assert "Card (JSON)" in [d.label for d in at.get("download_button")]


def test_library_shows_the_card_of_the_picked_entry_and_offers_it_as_a_download(app, results):
    at = app.run()
    at.switch_page("pages/library.py").run()
    _ok(at)
    unfold(at).selectbox(key="library_pick").set_value(results.b.key).run()
    _ok(at)
    (card,) = _card_expanders(at)
    assert [c.value for c in card.code] == [reproduce_command(results.b)]
    assert "--layers 'blocks.*'" in card.code[0].value and "--tokens-per-image 6" in card.code[0].value
    fields = dict(card.dataframe[0].value.itertuples(index=False))
    assert fields["dataset.seed"] == "2"
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["CSV", "PARQUET", "JSON", "CARD"]
