"""The classroom demo's library side: training facts beside each MLU (regimes, budgets, targets), comparison
tables in percentage points, time estimates, energy sweeps, the catalogue helpers the pages call, and the
result entries shipped in ``analysis/demo_results`` (adopted by an empty cache, ignored when stale or damaged,
equal to a fresh recomputation)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from analysis import catalogue as cat
from analysis.cache import ResultCache
from analysis.compare import (compare_results, format_pp, long_table, planned_keys,
                              regimes_table)
from analysis.engine import analyze
from analysis.errors import AnalysisError, ModelUnavailableError
from analysis.models import CatalogueEntry
from analysis.regimes import RECIPE_TARGETS, training_facts
from analysis.result import WPRIME_ENERGIES, Result
from analysis.settings import AnalysisSettings
from analysis.sweep import energy_sweep, layer_energy_sweep, mean_preservation_error
from tests.helpers import TINY_VIT

DATASET = "fashion-mnist:test"
ZOO = ["zoo:vit-fmnist-supervised", "zoo:vit-fmnist-mae", "zoo:vit-fmnist-dino", "zoo:vit-fmnist-random"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("demo-cache"))
    a = analyze(TINY_VIT, DATASET, samples=48, cache_dir=cache_dir)
    b = analyze(f"{TINY_VIT}&seed=1", DATASET, samples=48, cache_dir=cache_dir)
    return a, b


# ------------------------------------------------------------------------------------------ regimes
def test_zoo_training_facts_come_from_the_manifest():
    sup, mae, dino, rnd = (training_facts(m) for m in ZOO)
    assert (sup.label, mae.label, dino.label, rnd.label) == (
        "supervised", "self-supervised: MAE", "self-supervised: DINO", "untrained (random init)")
    assert (sup.family, mae.family, dino.family, rnd.family) == (
        "supervised", "self-supervised", "self-supervised", "untrained")
    assert sup.budget.startswith("25 epochs (5,850 steps, 1.50 M images seen) on CPU, ")
    assert sup.budget.endswith("wall-clock on 2 threads of a shared machine")  # retrained while other work ran
    assert dino.budget.startswith("4 epochs (1,872 steps, 239,616 images seen) on CPU, 4.1 h wall-clock on 2 threads")
    assert rnd.budget == "none (initialisation)"
    assert sup.top1 == pytest.approx(0.9032) and sup.linear_probe == pytest.approx(0.9056)  # the republished run
    assert dino.linear_probe == pytest.approx(0.745) and dino.top1 is None  # the republished run


def test_a_model_below_its_recipe_target_gets_a_caveat_and_the_others_do_not():
    sup, mae, dino, rnd = (training_facts(m) for m in ZOO)
    assert RECIPE_TARGETS["dino"].value == 0.80 and RECIPE_TARGETS["supervised"].metric == "top1"
    assert dino.falls_short and "74.5%" in dino.caveat() and "80%" in dino.caveat() and "4 epochs" in dino.caveat()
    # reads as a sentence: no "an under-trained self-supervised: DINO model", no "(... (...))"
    assert f"under-trained model ({dino.label})" in dino.caveat() and "))" not in dino.caveat()
    assert not sup.falls_short and not mae.falls_short  # 90.3 % >= 90 %, 82.2 % >= 80 %
    assert rnd.target is None and rnd.caveat() is None  # untrained by design: no target


def test_a_shortfall_follows_the_manifest_numbers(tmp_path):
    from analysis.models.zoo import MANIFEST_PATH

    manifest = json.loads(MANIFEST_PATH.read_text())
    manifest["models"]["vit-fmnist-dino"]["accuracy"]["linear_probe_top1"] = 0.81
    manifest["models"]["vit-fmnist-mae"]["accuracy"]["linear_probe_top1"] = 0.79
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    assert not training_facts("zoo:vit-fmnist-dino", path).falls_short
    assert training_facts("zoo:vit-fmnist-mae", path).falls_short


@pytest.mark.parametrize("model_id, regime", [
    ("random:resnet18", "random"), ("timm:vit_base_patch16_224.dino", "dino"), ("timm:vit_base_patch16_224.mae", "mae"),
    ("timm:vit_base_patch16_224.augreg_in21k_ft_in1k", "supervised"), ("timm:vit_small_patch14_dinov2.lvd142m", "dinov2"),
    ("file:/x.safetensors?arch=resnet18", "unknown"), ("not an id", "unknown"),
])
def test_regimes_of_other_sources_follow_their_ids(model_id, regime):
    facts = training_facts(model_id)
    assert facts.regime == regime and facts.linear_probe is None and not facts.falls_short


# ------------------------------------------------------------------------------------------ compare
def test_percentage_points():
    assert format_pp(0.052) == "+5.2 pp" and format_pp(-0.0049) == "-0.5 pp" and format_pp(float("nan")) == "n/a"


def test_long_table_and_deltas_in_points(tiny):
    a, b = tiny
    summary, _ = compare_results([a, b])
    assert summary["mlu_delta_pp"].tolist() == pytest.approx([0.0, 100 * (b.mlu - a.mlu)])
    table = long_table([a, b], ["A", "B"])
    assert len(table) == len(a.layers) + len(b.layers)
    assert list(table.columns) == ["analysis", "model_id", "layer", "kind", "block", "depth", "utilization", "delta_pp"]
    first = table[table["analysis"] == "A"]
    assert (first["delta_pp"] == 0).all() and list(first["depth"]) == list(range(len(a.layers)))
    second = table[table["analysis"] == "B"].set_index("layer")
    expected = 100 * (b.layers.set_index("layer")["utilization"] - a.layers.set_index("layer")["utilization"])
    pd.testing.assert_series_equal(second["delta_pp"], expected, check_names=False)


def test_regimes_table_puts_the_facts_beside_each_mlu(tiny):
    a, b = tiny
    table = regimes_table([a, b])
    assert list(table["regime"]) == ["untrained (random init)"] * 2
    assert table["mlu"].tolist() == pytest.approx([a.mlu, b.mlu])
    assert (table["caveat"] == "").all()  # no caveat is an empty string, never a NaN shown as "nan"
    assert not table["accuracy_here"].any()  # random init: no accuracy recorded anywhere


def test_planned_keys_match_the_engine_and_name_unplannable_models(tiny):
    a, _ = tiny
    rows = planned_keys([TINY_VIT, "zoo:no-such-model"], DATASET, AnalysisSettings(samples=48))
    assert rows[0] == (TINY_VIT, a.key, None)
    assert rows[1][1] is None and "no-such-model" in rows[1][2]


# ------------------------------------------------------------------------------------------ sweeps
def test_energy_sweeps(tiny):
    a, _ = tiny
    sweep = energy_sweep(a, (0.9, 0.99))
    assert sweep["mlu"].tolist() == pytest.approx([a.at_energy(0.9).mlu, a.at_energy(0.99).mlu])
    assert sweep["mean_error"].iloc[0] == pytest.approx(mean_preservation_error(a.at_energy(0.9)))
    layer = a.layer("blocks.0.mlp.fc1")
    per_layer = layer_energy_sweep(layer)
    assert list(per_layer["energy"]) == list(WPRIME_ENERGIES)
    assert (np.diff(per_layer["k_in"]) >= 0).all() and (np.diff(per_layer["rank"]) >= 0).all()
    assert (per_layer["wprime_rank"] <= per_layer["rank"]).all()  # W' = P_out W P_in has rank at most r
    assert (per_layer["rank"] == np.minimum(per_layer["k_in"], per_layer["k_out"])).all()


# ------------------------------------------------------------------------------------------ catalogue
def test_catalogue_groups_zoo_first_and_defaults_to_the_product_model():
    entries = [CatalogueEntry("random:resnet18", "r", "random init"),
               CatalogueEntry("timm:x", "t", "timm (cached)"),
               CatalogueEntry("zoo:vit-fmnist-random", "z2", "project zoo (Fashion-MNIST)"),
               CatalogueEntry("pkg:e", "p", "package weights (offline)"),
               CatalogueEntry("zoo:vit-fmnist-supervised", "z1", "project zoo (Fashion-MNIST)"),
               CatalogueEntry("odd:x", "o", "other")]
    groups = cat.grouped(entries)
    assert [g.name for g in groups] == ["project zoo (Fashion-MNIST)", "package weights (offline)", "timm (cached)",
                                        "random init", "other"]
    zoo = list(groups[0].entries)
    assert cat.default_index(zoo, "zoo:vit-fmnist-supervised") == 1 and cat.default_index(zoo, "zoo:none") == 0


def test_ids_built_from_what_the_user_typed():
    assert cat.checkpoint_model_id(" /m.safetensors ", "resnet18", "?img_size=32") == \
        "file:/m.safetensors?arch=resnet18&img_size=32"
    assert cat.checkpoint_model_id("/m.pt", "resnet18") == "file:/m.pt?arch=resnet18"
    assert cat.path_dataset_id("image folder", " /data/x ") == "folder:/data/x"
    assert cat.path_dataset_id("CIFAR-100 root", "/c") == "cifar100:/c"
    with pytest.raises(AnalysisError):
        cat.checkpoint_model_id("", "resnet18")
    with pytest.raises(AnalysisError):
        cat.path_dataset_id("image folder", "  ")
    assert cat.upload_file_name("my model (1).pt", "ab" * 32) == "abababababababab-my_model__1_.pt"
    known = {"zoo:vit-fmnist-supervised"}
    assert cat.offered("zoo:vit-fmnist-supervised", known) and not cat.offered("zoo:untrained", known)
    assert cat.offered("random:resnet18", known) and not cat.offered("nonsense", known)


def test_timm_weights_missing_offline_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert not cat.timm_weights_cached(name)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache"):
        cat.check_timm_weights(f"timm:{name}")
    assert time.monotonic() - start < 30  # not timm's minute of retries (generous: the machine is shared)
    cat.check_timm_weights("zoo:vit-fmnist-supervised")  # other sources check themselves
    snapshot = tmp_path / "hub" / ("models--" + cat.hub_repo(name).replace("/", "--")) / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert cat.timm_weights_cached(name)
    cat.check_timm_weights(f"timm:{name}")  # cached: passes without asking the network


# ------------------------------------------------------------------------------------------ shipped entries
def test_shipped_demo_entries_are_current():
    """Fails when the pipeline changed without ``python -m analysis.demo_results`` (the app then recomputes)."""
    from analysis.demo_results.__main__ import check

    assert check() == []


def _shipped() -> list[dict]:
    from analysis.demo_results import read_index

    return read_index().get("entries", [])


def test_an_empty_cache_adopts_the_shipped_entries(tmp_path):
    entries = _shipped()
    assert {e["model_id"] for e in entries} >= set(ZOO)
    cache = ResultCache(tmp_path / "cache")
    for entry in entries:
        result = cache.load(entry["key"])
        assert result is not None and result.mlu == pytest.approx(entry["mlu"], abs=1e-6)  # index rounds to 6 digits
        assert (tmp_path / "cache" / entry["key"] / "manifest.json").is_file()  # copied in, listed in the Library
    assert len(list(cache.entries())) == len(entries)


def test_a_stale_or_damaged_shipped_entry_is_ignored(tmp_path, monkeypatch):
    import analysis.cache as cache_module
    import analysis.demo_results as seeds

    key = _shipped()[0]["key"]
    monkeypatch.setattr(seeds, "code_fingerprint", lambda: "0" * 24)  # the pipeline changed since
    assert seeds.seed_entry(key) is None
    assert ResultCache(tmp_path / "a").load(key) is None
    monkeypatch.undo()

    damaged = tmp_path / "seeds" / key
    shutil.copytree(seeds.SEED_ROOT / key, damaged)
    with open(damaged / "spectra.npz", "r+b") as fh:  # one flipped byte
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(cache_module, "seed_entry", lambda k: damaged if k == key else None)
    cache = ResultCache(tmp_path / "b")
    assert cache.load(key) is None  # checksum mismatch: treated as absent, so it is recomputed


def test_recomputing_a_shipped_entry_gives_the_shipped_result(tmp_path):
    """The cheapest shipped entry (fewest images x layers) recomputed from scratch, without any cache."""
    from analysis.demo_results import SEED_ROOT
    from analysis.engine import compute, plan

    seeds = ResultCache(SEED_ROOT)
    entry = min(_shipped(), key=lambda e: (e.get("samples") or 10**9, e["model_id"] != "zoo:vit-fmnist-random"))
    shipped = seeds.load(entry["key"])
    the_plan = plan(entry["model_id"], entry["dataset_id"], AnalysisSettings(samples=entry.get("samples")))
    assert the_plan.key == entry["key"]
    fresh, _ = compute(the_plan)
    ints = ["layer", "kind", "d_in", "d_out", "n_samples", "k_in", "k_out", "rank", "params_dense", "params_factorized"]
    pd.testing.assert_frame_equal(fresh.layers[ints], shipped.layers[ints])
    np.testing.assert_allclose(fresh.layers["utilization"], shipped.layers["utilization"])
    for mine, theirs in zip(fresh.spectra, shipped.spectra):
        np.testing.assert_allclose(mine.eig_in, theirs.eig_in, rtol=1e-6, atol=1e-9 * theirs.eig_in[0])
        np.testing.assert_allclose(mine.w_singular, theirs.w_singular, rtol=1e-9)
