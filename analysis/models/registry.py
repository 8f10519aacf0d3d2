"""One registry for every model id the product accepts.

A model id is ``<source>:<name>[?key=value&...]`` (README, section Command line), for example
``timm:vit_base_patch16_224.dino``, ``random:vit_tiny_patch16_224?seed=3``,
``file:/ckpt/model.safetensors?arch=vit_small_patch16_224``, ``zoo:vit-fmnist-supervised`` or
``pkg:efficientnet-lite0-in1k``. Each source is a small :class:`ModelSource` object registered under its
prefix; new sources (the offline zoo, package-shipped weights) plug in with :func:`register_source`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol
from urllib.parse import parse_qsl

import torch
from torch import nn

from ..errors import UnknownModelError
from ..plugins import ImportOnce


@dataclass(frozen=True)
class ModelId:
    """A parsed model id: ``source:name?options``."""

    source: str
    name: str
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "ModelId":
        if not isinstance(text, str) or ":" not in text:
            raise UnknownModelError(
                f"model id {text!r} has no source prefix; use one of "
                f"{', '.join(p + ':' for p in sorted(_SOURCES) if getattr(_SOURCES[p], 'offered', True))} "
                "(for example timm:vit_tiny_patch16_224)"
            )
        source, _, rest = text.partition(":")
        name, sep, query = rest.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if sep else {}
        if not name:
            raise UnknownModelError(f"model id {text!r} names no model after '{source}:'")
        return cls(source=source.strip().lower(), name=name.strip(), options=options)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.source}:{self.name}" + (f"?{query}" if query else "")


@dataclass
class LoadedModel:
    """A model ready for analysis.

    ``model`` is in eval mode on the CPU; ``data_config`` is a timm-style data config
    (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``);
    ``fingerprint`` is the sha256 of the weights (names, shapes, dtypes and bytes of the state dict);
    ``description`` says honestly where the weights come from.
    """

    model_id: str
    model: nn.Module
    data_config: dict
    arch: str
    description: str
    fingerprint: str
    class_names: list[str] | None = None
    """What each output of the classifier means, when known (zoo: Fashion-MNIST classes; 1000-way
    timm/packaged classifiers: ImageNet-1k WordNet ids, e.g. ``n02123045``); None otherwise."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One model a source can offer right now (for menus and ``analysis list models``)."""

    model_id: str
    description: str
    group: str


@dataclass
class SourceModel:
    """What a :class:`ModelSource` loads: the module (any dtype, any mode: the registry makes it float32 and
    eval), the architecture name, an honest description of the weights, and optionally the preprocessing
    (timm-style ``data_config``) and what each classifier output means (``class_names``). A None
    ``data_config`` is resolved from the module (timm); None ``class_names`` become ImageNet-1k's for a
    1000-way classifier, else stay None. ``identity``: see the field."""

    module: nn.Module
    arch: str
    description: str
    data_config: dict | None = None
    class_names: list[str] | None = None
    identity: str = ""
    """What else, beside the weights, decides the forward (a ``transformers`` config): mixed into the
    fingerprint when not empty."""


class ModelSource(Protocol):
    """What a model source provides: ``load`` the model ``<prefix>:<name>?<options>`` and the ``catalogue`` of
    ids it can offer on this machine now."""

    prefix: str

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel: ...

    def catalogue(self) -> Iterable[CatalogueEntry]: ...


_SOURCES: dict[str, ModelSource] = {}

FileLoader = Callable[[Path, Mapping[str, str]], "SourceModel | None"]
"""A loader of one special checkpoint format behind ``file:``: ``loader(path, options)`` returns the model, or
None when the file is not in its format (then the next loader, finally the plain state-dict loader, runs)."""

_FILE_LOADERS: dict[str, FileLoader] = {}


def register_file_loader(name: str, loader: FileLoader) -> FileLoader:
    """Register (or replace) the ``file:`` loader called ``name`` (e.g. ``factorized-v1``, registered by
    :mod:`analysis.compression` for its exports, so this package never imports that one)."""
    _FILE_LOADERS[name] = loader
    return loader


def file_loaders() -> list[FileLoader]:
    return list(_FILE_LOADERS.values())


def register_source(source: ModelSource) -> ModelSource:
    """Register (or replace) the source for ``source.prefix``."""
    _SOURCES[source.prefix] = source
    return source


def registered_sources() -> dict[str, ModelSource]:
    _ensure_builtin_sources()
    return dict(_SOURCES)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer: name, dtype, shape and raw bytes, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_data_config(model: nn.Module) -> dict:
    """The model's own preprocessing (timm ``resolve_data_config``), as a plain dict."""
    from timm.data import resolve_data_config as timm_resolve

    config = dict(timm_resolve({}, model=model))
    # a ViT built with another img_size keeps its pretrained config's size: the patch grid is the truth
    named = ("patch_embed", "stem", "pixel_embed")  # ViTs; MLP-Mixer/ResMLP's stem; TNT's pixel embedding
    embeds = [getattr(model, attr, None) for attr in named]
    embeds += [m for _, m in model.named_modules() if hasattr(m, "img_size")]  # else the first that has one (CoaT)
    for embed in embeds:
        img_size = getattr(embed, "img_size", None)
        if img_size is not None and not getattr(embed, "dynamic_img_size", False):
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            config["input_size"] = (config["input_size"][0], *size)
            break
    return config


def load(model_id: str) -> LoadedModel:
    """Load ``model_id`` into a :class:`LoadedModel` (eval mode, CPU, float32)."""
    _ensure_builtin_sources()
    parsed = ModelId.parse(model_id)
    source = _SOURCES.get(parsed.source)
    if source is None:
        raise UnknownModelError(
            f"unknown model source {parsed.source!r} in {model_id!r}; known sources: "
            f"{', '.join(sorted(_SOURCES))}"
        )
    loaded = source.load(parsed.name, parsed.options)
    if not isinstance(loaded, SourceModel):
        raise TypeError(f"model source {parsed.source!r} returned {type(loaded).__name__}, not a SourceModel")
    module = loaded.module
    data_config = loaded.data_config if loaded.data_config is not None else resolve_data_config(module)
    class_names = loaded.class_names if loaded.class_names is not None else _default_class_names(module)
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(
        model_id=str(parsed),
        model=module,
        data_config=data_config,
        arch=loaded.arch,
        description=loaded.description,
        fingerprint=_fingerprint(module, loaded.identity),
        class_names=class_names,
    )


def _fingerprint(module: nn.Module, identity: str) -> str:
    """The weights' fingerprint, or with a source's ``identity``: sha256 of both."""
    weights = weights_fingerprint(module)
    if not identity:
        return weights
    return hashlib.sha256(f"{weights}\n{identity}".encode()).hexdigest()


def _default_class_names(model: nn.Module) -> list[str] | None:
    """A 1000-way classifier is taken to be ImageNet-1k's (timm's class order: sorted WordNet ids)."""
    if getattr(model, "num_classes", None) != 1000:
        return None
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def load_model(model_id: str) -> tuple[nn.Module, dict]:
    """Public API: ``model, data_config = load_model("timm:...")`` (eval mode, timm-style data config)."""
    loaded = load(model_id)
    return loaded.model, loaded.data_config


def catalogue() -> list[CatalogueEntry]:
    """Every model the registered sources can offer on this machine now."""
    _ensure_builtin_sources()
    entries: list[CatalogueEntry] = []
    for source in _SOURCES.values():
        entries.extend(source.catalogue())
    return entries


_BUILTIN_MODULES: list[str] = ["sources", "model_objects"]
OPTIONAL_SOURCE_MODULES: list[str] = ["zoo", "packaged", "torchvision_source", "transformers_source"]
"""Modules inside ``analysis.models`` that register more sources when present (``zoo:``, ``pkg:``, ``tv:``,
``hf:``)."""

_ensure_builtin_sources = ImportOnce(__package__, _BUILTIN_MODULES, OPTIONAL_SOURCE_MODULES)
"""Import the modules that register sources, once, safely from several threads (the app's)."""
