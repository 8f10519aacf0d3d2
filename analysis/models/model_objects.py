"""Models given as objects: any ``torch.nn.Module`` (timm, torchvision, Hugging Face ``transformers``, custom)
analysed like a model id.

:func:`load_object` wraps the module in a :class:`~analysis.models.registry.LoadedModel` without copying or
changing it:

- ``model_id`` ``object:<class>`` (results name it; it cannot be loaded again from the id);
- ``fingerprint`` (the model half of the cache key) = sha256 of the weights' fingerprint (every parameter and
  buffer: name, dtype, shape, bytes), the class's qualified name, the module structure (``repr``: layer sizes,
  activations) and, for ``transformers`` models, the config; so a fine-tuned copy, another class with the same
  weights, or another config each get their own entry. A change to ``forward`` code that changes none of these
  is not seen: pass ``use_cache=False`` after editing a model's code;
- ``data_config``: the model's own preprocessing where it can be read from the object (timm's pretrained
  config, a ``transformers`` config, a torchvision model, see :mod:`analysis.models.preprocessing`), else
  empty (then the data must be an object, or the caller passes ``data_config=``).

:func:`object_session` puts the module in eval mode for the analysis and gives it back afterwards with its
own train/eval flags and on its own device. :func:`prepared` applies what a family needs so that the forward
is the one analysed (registered with :func:`register_preparation`; ViT-MAE's random masking, for example).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, ContextManager, Iterator, Mapping

import torch
from torch import nn

from ..errors import UnknownModelError, UnsupportedModelError
from .layers import analysable_modules
from .preprocessing import torchvision_config, transformers_config
from .registry import LoadedModel, register_source, registered_sources, resolve_data_config, weights_fingerprint

OBJECT_PREFIX = "object"

Preparation = Callable[[nn.Module], "ContextManager | None"]
"""``preparation(module)``: a context manager to hold around the analysis' forward passes of ``module``, or None
when it does not apply to that module."""

_PREPARATIONS: list[Preparation] = []


def register_preparation(preparation: Preparation) -> Preparation:
    _PREPARATIONS.append(preparation)
    return preparation


@contextlib.contextmanager
def prepared(module: nn.Module) -> Iterator[None]:
    """Every registered preparation that applies to ``module``, entered for the duration."""
    with contextlib.ExitStack() as stack:
        for preparation in list(_PREPARATIONS):
            context = preparation(module)
            if context is not None:
                stack.enter_context(context)
        yield


def class_name(module: object) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def object_fingerprint(module: nn.Module) -> str:
    """sha256 of the weights' fingerprint, the class, the structure and the ``transformers`` config (if any)."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    config_text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else ""
    for part in ("model-object-v1", weights_fingerprint(module), class_name(module), repr(module), config_text):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def infer_data_config(module: nn.Module) -> dict:
    """The preprocessing the module itself names (see the module docstring); empty when it names none."""
    if getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None):
        return resolve_data_config(module)  # timm
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        return transformers_config(config) or {}
    if type(module).__module__.startswith("torchvision."):
        return torchvision_config(module)
    return {}


def check_module(module: object) -> nn.Module:
    """``module`` if the tool can analyse it; otherwise one clear error."""
    if not isinstance(module, nn.Module):
        raise UnknownModelError(
            f"the model must be a model id (e.g. random:vit_tiny_patch16_224, tv:resnet18, hf:/path/to/folder) or a "
            f"torch.nn.Module, got an object of type {type(module).__name__}"
        )
    if next(analysable_modules(module), None) is None:
        raise UnsupportedModelError(
            f"{type(module).__qualname__} has no nn.Linear or nn.Conv2d layer: there is nothing to analyse "
            "(the tool measures the subspaces of y = W x + b layers)"
        )
    odd = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()
                  if p.is_floating_point() and p.dtype != torch.float32})
    if odd:
        raise UnsupportedModelError(
            f"{type(module).__qualname__} holds {', '.join(odd)} weights; analyse a float32 copy "
            "(model.float()), with precision='bf16' for a bfloat16 forward pass"
        )
    return module


def load_object(module: nn.Module, data_config: Mapping | None = None) -> LoadedModel:
    """``module`` as a :class:`LoadedModel` (nothing copied or changed; see the module docstring)."""
    registered_sources()  # the families' adapters and preparations (tv:, hf: modules) are registered with them
    module = check_module(module)
    cls = type(module)
    config = getattr(module, "config", None)
    origin = getattr(config, "name_or_path", "") if config is not None else ""
    description = f"{cls.__qualname__} object ({cls.__module__})" + (f", from {origin}" if origin else "")
    return LoadedModel(
        model_id=f"{OBJECT_PREFIX}:{cls.__qualname__}",
        model=module,
        data_config=dict(data_config) if data_config is not None else infer_data_config(module),
        arch=class_name(module),
        description=description,
        fingerprint=object_fingerprint(module),
    )


@contextlib.contextmanager
def object_session(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode for the analysis; afterwards every submodule's train/eval flag and the
    module's device are what they were."""
    flags = [(m, m.training) for m in module.modules()]
    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else None
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in flags:
            submodule.training = training
        if device is not None:
            module.to(device)


class ObjectSource:
    """``object:<class>``: names a model given as an object in the results; it cannot be loaded again."""

    prefix = OBJECT_PREFIX
    offered = False  # not suggested in error messages: no id of it can be loaded

    def load(self, name: str, options: Mapping[str, str]):
        raise UnknownModelError(
            f"object:{name} names a model that was analysed as a Python object; it cannot be loaded from its id "
            "(pass the object to analyze() again)"
        )

    def catalogue(self):
        return []


register_source(ObjectSource())
