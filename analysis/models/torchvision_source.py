"""``tv:<name>``: torchvision's classification models, offline: at a seeded random initialisation, with weights
from a local file, or with torchvision's own pretrained weights when they are already in the local torch hub
cache (``~/.cache/torch/hub/checkpoints``).

Ids (README, section Command line)::

    tv:resnet18                       random initialisation, seed 0
    tv:vit_b_16?seed=3&image_size=64  other options are passed to the builder (torchvision.models.get_model)
    tv:resnet50?weights=/ckpt/r50.pth a local state dict (.safetensors, or .pth/.pt read with weights_only=True)
    tv:resnet18.IMAGENET1K_V1         torchvision's weights, when the hub cache already holds their file

torchvision's ViT computes attention with ``nn.MultiheadAttention``, whose packed ``in_proj`` (q, k, v) and
``out_proj`` are analysed exactly (:mod:`analysis.capture`); its layers are named
``encoder.layers.encoder_layer_<i>.self_attention.in_proj`` and so on (:class:`TorchvisionViTAdapter`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ModelUnavailableError, UnknownModelError
from .checkpoints import load_into, read_state_dict
from .kinds import Kind
from .layers import ArchitectureAdapter, register_adapter
from .preprocessing import torchvision_config
from .registry import CatalogueEntry, SourceModel, register_source
from .sources import MODEL_INIT, _int_option, _parse_scalar

PREFIX = "tv"


def classification_models() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> str:
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"torchvision has no classification model {name!r}{hint}")
    return name


def _hub_weights(name: str, tag: str):
    """torchvision's pretrained weights ``name.tag`` and the path of their file in the local hub cache."""
    import torchvision.models

    enum = torchvision.models.get_model_weights(name)
    if tag not in enum.__members__:
        raise UnknownModelError(f"torchvision has no weights {tag!r} for {name}; known: {', '.join(enum.__members__)}")
    weights = enum[tag]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.is_file():
        raise ModelUnavailableError(
            f"tv:{name}.{tag} is not in the local torch hub cache ({path}); run once with internet "
            f"(torchvision.models.get_model({name!r}, weights={tag!r})) or pass a local file: "
            f"tv:{name}?weights=<path>"
        )
    return weights, path


class TorchvisionSource:
    """``tv:<name>[.<weights tag>][?seed=N&weights=<path>&<builder option>=<value>...]`` (module docstring)."""

    prefix = PREFIX

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        import torchvision.models

        arch, _, tag = name.partition(".")
        check_name(arch)
        seed = _int_option(options, "seed", 0)
        builder_options = {k: _parse_scalar(v) for k, v in options.items() if k not in ("seed", "weights")}
        preset, source = None, f"random initialisation (seed {seed})"
        with MODEL_INIT, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = torchvision.models.get_model(arch, weights=None, **builder_options)
            except (TypeError, ValueError) as exc:
                raise UnknownModelError(f"torchvision could not build {arch!r} with {builder_options}: {exc}") from None
        if tag:
            weights, path = _hub_weights(arch, tag)
            load_into(model, read_state_dict(path), path.name, f"tv:{arch}")
            preset, source = weights.transforms(), f"torchvision weights {tag}"
        elif "weights" in options:
            from ..restrictions import check_path

            path = check_path(Path(options["weights"]).expanduser(), "checkpoint")
            load_into(model, read_state_dict(path), path.name, f"tv:{arch}")
            source = f"weights from {path.name}"
        return SourceModel(model, f"torchvision {arch}", f"torchvision {arch}, {source}",
                           data_config=torchvision_config(model, preset))

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return [
            CatalogueEntry("tv:resnet18", "torchvision ResNet-18 at random initialisation", "random init"),
            CatalogueEntry("tv:vit_b_16", "torchvision ViT-B/16 at random initialisation", "random init"),
        ]


@register_adapter("torchvision.models.vision_transformer.VisionTransformer")
class TorchvisionViTAdapter(ArchitectureAdapter):
    """torchvision's ViT: blocks ``encoder.layers.encoder_layer_<i>`` (found from structure); in each, ``self_attention`` (an
    ``nn.MultiheadAttention``: its ``in_proj`` and ``out_proj`` follow the generic attention rules) and an
    ``MLPBlock`` (first Linear ``mlp_fc1``, last ``mlp_fc2``); ``heads`` is the classifier."""

    family = "torchvision_vit"

    def classify_extra(self, name: str, module: nn.Module, model: nn.Module) -> str | None:
        if name == "heads" or name.startswith("heads."):
            return Kind.HEAD.value
        parent_name, _, child = name.rpartition(".")
        if parent_name.endswith(".mlp"):
            linears = [n for n, m in model.get_submodule(parent_name).named_children() if isinstance(m, nn.Linear)]
            return (Kind.MLP_FC2 if child == linears[-1] else Kind.MLP_FC1).value
        return None


register_source(TorchvisionSource())
