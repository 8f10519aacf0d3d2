"""End-to-end properties of the engine: cross-check against a direct float64 computation, cache, API."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import analyze, load_model, metrics
from analysis.cache import ResultCache
from analysis.data import load_dataset, make_loader
from analysis.engine import Progress
from analysis.errors import SettingsError
from analysis.meta import ResultMeta, Timings
from analysis.models import describe_layers
from analysis.result import TABLE_COLUMNS

from .helpers import TINY_VIT, make_image_folder, save_tiny_vit_checkpoint


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=15)


@pytest.fixture(scope="module")
def checkpoint_id(tmp_path_factory):
    return save_tiny_vit_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vit.safetensors", seed=3)


def _direct_float64_ranks(model_id: str, dataset_id: str, energy: float) -> dict[str, tuple[int, int]]:
    """k_in, k_out per layer from inputs and outputs captured whole, in float64, with no library maths."""
    model, config = load_model(model_id)
    dataset = load_dataset(dataset_id, data_config=config)
    captured: dict[str, tuple[list, list]] = {}
    handles = []
    for spec in describe_layers(model):
        def hook(module, args, output, name=spec.name):
            x, y = args[0].double(), output.double()
            if isinstance(module, nn.Conv2d):
                x = F.unfold(x, module.kernel_size, stride=module.stride).transpose(1, 2)
                y = y.flatten(2).transpose(1, 2)
            captured.setdefault(name, ([], []))
            captured[name][0].append(x.reshape(-1, x.shape[-1]))
            captured[name][1].append(y.reshape(-1, y.shape[-1]))
        handles.append(spec.module.register_forward_hook(hook))
    with torch.no_grad():
        for images, _ in make_loader(dataset, batch_size=8):
            model(images)
    for h in handles:
        h.remove()
    out = {}
    for name, (xs, ys) in captured.items():
        x, y = torch.cat(xs), torch.cat(ys)
        eig_in = torch.linalg.eigvalsh(x.T @ x).flip(0).numpy()
        eig_out = torch.linalg.eigvalsh(y.T @ y).flip(0).numpy()
        out[name] = (metrics.k_at_energy(eig_in, energy), metrics.k_at_energy(eig_out, energy))
    return out


def test_every_layer_matches_a_direct_float64_computation(checkpoint_id, image_folder):
    dataset_id = f"folder:{image_folder}"
    result = analyze(checkpoint_id, dataset_id, energy_in=0.99, energy_out=0.99, use_cache=False)
    direct = _direct_float64_ranks(checkpoint_id, dataset_id, 0.99)
    table = result.layers.set_index("layer")
    assert set(table.index) == set(direct)
    direct_u = []
    for name, (k_in, k_out) in direct.items():
        row = table.loc[name]
        assert abs(row["k_in"] - k_in) <= 1, name
        assert abs(row["k_out"] - k_out) <= 1, name
        assert abs(row["rank"] - min(k_in, k_out)) <= 1, name
        if row["in_mlu"]:
            direct_u.append(min(k_in, k_out) / min(row["d_in"], row["d_out"]))
    assert result.mlu == pytest.approx(float(np.mean(direct_u)), abs=0.01)
    # a ViT: patch embedding and head are reported but flagged out of the MLU
    flagged = table[~table["in_mlu"]]
    assert set(flagged["kind"]) == {"patch_embed", "head"}
    assert list(result.layers.columns) == TABLE_COLUMNS
    assert (table["n_samples"] > 0).all()


def test_second_run_is_a_cache_hit_and_reads_no_data(image_folder, monkeypatch):
    dataset_id = f"folder:{image_folder}"
    first = analyze(TINY_VIT, dataset_id, samples=20, seed=1)
    assert ResultCache().has(first.key)

    def no_reads(*args, **kwargs):
        raise AssertionError("the dataset was read on a cache hit")

    monkeypatch.setattr("analysis.engine.make_loader", no_reads)
    second = analyze(TINY_VIT, dataset_id, samples=20, seed=1, energy_in=0.9, energy_out=0.95)
    assert second.key == first.key
    assert second.energy_in == 0.9 and second.energy_out == 0.95
    pd_first = first.at_energy(0.9, 0.95).layers
    np.testing.assert_array_equal(second.layers["rank"].to_numpy(), pd_first["rank"].to_numpy())
    assert second.mlu == pytest.approx(first.at_energy(0.9, 0.95).mlu)


def test_a_corrupted_entry_is_recomputed(image_folder):
    dataset_id = f"folder:{image_folder}"
    first = analyze(TINY_VIT, dataset_id, samples=12)
    entry = ResultCache().entry_dir(first.key)
    spectra = entry / "spectra.npz"
    data = bytearray(spectra.read_bytes())
    data[len(data) // 2] ^= 0xFF
    spectra.write_bytes(bytes(data))
    assert ResultCache().load(first.key) is None  # damaged: never shown as a result
    again = analyze(TINY_VIT, dataset_id, samples=12)
    assert ResultCache().load(first.key) is not None
    assert again.mlu == pytest.approx(first.mlu)
    # a partial entry (no manifest) is not a result either
    (entry / "manifest.json").unlink()
    assert not ResultCache().has(first.key)


def test_a_listed_entry_damaged_later_is_no_longer_listed(image_folder, monkeypatch):
    """Integrity digests are remembered per version of a file (inode, size, times), so listing the cache does
    not re-hash every entry on every page run; a file changed in place afterwards, its modification time put
    back, is a new version (its change time moved) and is hashed again."""
    import os

    from analysis import cache as cache_module

    monkeypatch.setattr(cache_module, "RECENT_NS", 0)  # remember even just-written files
    first = analyze(TINY_VIT, f"folder:{image_folder}", samples=13)
    store = ResultCache()
    assert store.has(first.key)
    hashed = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    assert store.has(first.key) and hashed == []  # remembered: nothing read again
    victim = store.entry_dir(first.key) / "spectra.npz"
    info = os.stat(victim)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert not store.has(first.key) and victim in hashed


def test_different_settings_never_share_an_entry(image_folder):
    dataset_id = f"folder:{image_folder}"
    keys = {
        analyze(TINY_VIT, dataset_id, samples=10).key,
        analyze(TINY_VIT, dataset_id, samples=10, seed=1).key,
        analyze(TINY_VIT, dataset_id, samples=11).key,
        analyze(TINY_VIT, dataset_id, samples=10, tokens_per_image=4).key,
        analyze(TINY_VIT + "&seed=1", dataset_id, samples=10).key,
    }
    assert len(keys) == 5
    # energies only re-threshold the stored spectra: same entry
    assert analyze(TINY_VIT, dataset_id, samples=10, energy_in=0.9).key in keys


def test_at_energy_recomputes_from_stored_eigenvalues(image_folder):
    result = analyze(TINY_VIT, f"folder:{image_folder}", samples=16)
    low, high = result.at_energy(0.9, 0.9), result.at_energy(0.999, 0.999)
    assert (low.layers["rank"] <= high.layers["rank"]).all()
    assert low.mlu <= high.mlu
    assert (low.layers["preservation_error"] >= high.layers["preservation_error"] - 1e-12).all()
    assert low.parameters()["params_factorized"] <= high.parameters()["params_factorized"]
    with pytest.raises(SettingsError, match=r"\(0, 1\]"):
        result.at_energy(1.5, 0.9)
    with pytest.raises(SettingsError):
        result.at_energy(0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": 0}, "samples must be a positive integer"),
        ({"samples": -3}, "samples must be a positive integer"),
        ({"energy_in": 1.2}, "energy_in must be in"),
        ({"energy_out": 0}, "energy_out must be in"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "cuda"}, "no usable CUDA GPU"),
        ({"precision": "int8"}, "precision must be one of"),
    ],
)
def test_impossible_settings_are_rejected_before_any_work(kwargs, message, image_folder):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SettingsError, match=message):
        analyze(TINY_VIT, f"folder:{image_folder}", **kwargs)


def test_resnet_and_efficientnet_layers_are_analysed_or_listed(image_folder):
    dataset_id = f"folder:{image_folder}"
    # narrow variants keep the eigen-decompositions small (the layer structure is the full models')
    result = analyze("random:resnet18?channels=8,16,32,64&stem_width=8", dataset_id, samples=4, batch_size=4)
    kinds = set(result.layers["kind"])
    # the 1x1 projection shortcuts are ResNet-18's pointwise convolutions; issue 13 names them downsample layers
    assert {"conv", "downsample", "patch_embed", "head"} <= kinds
    shortcuts = result.layers[result.layers["kind"] == "downsample"]
    assert list(shortcuts["layer"]) == [f"layer{i}.0.downsample.0" for i in (1, 2, 3, 4)]
    assert list(shortcuts["d_in"]) == [64, 8, 16, 32]  # 1x1: channel vectors, d_in = in_channels (stem gives 64)
    assert not result.not_applicable
    effnet = analyze("random:mobilenetv3_small_050", dataset_id, samples=2, batch_size=2)  # EfficientNet-family adapter
    assert effnet.not_applicable and all(item["kind"] == "grouped_conv" for item in effnet.not_applicable)
    assert "grouped_conv" not in set(effnet.layers["kind"])


def test_result_meta_round_trips_through_the_manifest_and_old_entries_still_load(image_folder):
    dataset_id = f"folder:{image_folder}"
    first = analyze(TINY_VIT, dataset_id, samples=9, seed=4)
    cache = ResultCache()
    assert cache.load(first.key).meta == first.meta
    assert first.meta.n_images == 9 and first.meta.dataset_id == dataset_id and first.meta.key == first.key
    assert first.meta.timings.statistics_s > 0
    (listed,) = [e for e in cache.entries() if e.key == first.key]
    assert listed.meta == first.meta and listed.n_layers == len(first.spectra)

    manifest_path = cache.entry_dir(first.key) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # an entry from before a field existed, or from a newer version with a field this one does not know
    del manifest["meta"]["world_size"]
    manifest["meta"]["a_field_from_the_future"] = [1, 2]
    manifest_path.write_text(json.dumps(manifest))
    old = cache.load(first.key)
    assert old is not None and old.meta.world_size == 1 and old.meta.n_images == 9
    # a malformed field: the entry is absent (and recomputed), never shown with a wrong value
    manifest["meta"]["n_images"] = "nine"
    manifest_path.write_text(json.dumps(manifest))
    assert cache.load(first.key) is None and first.key not in {e.key for e in cache.entries()}
    again = analyze(TINY_VIT, dataset_id, samples=9, seed=4)
    assert again.meta.n_images == 9 and cache.load(first.key) is not None


def test_result_meta_takes_new_optional_fields_without_breaking_the_json_form():
    @dataclass(frozen=True)
    class Extended(ResultMeta):
        warnings: tuple[str, ...] = ()
        analysed_fraction: float | None = None

    meta = Extended(model_id="m", n_images=3, warnings=("a", "b"), analysed_fraction=0.5,
                    timings=Timings(statistics_s=1.5))
    assert Extended.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert Extended.from_dict({"model_id": "m"}).warnings == ()
    assert ResultMeta.from_dict(meta.to_dict()).timings.statistics_s == 1.5  # unknown keys ignored
    with pytest.raises(ValueError, match="Timings.statistics_s"):
        ResultMeta.from_dict({"timings": {"statistics_s": "slow"}})
    with pytest.raises(ValueError):
        ResultMeta.from_dict(["not", "an", "object"])


def test_progress_reports_every_batch_and_ends_at_the_total(image_folder):
    seen: list[Progress] = []
    analyze(TINY_VIT, f"folder:{image_folder}", samples=10, batch_size=4, use_cache=False, progress=seen.append)
    assert seen[0].stage == "statistics" and seen[-1].stage == "spectra"  # then the eigen phase, layer by layer
    stats = [p for p in seen if p.stage == "statistics"]
    assert seen[: len(stats)] == stats
    assert [p.done for p in stats] == [1, 2, 3] and {p.total for p in stats} == {3}
    assert [p.items_done for p in stats] == [4, 8, 10] and {p.items_total for p in stats} == {10}
    assert stats[-1].fraction == 1.0 and stats[-1].eta_s == 0.0
    # eta: the remaining steps at the mean time per finished step
    assert Progress("x", 2, 5, elapsed_s=4.0).eta_s == pytest.approx(6.0)
    assert Progress("x", 0, 5).eta_s is None and Progress("x", 0, 0).fraction == 0.0
