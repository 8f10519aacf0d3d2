"""The project zoo (``zoo:`` source) and its training recipes: one step per recipe, maths, loading, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from analysis.errors import CheckpointError, ModelUnavailableError, UnknownModelError
from analysis.models import registry
from analysis.models.checkpoints import load_into, read_state_dict
from analysis.models.zoo import (ARCH_KWARGS, DATA_CONFIG, MANIFEST_PATH, ZOO_NAMES, ZooSource, build_vit,
                                 read_manifest, sha256_file)
from analysis.training import common, dino, evaluate, mae, random_init, supervised

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The zoo's training steps run on one thread here (as the recipes' tests were written); restored after,
    so the rest of the suite runs with the machine's default (set at import, it leaked into every test)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_architecture_names_and_data_config():
    model = build_vit(seed=0)
    names = dict(model.named_modules())
    for n in ("patch_embed.proj", "head", "blocks.5.attn.qkv", "blocks.5.attn.proj", "blocks.0.mlp.fc1",
              "blocks.0.mlp.fc2"):
        assert n in names
    assert model.pos_embed.shape == (1, 50, ARCH_KWARGS["embed_dim"])
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    assert DATA_CONFIG["input_size"] == (3, 28, 28) and DATA_CONFIG["crop_pct"] == 1.0
    assert DATA_CONFIG["mean"] == (0.2860,) * 3 and DATA_CONFIG["std"] == (0.3530,) * 3
    # seeded init is reproducible and the DINO build (dynamic_img_size) has the same state-dict layout
    a, b = build_vit(seed=3).state_dict(), build_vit(seed=3, dynamic_img_size=True).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", [supervised, mae, dino, random_init], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_recipe_runs_one_step_and_writes_loadable_weights(recipe, tmp_path):
    argv = ["--out", str(tmp_path), "--seed", "0", "--train-limit", "64", "--batch-size", "32", "--epochs", "1",
            "--max-steps", "1", "--threads", "1", "--checkpoint-probe-limit", "0"]
    assert recipe.main(argv) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["seed"] == 0 and "python -m analysis.training." in run["recipe_command"]
    assert run["hyperparameters"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    state = read_state_dict(tmp_path / "model.safetensors")
    load_into(build_vit(), state, "model.safetensors", "zoo")  # strict: the full zoo layout
    if recipe is supervised:
        ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
        assert ckpt["epoch"] == 1 and "optimizer" in ckpt
        assert recipe.main(argv + ["--resume"]) == 0  # nothing left to train; still writes outputs
    if recipe is random_init:
        init = build_vit(seed=0).state_dict()
        assert all(torch.equal(state[k], init[k]) for k in init if not k.startswith("head."))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_recipe_refuses_cuda_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        supervised.main(["--out", str(tmp_path), "--device", "cuda", "--max-steps", "1"])
    assert exc.value.code == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()


def test_augmentations_are_seeded_and_shape_preserving():
    x = common.to_input(torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8))
    assert x.shape == (4, 3, 28, 28)
    a = common.crop_flip(x, torch.Generator().manual_seed(1))
    b = common.crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    c = common.random_resized_crop(x, torch.Generator().manual_seed(2), 16, (0.1, 0.4))
    assert c.shape == (4, 3, 16, 16)
    full = common.random_resized_crop(x, torch.Generator().manual_seed(2), 28, (1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(full, x, atol=1e-5)  # scale 1, ratio 1: the identity crop


def test_schedules():
    assert common.cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert common.cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert common.cosine_lr(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert common.cosine_ramp(0, 10, 0.99, 1.0) == pytest.approx(0.99)
    assert common.cosine_ramp(10, 10, 0.99, 1.0) == pytest.approx(1.0)


def test_mae_loss_is_zero_for_the_normalised_target_and_counts_masked_patches_only():
    grey = torch.rand(2, 28, 28)
    target = mae.patchify_grey(grey)
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    mask = torch.zeros(2, 49)
    mask[:, :37] = 1
    assert mae.mae_loss(norm, grey, mask).item() == pytest.approx(0.0, abs=1e-6)
    wrong_on_visible = norm.clone()
    wrong_on_visible[:, 40:] += 5.0
    assert mae.mae_loss(wrong_on_visible, grey, mask).item() == pytest.approx(0.0, abs=1e-6)
    # patchify order matches the patch embedding's token order (row-major 4x4 patches)
    img = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28)
    assert torch.equal(mae.patchify_grey(img)[0, 1], img[0, 0:4, 4:8].reshape(-1))


def test_dino_loss_ema_and_centre():
    torch.manual_seed(0)
    s = [torch.randn(3, 8) for _ in range(3)]
    t = [torch.randn(3, 8) for _ in range(2)]
    c = torch.randn(1, 8)
    expected = []
    for i in range(2):
        for j in range(3):
            if i != j:
                p = F.softmax((t[i] - c) / 0.05, -1)
                expected.append(-(p * F.log_softmax(s[j] / 0.1, -1)).sum(-1).mean())
    assert dino.dino_loss(s, t, c, 0.1, 0.05).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    dino.ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)


def test_linear_probe_and_knn_on_separable_toy_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    f = F.one_hot(y, 4).float() * 5 + torch.randn(200, 4, generator=g) * 0.3 + 10.0  # offset: tests the folding
    w, b = evaluate.fit_linear_probe(f, y, num_classes=4)
    assert ((f @ w.T + b).argmax(1) == y).float().mean() == 1.0
    assert evaluate.knn_top1(f[:150], y[:150], f[150:], y[150:], k=5, num_classes=4) == 1.0


def _tiny_zoo(tmp_path: Path) -> ZooSource:
    from safetensors.torch import save_file

    save_file(build_vit(seed=1).state_dict(), str(tmp_path / "vit-fmnist-random.safetensors"))
    manifest = {"models": {
        "vit-fmnist-random": {"name": "vit-fmnist-random", "regime": "random", "file": "vit-fmnist-random.safetensors",
                              "recipe_command": "python -m analysis.training.random_init --out zoo_logs/random",
                              "seed": 1, "epochs": 0, "arch_kwargs": ARCH_KWARGS,
                              "sha256": sha256_file(tmp_path / "vit-fmnist-random.safetensors"),
                              "accuracy": {"linear_probe_top1": 0.5}},
        "vit-fmnist-dino": {"name": "vit-fmnist-dino", "regime": "dino", "file": "vit-fmnist-dino.safetensors",
                            "recipe_command": "python -m analysis.training.dino --out zoo_logs/dino --seed 0",
                            "sha256": "0" * 64},
    }}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return ZooSource(tmp_path / "manifest.json")


def test_zoo_source_loads_verifies_and_explains(tmp_path):
    source = _tiny_zoo(tmp_path)
    loaded = source.load("vit-fmnist-random", {})
    assert loaded.data_config == DATA_CONFIG and "random" in loaded.description
    # the head's outputs are Fashion-MNIST's
    assert loaded.class_names[0] == "T-shirt/top" and len(loaded.class_names) == 10
    ref = build_vit(seed=1).state_dict()
    assert all(torch.equal(loaded.module.state_dict()[k], ref[k]) for k in ref)
    assert [e.model_id for e in source.catalogue()] == ["zoo:vit-fmnist-random"]
    with pytest.raises(UnknownModelError, match="vit-fmnist-random"):
        source.load("vit-fmnist-nope", {})
    with pytest.raises(ModelUnavailableError, match="python -m analysis.training.dino"):
        source.load("vit-fmnist-dino", {})
    path = tmp_path / "vit-fmnist-random.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        source.load("vit-fmnist-random", {})


def test_registry_knows_the_zoo():
    assert "zoo" in registry.registered_sources()
    with pytest.raises(UnknownModelError, match="zoo"):
        registry.load("zoo:no-such-model")
    manifest = read_manifest()
    assert set(ZOO_NAMES) <= set(manifest["models"]), "run python -m analysis.training.publish"
    for name, entry in manifest["models"].items():
        present = bool(entry.get("sha256")) and (MANIFEST_PATH.parent / entry["file"]).is_file()
        if not present:
            with pytest.raises(ModelUnavailableError, match=r"python -m analysis\.training\."):
                registry.load(f"zoo:{name}")
        else:
            assert (MANIFEST_PATH.parent / entry["file"]).stat().st_size < 10 * 2**20
            assert f"zoo:{name}" in [e.model_id for e in registry.catalogue()]
            loaded = registry.load(f"zoo:{name}")  # verifies the sha256 of the committed file
            assert loaded.data_config == DATA_CONFIG and loaded.arch == "vit_fmnist_p4_d96"


def test_published_supervised_top1_matches_manifest():
    entry = read_manifest()["models"].get("vit-fmnist-supervised") or {}
    if not entry.get("sha256") or not (MANIFEST_PATH.parent / entry["file"]).is_file():
        pytest.skip("vit-fmnist-supervised is not published yet")
    model, data_config = registry.load_model("zoo:vit-fmnist-supervised")  # verifies sha256
    assert data_config == DATA_CONFIG
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        acc = evaluate.top1(model, common.load_split("test"))
    finally:
        torch.set_num_threads(previous)
    assert acc == pytest.approx(entry["accuracy"]["top1"], abs=0.005)


def test_readme_zoo_table_matches_a_fresh_regeneration():
    """Every number in the README's zoo table comes from the manifest and a real engine run."""
    from analysis.training import zoo_table

    readme = zoo_table.README.read_text()
    assert zoo_table.START in readme and zoo_table.END in readme
    current = readme.split(zoo_table.START, 1)[1].split(zoo_table.END, 1)[0].strip()
    assert current == zoo_table.render().strip()
