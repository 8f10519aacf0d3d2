"""Each model's own preprocessing as a timm-style data config (the dict :mod:`analysis.data.transforms` reads):
``input_size`` ``(C, H, W)``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``.

timm models carry theirs (``resolve_data_config``, :func:`analysis.models.registry.resolve_data_config`); this
module gives the same dict for the other families:

- torchvision: its weights' ``transforms()`` preset (``resize_size``, ``crop_size``, ``mean``, ``std``,
  ``interpolation``) when known, else ImageNet's mean/std, resize to ``input / 0.875`` and centre crop, at the
  model's own ``image_size`` (ViT) or 224;
- Hugging Face ``transformers``: a model folder's ``preprocessor_config.json`` (``image_mean``,
  ``image_std``, ``size``, ``crop_size``, ``do_center_crop``, ``resample``) when there is one, else the
  config's ``image_size`` and ``num_channels`` with the default mean/std of the model type's image processor.
"""

from __future__ import annotations

from typing import Any, Mapping

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HF_DEFAULT_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "vit": (HALF, HALF),  # ViTImageProcessor
    "vit_mae": (IMAGENET_MEAN, IMAGENET_STD),  # ViTImageProcessor as configured by the MAE checkpoints
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),  # BitImageProcessor
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),  # CLIPImageProcessor
    "clip": (CLIP_MEAN, CLIP_STD),
}
"""Mean and std of the image processor each ``model_type`` ships with, for a model given without its
``preprocessor_config.json`` (ImageNet's for any other type)."""

PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""PIL's resample codes (``preprocessor_config.json`` ``resample``) -> timm interpolation names."""


def data_config(input_size: tuple[int, int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                interpolation: str = "bilinear", crop_pct: float = 0.875, crop_mode: str = "center") -> dict:
    """A timm-style data config."""
    channels = int(input_size[0])
    if len(mean) != channels:  # a grey model: one mean/std per channel
        mean, std = (float(mean[0]),) * channels, (float(std[0]),) * channels
    return {"input_size": tuple(int(v) for v in input_size), "mean": tuple(float(v) for v in mean),
            "std": tuple(float(v) for v in std), "interpolation": interpolation, "crop_pct": float(crop_pct),
            "crop_mode": crop_mode}


def torchvision_config(module, preset=None) -> dict:
    """The data config of a torchvision model: from its weights' ``transforms()`` ``preset`` when given, else
    ImageNet's at the model's ``image_size`` (ViT, Swin V2 ...) or 224."""
    if preset is not None:
        crop = _first(getattr(preset, "crop_size", 224))
        resize = _first(getattr(preset, "resize_size", crop))
        interpolation = str(getattr(getattr(preset, "interpolation", None), "value", "bilinear"))
        return data_config((3, crop, crop), getattr(preset, "mean", IMAGENET_MEAN), getattr(preset, "std", IMAGENET_STD),
                           interpolation, crop_pct=crop / resize)
    size = getattr(module, "image_size", None)
    size = int(size) if isinstance(size, int) and not isinstance(size, bool) else 224
    return data_config((3, size, size))


def transformers_config(config, processor: Mapping[str, Any] | None = None) -> dict | None:
    """The data config of a ``transformers`` vision model from its ``config`` (and the folder's
    ``preprocessor_config.json`` as a dict, when there is one); None when the config names no image size."""
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)):
        height, width = int(size[0]), int(size[-1])
    elif isinstance(size, int):
        height = width = size
    else:
        return None
    channels = int(getattr(vision, "num_channels", 3) or 3)
    mean, std = HF_DEFAULT_NORMALIZATION.get(str(getattr(config, "model_type", "")), (IMAGENET_MEAN, IMAGENET_STD))
    interpolation, crop_pct = "bicubic" if mean == CLIP_MEAN else "bilinear", 1.0
    if processor:
        mean = processor.get("image_mean") or mean
        std = processor.get("image_std") or std
        interpolation = PIL_RESAMPLE.get(processor.get("resample"), interpolation)
        crop = _edge(processor.get("crop_size")) if processor.get("do_center_crop") else None
        resize = _edge(processor.get("size"))
        if crop:
            height = width = crop
            crop_pct = crop / resize if resize else 1.0
        elif resize:
            height = width = resize
    return data_config((channels, height, width), mean, std, interpolation, crop_pct=crop_pct)


def _first(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _edge(size) -> int | None:
    """``224``, ``{"height": 224, "width": 224}`` or ``{"shortest_edge": 256}`` -> one edge in pixels."""
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping):
        for key in ("shortest_edge", "height", "width"):
            if isinstance(size.get(key), int):
                return int(size[key])
    return None
