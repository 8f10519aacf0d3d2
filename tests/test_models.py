"""Model registry and adapters: layer naming and kinds, and safe, specific checkpoint errors."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch

from analysis.errors import CheckpointError, SettingsError, UnknownModelError
from analysis.models import describe_layers, load

from .helpers import save_tiny_vit_checkpoint


def test_resnet_blocks_are_numbered_in_depth_order_and_stem_and_head_flagged():
    model = timm.create_model("resnet18", channels=(8, 16, 32, 64), stem_width=8)
    specs = describe_layers(model)
    assert specs[0].name == "conv1" and specs[0].kind == "patch_embed" and not specs[0].in_mlu
    assert specs[-1].name == "fc" and specs[-1].kind == "head" and not specs[-1].in_mlu
    blocks = [s.block for s in specs[1:-1]]
    assert blocks == sorted(blocks) and blocks[0] == 0 and blocks[-1] == 7
    conv = next(s for s in specs if s.name == "layer2.0.conv1")
    assert conv.kind == "conv" and conv.d_in == 8 * 9 and conv.d_out == 16


def test_vit_layers_follow_transformerlens_style_names():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2)
    kinds = {s.name: s.kind for s in describe_layers(model)}
    assert kinds["blocks.1.attn.qkv"] == "attn_qkv" and kinds["blocks.1.mlp.fc2"] == "mlp_fc2"
    assert kinds["patch_embed.proj"] == "patch_embed" and kinds["head"] == "head"


def test_checkpoint_for_another_architecture_is_explained(tmp_path):
    model_id = save_tiny_vit_checkpoint(tmp_path / "vit.safetensors")
    path = model_id.split(":", 1)[1].split("?", 1)[0]
    with pytest.raises(CheckpointError, match="does not fit architecture 'resnet18'"):
        load(f"file:{path}?arch=resnet18")
    with pytest.raises(SettingsError, match=r"needs \?arch="):
        load(f"file:{path}")


def test_truncated_safetensors_is_refused(tmp_path):
    model_id = save_tiny_vit_checkpoint(tmp_path / "vit.safetensors")
    path = tmp_path / "vit.safetensors"
    path.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(model_id)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_RunsCode.marker}",))


def test_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    _RunsCode.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _RunsCode()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load(f"file:{path}?arch=resnet18")
    assert not _RunsCode.marker.exists()


def test_pth_state_dict_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", channels=(8, 16, 32, 64), stem_width=8, num_classes=3)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "r.pth")
    loaded = load(f"file:{tmp_path / 'r.pth'}?arch=resnet18&channels=8,16,32,64&stem_width=8&num_classes=3")
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)


def test_unknown_ids_are_specific():
    with pytest.raises(UnknownModelError, match="no source prefix"):
        load("resnet18")
    with pytest.raises(UnknownModelError, match="did you mean"):
        load("random:resnet181")


def test_fine_tuned_checkpoint_with_another_number_of_classes_loads_without_options(tmp_path):
    """A checkpoint fine-tuned to 7 classes loads as ``file:...?arch=resnet18`` (num_classes from the classifier's
    weight); an explicit wrong num_classes is explained with the option to use."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    loaded = load(f"file:{tmp_path / 'ft.pth'}?arch=resnet18")
    assert loaded.model.fc.out_features == 7 and torch.equal(loaded.model.fc.weight, model.fc.weight)
    with pytest.raises(CheckpointError, match=r"classifier has 7 outputs: use &num_classes=7"):
        load(f"file:{tmp_path / 'ft.pth'}?arch=resnet18&num_classes=3")


def test_distilled_vit_checkpoint_infers_both_heads(tmp_path):
    from safetensors.torch import save_file

    options = "img_size=32&patch_size=8&depth=1&embed_dim=48&num_heads=2"
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=48,
                              num_heads=2, num_classes=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "d.safetensors"))
    loaded = load(f"file:{tmp_path / 'd.safetensors'}?arch=deit_tiny_distilled_patch16_224&{options}")
    kinds = {s.name: s.kind for s in describe_layers(loaded.model)}
    assert loaded.model.head.out_features == 4 and kinds["head"] == kinds["head_dist"] == "head"


def test_heads_come_from_the_model_for_levit_and_efficientformer():
    """LeViT's heads are BN+Linear modules (``head.linear``, ``head_dist.linear``); EfficientFormer's are
    ``head`` and ``head_dist``: all found through ``get_classifier()`` / ``pretrained_cfg['classifier']``."""
    for arch, expected in (("levit_128s", {"head.linear", "head_dist.linear"}),
                           ("efficientformer_l1", {"head", "head_dist"})):
        specs = describe_layers(timm.create_model(arch, num_classes=3))
        assert {s.name for s in specs if s.kind == "head"} == expected
        assert not any(s.in_mlu for s in specs if s.kind == "head")


def test_layer_kinds_have_one_source():
    """Every kind has a label, an order and an MLU flag in analysis.models.kinds; the charts only add colours."""
    from analysis.models.kinds import FLAGGED_KINDS, KIND_NAMES, Kind, kind_label, kinds_in_order
    from analysis.models.layers import LayerSpec
    from ui import charts

    assert set(charts.KIND_COLORS) == set(KIND_NAMES)
    assert charts.kind_label("attn_qkv") == kind_label("attn_qkv") == Kind.ATTN_QKV.label
    assert kinds_in_order(["head", "mlp_fc1", "patch_embed", "zzz"]) == ["patch_embed", "mlp_fc1", "head", "zzz"]
    assert FLAGGED_KINDS == {"patch_embed", "pos_embed", "head_side", "head"}
    spec = LayerSpec("x", "grouped_conv", None, torch.nn.Identity(), 4, 4, False)
    assert not spec.applicable and not spec.in_mlu
    assert LayerSpec("x", "class_attn_qkv", 0, torch.nn.Identity(), 4, 4, False).in_mlu
    assert not LayerSpec("x", "class_attn_qkv", None, torch.nn.Identity(), 4, 4, False).in_mlu  # outside blocks


def test_a_registered_source_returns_one_typed_model(monkeypatch):
    from analysis.models import registry
    from analysis.models.registry import CatalogueEntry, SourceModel

    class Tiny:
        prefix = "tiny"

        def load(self, name, options):
            torch.manual_seed(int(options.get("seed", 0)))
            return SourceModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, int(name))), "mlp",
                               f"a {name}-way MLP", data_config={"input_size": (3, 2, 2)}, class_names=None)

        def catalogue(self):
            return [CatalogueEntry("tiny:3", "a 3-way MLP", "tests")]

    registry.catalogue()  # the built-in sources first, so the patched dict holds them
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    registry.register_source(Tiny())
    loaded = load("tiny:3?seed=1")
    assert loaded.arch == "mlp" and loaded.data_config == {"input_size": (3, 2, 2)} and loaded.class_names is None
    assert loaded.model.training is False and not any(p.requires_grad for p in loaded.model.parameters())
    assert [s.d_out for s in describe_layers(loaded.model)] == [3]
    assert "tiny:3" in {e.model_id for e in registry.catalogue()}

    class Untyped(Tiny):
        prefix = "untyped"

        def load(self, name, options):
            return tuple(vars(super().load(name, options)).values())

    registry.register_source(Untyped())
    with pytest.raises(TypeError, match="not a SourceModel"):
        load("untyped:3")


def test_seeded_random_weights_do_not_depend_on_other_threads_building_models(tmp_path):
    """The app serves sessions from threads: a ``random:`` build must get its seeded weights even while
    other threads build models (which draw from the same global RNG) at the same time."""
    import threading

    from analysis.models import load
    from tests.helpers import TINY_VIT, save_tiny_vit_checkpoint

    expected = load(TINY_VIT).fingerprint
    checkpoint = save_tiny_vit_checkpoint(tmp_path / "tiny.safetensors")
    seen: list[str] = []
    errors: list[BaseException] = []

    def seeded() -> None:
        try:
            for _ in range(3):
                seen.append(load(TINY_VIT).fingerprint)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def unseeded() -> None:
        try:
            for _ in range(3):
                load(checkpoint)  # builds the architecture at an unseeded init, then loads the file
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (seeded, unseeded, seeded, unseeded)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert seen == [expected] * 6
