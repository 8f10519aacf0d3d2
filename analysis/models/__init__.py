"""Models: one registry of string ids (``timm:``, ``random:``, ``file:``, ``zoo:``, ``pkg:``) and the
per-family adapters that name and classify each model's layers."""

from .layers import LayerSpec, adapter_for, describe_layers, weight_matrix
from .registry import (CatalogueEntry, LoadedModel, ModelId, ModelSource, SourceModel, catalogue, load, load_model,
                       register_source)

__all__ = [
    "CatalogueEntry",
    "LayerSpec",
    "LoadedModel",
    "ModelId",
    "ModelSource",
    "SourceModel",
    "adapter_for",
    "catalogue",
    "describe_layers",
    "load",
    "load_model",
    "register_source",
    "weight_matrix",
]
