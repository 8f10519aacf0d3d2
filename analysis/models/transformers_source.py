"""Hugging Face ``transformers`` vision models: as objects (``Dinov2Model``, ``ViTMAEModel``, ``ViTModel``,
``CLIPVisionModel``, their ``*ForImageClassification`` forms ...) and as ``hf:<local folder>``.

``hf:<folder>[?class=<transformers class>]`` builds the model offline from the folder's ``config.json`` and
its ``*.safetensors`` weights (never the hub, never pickled ``.bin`` files), with ``AutoModel`` unless
``class`` names another class (``CLIPVisionModel`` for the vision tower of a CLIP folder). Every tensor of the
class must be in the checkpoint: a layer left at random initialisation would be analysed as if trained, so it
is refused. The preprocessing is the folder's ``preprocessor_config.json`` when present
(:func:`analysis.models.preprocessing.transformers_config`). ``transformers`` is an optional dependency
(``pip install .[hf]``); without it ``hf:`` ids say so.

Layers (:class:`TransformersAdapter`): blocks are the repeated layer list, found from structure like any
model's (:mod:`analysis.models.blocks`: ViT's ``layers.<i>`` in transformers 5, DINOv2's ``encoder.layer.<i>``,
CLIP's ``encoder.layers.<i>``); q/k/v by the generic
attention rules; ``*SelfOutput.dense`` (ViT, ViT-MAE, DINOv2) is the attention output, ``*Intermediate.dense``
and the block's ``*Output.dense`` the MLP, ``*MLP.fc1/fc2`` (DINOv2, CLIP) too; the pooler, the projection and
the classifier are head-side (reported, never counted).

**ViT-MAE** masks a random 75 % of the patches in every forward (``config.mask_ratio``), so its statistics
would depend on the random generator and could not be reproduced or cached. Its encoder is analysed as it is
used after pre-training (fine-tuning, linear probing) and as timm's MAE weights are: on every patch, in order
(:func:`every_patch`, registered as a preparation of the forward; the object is given back unchanged).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ModelUnavailableError, SettingsError, UnknownModelError
from .kinds import Kind
from .layers import ArchitectureAdapter, register_adapter
from .model_objects import register_preparation
from .preprocessing import transformers_config
from .registry import CatalogueEntry, SourceModel, register_source
from .sources import MODEL_INIT

PREFIX = "hf"
INSTALL_HINT = "pip install transformers==5.24.0 (or pip install '.[hf]' in the project)"


def import_transformers():
    try:
        import transformers
    except ModuleNotFoundError:
        raise ModelUnavailableError(f"hf: models need the transformers package: {INSTALL_HINT}") from None
    return transformers


def config_text(module: nn.Module) -> str:
    """The model's config as JSON (part of its identity: the forward depends on it, not only on the weights)."""
    config = getattr(module, "config", None)
    return config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else ""


class TransformersSource:
    """``hf:<folder>[?class=<transformers class>]`` (module docstring)."""

    prefix = PREFIX

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        from ..restrictions import check_path

        unknown = sorted(set(options) - {"class"})
        if unknown:
            raise SettingsError(f"hf:{name} takes only the option class=<transformers class>, got {', '.join(unknown)}")
        folder = check_path(Path(name).expanduser(), "model folder")
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(f"hf:{name}: {folder} holds no config.json (a transformers model folder "
                                        "has config.json and model.safetensors)")
        if not any(folder.glob("*.safetensors")):
            raise CheckpointError(f"hf:{name}: {folder} holds no .safetensors weights (pickled .bin files are not "
                                  "read; save the model with save_pretrained(..., safe_serialization=True))")
        transformers = import_transformers()
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        model_class = self._model_class(transformers, config, options.get("class"), name)
        with MODEL_INIT:
            model, info = model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                      output_loading_info=True)
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise CheckpointError(
                f"hf:{name}: {len(missing)} tensors of {type(model).__name__} are not in the checkpoint (first: "
                f"{sorted(missing)[0]}) and would be analysed at random initialisation; choose the class that "
                "matches the checkpoint with ?class=..."
            )
        processor_file = folder / "preprocessor_config.json"
        processor = json.loads(processor_file.read_text()) if processor_file.is_file() else None
        return SourceModel(model, type(model).__name__,
                           f"transformers {type(model).__name__} ({config.model_type}) from {folder.name}",
                           data_config=transformers_config(model.config, processor), identity=config_text(model))

    @staticmethod
    def _model_class(transformers, config, requested: str | None, name: str):
        if requested:
            model_class = getattr(transformers, requested, None)
            if not (inspect.isclass(model_class) and issubclass(model_class, transformers.PreTrainedModel)):
                raise UnknownModelError(f"hf:{name}?class={requested}: transformers has no model class {requested!r}")
            return model_class
        if getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None:
            raise SettingsError(
                f"hf:{name} is a {config.model_type} model with a text and a vision tower; analyse the vision tower "
                f"with hf:{name}?class=<its vision class>, e.g. ?class=CLIPVisionModel"
            )
        return transformers.AutoModel

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return []


# ------------------------------------------------------------------------------------------ layers
HF_VISION_CLASSES = (
    "ViTModel", "ViTForImageClassification", "ViTMAEModel", "ViTMAEForPreTraining", "Dinov2Model",
    "Dinov2ForImageClassification", "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification",
    "CLIPVisionModel", "CLIPVisionModelWithProjection", "DeiTModel", "DeiTForImageClassification",
)
"""The transformers vision classes whose layers :class:`TransformersAdapter` names (any other class follows
the generic rules)."""

_HEAD_SIDE = re.compile(r"^(?:[a-z0-9_]+\.)?(pooler|classifier|visual_projection|distillation_classifier|cls_classifier)"
                        r"(?=\.|$)")


@register_adapter(*HF_VISION_CLASSES)
class TransformersAdapter(ArchitectureAdapter):
    """See the module docstring (layers)."""

    family = "transformers_vit"

    def classify_extra(self, name: str, module: nn.Module, model: nn.Module) -> str | None:
        if _HEAD_SIDE.match(name):
            return Kind.HEAD.value
        parent_name, _, child = name.rpartition(".")
        parent = type(model.get_submodule(parent_name)).__name__ if parent_name else ""
        if parent.endswith("SelfOutput"):
            return Kind.ATTN_PROJ.value
        if parent.endswith("Intermediate"):
            return Kind.MLP_FC1.value
        if parent.endswith("Output"):  # the block's output: the MLP's second Linear
            return Kind.MLP_FC2.value
        if parent.endswith("MLP"):
            linears = [n for n, m in model.get_submodule(parent_name).named_children() if isinstance(m, nn.Linear)]
            return (Kind.MLP_FC2 if child == linears[-1] else Kind.MLP_FC1).value
        return None


# ------------------------------------------------------------------------------------------ ViT-MAE
def _random_masking_embeddings(module: nn.Module) -> list[nn.Module]:
    """Submodules that mask patches at random: a ``random_masking`` method, a ``noise`` argument and a
    config with a positive ``mask_ratio``."""
    found = []
    for submodule in module.modules():
        config = getattr(submodule, "config", None)
        if (callable(getattr(submodule, "random_masking", None)) and float(getattr(config, "mask_ratio", 0) or 0) > 0
                and "noise" in inspect.signature(submodule.forward).parameters):
            found.append(submodule)
    return found


@contextlib.contextmanager
def every_patch(embeddings: list[nn.Module]) -> Iterator[None]:
    """While inside: ``mask_ratio`` 0 and ``noise = 0, 1, 2, ...`` (argsort keeps the order), so every patch
    passes, in order, with no random draw. The configs and hooks are restored on exit."""
    configs = {id(e.config): (e.config, e.config.mask_ratio) for e in embeddings}

    def in_order(submodule, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        patch = submodule.config.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        count = (pixels.shape[-2] // patch_h) * (pixels.shape[-1] // patch_w)
        if kwargs.get("noise") is None:
            kwargs["noise"] = torch.arange(count, device=pixels.device, dtype=torch.float32).expand(pixels.shape[0], -1)
        return args, kwargs

    handles = [e.register_forward_pre_hook(in_order, with_kwargs=True) for e in embeddings]
    for config, _ in configs.values():
        config.mask_ratio = 0.0
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for config, ratio in configs.values():
            config.mask_ratio = ratio


@register_preparation
def _mae_every_patch(module: nn.Module):
    embeddings = _random_masking_embeddings(module)
    return every_patch(embeddings) if embeddings else None


register_source(TransformersSource())
