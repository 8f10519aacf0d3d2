"""The built-in model sources: ``timm:``, ``random:`` and ``file:``."""

from __future__ import annotations

import difflib
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import ModelUnavailableError, SettingsError, UnknownModelError
from .checkpoints import load_into, read_state_dict
from .registry import CatalogueEntry, SourceModel, file_loaders, register_source


@lru_cache(maxsize=1)
def _timm_architectures() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def check_architecture(arch: str) -> str:
    """Return ``arch`` if timm knows it (tag stripped), else raise with close suggestions."""
    base = arch.split(".", 1)[0]
    if base not in _timm_architectures():
        close = difflib.get_close_matches(base, sorted(_timm_architectures()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"timm has no architecture {base!r}{hint}")
    return base


MODEL_INIT = threading.RLock()
"""Held while any model is built: a build initialises its weights from torch's global RNG, so a seeded build
(``random:``, the zoo) must not share the RNG with another thread's build (the app serves several sessions
from threads); otherwise the seeded weights, and so the cache key, would depend on timing."""


def create_timm(arch: str, **kwargs) -> torch.nn.Module:
    import timm

    check_architecture(arch)
    try:
        with MODEL_INIT:
            return timm.create_model(arch, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UnknownModelError(f"timm could not build {arch!r}: {exc}") from None


class TimmSource:
    """``timm:<name>[.<tag>]``: pretrained weights the normal timm way (hub online, local hub cache offline)."""

    prefix = "timm"

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        import timm

        check_architecture(name)
        if not timm.is_model_pretrained(name) and name not in timm.list_pretrained():
            raise UnknownModelError(
                f"timm has no pretrained weights named {name!r}; tags available: "
                f"{', '.join(timm.list_pretrained(name.split('.')[0] + '*')[:5]) or 'none'}"
            )
        try:
            with MODEL_INIT:
                model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub errors differ by version: connection, offline mode, missing file
            raise ModelUnavailableError(
                f"weights for timm:{name} are not in the local Hugging Face cache and the hub cannot be reached "
                f"({type(exc).__name__}); run once with internet (they are cached under ~/.cache/huggingface), "
                f"or save them and use file:<path>.safetensors?arch={name.split('.')[0]}"
            ) from None
        return SourceModel(model, name, f"timm pretrained weights {name}")

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return [
            CatalogueEntry(f"timm:{name}", f"timm {name} (found in the local Hugging Face cache)", "timm (cached)")
            for name in _locally_cached_timm_weights()
        ]


def _locally_cached_timm_weights() -> list[str]:
    """timm weights already in the local Hugging Face cache (so they work offline)."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    hub = hub.expanduser()
    if not hub.is_dir():
        return []
    names = []
    for entry in sorted(hub.glob("models--timm--*")):
        if any(entry.glob("snapshots/*/*.safetensors")) or any(entry.glob("snapshots/*/*.bin")):
            names.append(entry.name.removeprefix("models--timm--"))
    return names


class RandomSource:
    """``random:<timm arch>[?seed=N&kwarg=value...]``: the architecture at its seeded random initialisation.

    Other options are passed to ``timm.create_model`` (e.g. ``?img_size=32&depth=2`` for a tiny test model).
    """

    prefix = "random"

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        seed = _int_option(options, "seed", 0)
        arch = check_architecture(name)
        extra = {k: _parse_scalar(v) for k, v in options.items() if k != "seed"}
        with MODEL_INIT, torch.random.fork_rng(devices=[]):  # the global RNG: no other build meanwhile
            torch.manual_seed(seed)
            model = create_timm(arch, pretrained=False, **extra)
        return SourceModel(model, arch, f"{arch} at random initialisation (seed {seed})")

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return [
            CatalogueEntry("random:vit_tiny_patch16_224", "ViT-Ti/16 at random initialisation", "random init"),
            CatalogueEntry("random:resnet18", "ResNet-18 at random initialisation", "random init"),
        ]


class FileSource:
    """``file:<path>?arch=<timm arch>``: a local safetensors (preferred) or .pth/.pt state dict."""

    prefix = "file"

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        arch = options.get("arch")
        path = Path(name).expanduser()
        from ..restrictions import check_path

        check_path(path, "checkpoint")
        for loader in file_loaders():  # special formats first (a compressed model's export, ...)
            loaded = loader(path, options)
            if loaded is not None:
                return loaded
        if not arch:
            raise SettingsError(f"file:{name} needs ?arch=<timm architecture>, e.g. file:{name}?arch=vit_small_patch16_224")
        state = read_state_dict(path)
        model = _skeleton_for_state(arch, options, state)
        load_into(model, state, path.name, arch, hint=_num_classes_hint(model, state, options))
        return SourceModel(model, arch, f"{arch} with weights from {path.name}")

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return []


def timm_skeleton(arch: str, options: Mapping[str, str]) -> torch.nn.Module:
    """``arch`` built by timm without weights, the id's other options passed as keyword arguments."""
    return create_timm(arch, pretrained=False, **{k: _parse_scalar(v) for k, v in options.items() if k != "arch"})


def _checkpoint_num_classes(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of the checkpoint's classifier: the first dimension of the weight under the classifier the
    model names (``head.weight``, ``head.fc.weight``, LeViT's ``head.linear.weight``); 0 for a checkpoint
    without any classifier tensor (a headless backbone); None when the model names no classifier."""
    from .layers import classifier_names

    heads = classifier_names(model)
    if not heads:
        return None
    keys = {k.removeprefix("module."): v for k, v in state.items()}
    for head in heads:
        own = model.get_submodule(head)
        for pname, param in own.named_parameters():
            tensor = keys.get(f"{head}.{pname}")
            if tensor is not None and param.dim() >= 2 and tensor.dim() == param.dim():
                return int(tensor.shape[0])
    if not any(k == h or k.startswith(h + ".") for k in keys for h in heads):
        return 0
    return None


def _skeleton_for_state(arch: str, options: Mapping[str, str], state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """``arch`` built to fit ``state``: a fine-tuned checkpoint's classifier size is taken from its weights
    unless the id sets ``num_classes`` itself."""
    model = timm_skeleton(arch, options)
    if "num_classes" in options:
        return model
    found = _checkpoint_num_classes(model, state)
    if found is not None and found != getattr(model, "num_classes", found):
        model = timm_skeleton(arch, {**options, "num_classes": str(found)})
    return model


def _num_classes_hint(model: torch.nn.Module, state: Mapping[str, torch.Tensor], options: Mapping[str, str]) -> str:
    found = _checkpoint_num_classes(model, state)
    if found is not None and found != getattr(model, "num_classes", found):
        return f"the checkpoint's classifier has {found} outputs: use &num_classes={found} in the model id"
    return ""


def _int_option(options: Mapping[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"option {key}={raw!r} must be an integer") from None


def _parse_scalar(text: str) -> object:
    """``?num_classes=10&img_size=28&channels=8,16,32,64`` style options passed on to timm.create_model
    (comma-separated values become tuples)."""
    if "," in text:
        return tuple(_parse_scalar(part) for part in text.split(",") if part)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


for _source in (TimmSource(), RandomSource(), FileSource()):
    register_source(_source)
