"""Utilization across training: checkpoints written by the zoo recipes, the timeline of a series, the CLI.

Series here are tiny random ViTs (``tests.helpers``) saved into folders, analysed on 32 Fashion-MNIST test
images, and one real (tiny) supervised recipe run of 32 steps on 128 images.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from analysis import timeline
from analysis.engine import analyze
from analysis.errors import CheckpointError, SettingsError, UnknownModelError
from analysis.models.checkpoints import read_state_dict
from analysis.models.zoo import MANIFEST_PATH, ZooSource, read_manifest, sha256_file
from analysis.timeline import LAYER_PREFIX, series_checkpoints
from analysis.training import common, dino, mae, publish, supervised
from tests.helpers import TINY_VIT_OPTIONS, save_tiny_vit_checkpoint

DATASET = "fashion-mnist:test"
SAMPLES = 32
ARCH = f"arch=vit_tiny_patch16_224&{TINY_VIT_OPTIONS}"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("timeline-cache"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three tiny ViT checkpoints whose names sort differently from their steps."""
    root = tmp_path_factory.mktemp("series")
    for seed, name in ((0, "step_3000.safetensors"), (1, "step_10.safetensors"), (2, "step_200.safetensors")):
        save_tiny_vit_checkpoint(root / name, seed=seed)
    return root


# ------------------------------------------------------------------------------------------ step 0 of every regime
def test_every_recipe_starts_from_build_model_of_its_seed_which_is_the_random_zoo_backbone():
    for recipe in (supervised, mae, dino):
        assert "common.build_model(args.seed" in inspect.getsource(recipe.main), recipe.__name__
    entry = read_manifest()["models"]["vit-fmnist-random"]
    assert entry["seed"] == 0
    published = read_state_dict(MANIFEST_PATH.parent / entry["file"])
    init = common.build_model(0).state_dict()
    backbone = [k for k in init if not k.startswith("head.")]
    assert backbone and all(torch.equal(published[k], init[k]) for k in backbone)  # bit for bit
    assert not torch.equal(published["head.weight"], init["head.weight"])  # the random model's head is a probe
    # so every published seed-0 regime lists that file as its step 0, and zoo:<name>?step=0 loads it
    for name, model in read_manifest()["models"].items():
        first = model["checkpoints"][0]
        assert first["step"] == 0 and first["sha256"] == entry["sha256"], name
    loaded = ZooSource().load("vit-fmnist-dino", {"step": "0"}).module
    assert all(torch.equal(loaded.state_dict()[k], init[k]) for k in backbone)
    with pytest.raises(UnknownModelError, match="no checkpoint at step 7"):
        ZooSource().load("vit-fmnist-dino", {"step": "7"})


# ------------------------------------------------------------------------------------------ recipe checkpoints
def test_tiny_recipe_run_writes_checkpoints_that_the_manifest_lists_and_loads(tmp_path):
    assert common.checkpoint_epochs(4) == [0, 1, 2, 4] and common.checkpoint_epochs(25) == [0, 1, 2, 4, 8, 16, 25]
    assert common.checkpoint_steps(234, 25) == [0, 29, 58, 117, 234, 468, 936, 1872, 3744, 5850]
    assert common.checkpoint_steps(468, 4) == [0, 58, 117, 234, 468, 936, 1872]  # DINO: 7 points in 4 epochs
    assert common.checkpoint_steps(2, 1) == [0, 1, 2]
    run = tmp_path / "run"
    argv = ["--out", str(run), "--seed", "0", "--train-limit", "128", "--batch-size", "16", "--epochs", "4",
            "--threads", "1", "--eval-every-epoch", "0", "--checkpoint-probe-limit", "100",
            "--checkpoint-test-limit", "100"]
    assert supervised.main(argv) == 0
    records = json.loads((run / common.CHECKPOINT_RECORDS).read_text())
    assert [r["step"] for r in records] == [0, 1, 2, 4, 8, 16, 32]
    assert [r["epoch"] for r in records] == [0, 0.125, 0.25, 0.5, 1, 2, 4]
    for r in records:
        assert r["dtype"] == "float16" and 0.0 <= r["accuracy"]["linear_probe_top1"] <= 1.0
        assert r["evaluation"] == {"train_images": 100, "test_images": 100}
    step0 = read_state_dict(run / records[0]["file"])
    init = common.build_model(0).state_dict()
    assert all(step0[k].dtype == torch.float16 and torch.equal(step0[k], init[k].half()) for k in init)

    weights = tmp_path / "zoo"
    weights.mkdir()
    manifest = weights / "manifest.json"
    assert publish.main(["--run", str(run), "--manifest", str(manifest), "--train-limit", "200",
                         "--test-limit", "200", "--threads", "1"]) == 0
    entry = read_manifest(manifest)["models"]["vit-fmnist-supervised"]
    listed = entry["checkpoints"]
    assert [c["step"] for c in listed] == [0, 1, 2, 4, 8, 16, 32]
    assert [c["model_id"] for c in listed] == [f"zoo:vit-fmnist-supervised?step={s}" for s in (0, 1, 2, 4, 8, 16)] + [
        "zoo:vit-fmnist-supervised"]
    assert listed[-1]["file"] == entry["file"] and listed[-1]["dtype"] == "float32"
    source = ZooSource(manifest)
    for c in listed[:-1]:
        path = weights / c["file"]
        assert path.is_file() and sha256_file(path) == c["sha256"]
        model = source.load("vit-fmnist-supervised", {"step": str(c["step"])}).module
        state = read_state_dict(path)
        assert all(torch.equal(model.state_dict()[k], state[k].float()) for k in state)
    assert sum(c["size_bytes"] for c in listed[:-1]) <= publish.CHECKPOINT_BUDGET_MB * 2**20
    # with the random model published, a seed-0 run's step 0 is that file (one analysis for every regime's start)
    shared = tmp_path / "zoo-shared"
    shared.mkdir()
    random_entry = read_manifest()["models"]["vit-fmnist-random"]
    (shared / "manifest.json").write_text(json.dumps({"models": {"vit-fmnist-random": random_entry}}))
    assert publish.main(["--run", str(run), "--manifest", str(shared / "manifest.json"), "--train-limit", "200",
                         "--test-limit", "200", "--threads", "1"]) == 0
    series = read_manifest(shared / "manifest.json")["models"]["vit-fmnist-supervised"]["checkpoints"]
    assert [c["step"] for c in series] == [0, 1, 2, 4, 8, 16, 32]
    assert series[0]["model_id"] == "zoo:vit-fmnist-random" and series[0]["sha256"] == random_entry["sha256"]
    assert not list(shared.rglob("step_000000.safetensors"))

    data = bytearray((weights / listed[1]["file"]).read_bytes())
    data[-1] ^= 0xFF
    (weights / listed[1]["file"]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        source.load("vit-fmnist-supervised", {"step": "1"})


# ------------------------------------------------------------------------------------------ timeline
def test_timeline_of_a_three_checkpoint_series_equals_three_separate_analyses(folder, cache_dir):
    spec = f"folder-of-checkpoints:{folder}?{ARCH}"
    result = timeline(spec, DATASET, samples=SAMPLES, cache_dir=cache_dir)
    table = result.table
    assert list(table["step"]) == [10, 200, 3000] and set(table["status"]) == {"ok"}
    for (_, row), name in zip(table.iterrows(), ["step_10", "step_200", "step_3000"]):
        alone = analyze(f"file:{folder / (name + '.safetensors')}?{ARCH}", DATASET, samples=SAMPLES, use_cache=False)
        assert row["mlu"] == pytest.approx(alone.mlu, abs=1e-12)
        for layer, u in zip(alone.layers["layer"], alone.layers["utilization"]):
            assert row[LAYER_PREFIX + layer] == pytest.approx(u, abs=1e-12)
        assert row["images"] == SAMPLES
    assert table["mlu"].nunique() > 1  # three different models, not one analysis repeated
    long = result.layers()
    assert len(long) == 3 * len(alone.layers) and set(long["step"]) == {10, 200, 3000}
    # re-thresholding from stored spectra equals analysing at those energies
    lower = result.at_energy(0.9, 0.95).table
    direct = timeline(spec, DATASET, samples=SAMPLES, energy_in=0.9, energy_out=0.95, cache_dir=cache_dir).table
    assert list(lower["mlu"]) == pytest.approx(list(direct["mlu"]))
    assert (lower["mlu"] <= table["mlu"] + 1e-12).all()


def test_folder_series_with_shuffled_names_is_ordered_by_step(tmp_path):
    from safetensors.torch import save_file

    state = {"w": torch.zeros(2)}
    save_file(state, str(tmp_path / "step_1200.safetensors"))
    torch.save(state, tmp_path / "epoch=3-step=900.ckpt")
    torch.save(state, tmp_path / "ckpt_00042.pt")
    save_file(state, str(tmp_path / "weights.safetensors"), metadata={"step": "500", "epoch": "1.5",
                                                                       "linear_probe_top1": "0.75"})
    save_file(state, str(tmp_path / "final.safetensors"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    points = series_checkpoints(f"folder-of-checkpoints:{tmp_path}?arch=resnet18")
    assert [p.label for p in points] == ["ckpt_00042.pt", "weights.safetensors", "epoch=3-step=900.ckpt",
                                         "step_1200.safetensors", "final.safetensors"]
    assert [p.step for p in points] == [42, 500, 900, 1200, None]
    assert points[1].epoch == 1.5 and points[1].accuracy["linear_probe_top1"] == 0.75 and points[2].epoch == 3
    assert points[-1].problem and "final.safetensors" in points[-1].problem
    assert points[0].model_id == f"file:{tmp_path / 'ckpt_00042.pt'}?arch=resnet18"
    torch.save(state, tmp_path / "other_step_900.pt")
    with pytest.raises(SettingsError, match="both at step 900"):
        series_checkpoints(f"folder-of-checkpoints:{tmp_path}?arch=resnet18")
    with pytest.raises(SettingsError, match="arch"):
        series_checkpoints(f"folder-of-checkpoints:{tmp_path}")
    with pytest.raises(SettingsError, match="does not exist"):
        series_checkpoints(f"folder-of-checkpoints:{tmp_path / 'nope'}?arch=resnet18")


def test_folder_series_respects_allowed_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYSIS_ALLOWED_DIRS", str(tmp_path / "allowed"))
    with pytest.raises(SettingsError, match="outside the folders this server allows"):
        series_checkpoints(f"folder-of-checkpoints:{tmp_path}?arch=resnet18")


def test_corrupt_checkpoint_is_named_and_the_rest_still_analyses(folder, cache_dir, tmp_path, capsys):
    from analysis import cli

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    bad = broken / "step_200.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    spec = f"folder-of-checkpoints:{broken}?{ARCH}"
    table = timeline(spec, DATASET, samples=SAMPLES, cache_dir=cache_dir).table
    assert list(table["step"]) == [10, 200, 3000]
    status = list(table["status"])
    assert status[0] == "ok" and status[2] == "ok"
    assert status[1].startswith("error: step_200.safetensors:") and "not a readable safetensors file" in status[1]
    assert math.isnan(table["mlu"][1]) and all(math.isfinite(table["mlu"][i]) for i in (0, 2))

    import os
    os.environ["ANALYSIS_CACHE_DIR"] = cache_dir
    try:
        code = cli.main(["timeline", "--series", spec, "--dataset", DATASET, "--samples", str(SAMPLES), "--quiet"])
    finally:
        del os.environ["ANALYSIS_CACHE_DIR"]
    out, err = capsys.readouterr()
    assert code == 2 and "step_10.safetensors" in out and "step_3000.safetensors" in out
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert "step_200.safetensors" in err and len(err.strip().splitlines()) == 1


def test_cli_timeline_bad_series_is_one_line(capsys):
    from analysis import cli

    assert cli.main(["timeline", "--series", "folder-of-checkpoints:/no/such/folder?arch=resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err


# ------------------------------------------------------------------------------------------ the story of a timeline
def _table(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["series", "step", "epoch", "mlu", "status"])


def test_reading_names_the_change_when_it_happens_and_a_peak():
    from analysis.timeline_reading import reading

    rows = [("a", s, e, m, "ok") for s, e, m in ((0, 0, 0.15), (10, 0.5, 0.18), (100, 1, 0.20), (1000, 10, 0.21))]
    rows += [("b", s, e, m, "ok") for s, e, m in ((0, 0, 0.15), (10, 0.5, 0.25), (100, 1, 0.20), (1000, 10, 0.17))]
    text = reading(_table(rows), {"a": "supervised", "b": "DINO"})
    assert text == ("From the same initialisation (MLU 15.0 %), supervised rises to 21.0 % (half of it by step 10, "
                    "epoch 0.5) and DINO rises to a peak of 25.0 % (step 10, epoch 0.5), then falls to 17.0 %.")
    # a falling series, a flat one, an error row that is left out, and different starts
    rows = [("c", 0, None, 0.40, "ok"), ("c", 50, None, 0.39, "ok"), ("c", 60, None, 0.99, "error: x"),
            ("c", 500, None, 0.30, "ok"), ("d", 0, None, 0.20, "ok"), ("d", 9, None, 0.202, "ok")]
    assert reading(_table(rows)) == ("Over training, c falls from 40.0 % to 30.0 % (most of it after step 50) and "
                                     "d stays near 20.1 %.")
    assert reading(_table([])) == "No checkpoint has been analysed yet."
    # two points only (a model published before checkpoints were kept): when it changed is not claimed
    rows = [("e", 0, 0, 0.15, "ok"), ("e", 2340, 10, 0.32, "ok")]
    assert reading(_table(rows), {"e": "MAE"}) == ("Over training, MAE rises from 15.0 % to 32.0 % (no checkpoint "
                                                   "between step 0 and step 2,340, epoch 10).")


def test_groups_are_kind_means_whose_weighted_mean_is_the_mlu(folder, cache_dir):
    tl = timeline(f"folder-of-checkpoints:{folder}?{ARCH}", DATASET, samples=SAMPLES, cache_dir=cache_dir)
    groups = tl.groups()
    assert set(groups["kind"]) >= {"attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2"}
    for (_, rows), mlu in zip(groups.groupby("step", sort=True), tl.table.sort_values("step")["mlu"]):
        assert (rows["utilization"] * rows["layers"]).sum() / rows["layers"].sum() == pytest.approx(mlu, abs=1e-12)
    assert tl.reading().startswith("Over training, folder-of-checkpoints:")
