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


def create_timm(arch: str, **kwargs) -> torch.nn.Module:
    import timm

    check_architecture(arch)
    try:
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


_SEEDED_INIT = threading.Lock()


class RandomSource:
    """``random:<timm arch>[?seed=N&kwarg=value...]``: the architecture at its seeded random initialisation.

    Other options are passed to ``timm.create_model`` (e.g. ``?img_size=32&depth=2`` for a tiny test model).
    """

    prefix = "random"

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        seed = _int_option(options, "seed", 0)
        arch = check_architecture(name)
        extra = {k: _parse_scalar(v) for k, v in options.items() if k != "seed"}
        with _SEEDED_INIT, torch.random.fork_rng(devices=[]):  # the global RNG: one seeded init at a time
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
        model = timm_skeleton(arch, options)
        load_into(model, state, path.name, arch)
        return SourceModel(model, arch, f"{arch} with weights from {path.name}")

    def catalogue(self) -> Iterable[CatalogueEntry]:
        return []


def timm_skeleton(arch: str, options: Mapping[str, str]) -> torch.nn.Module:
    """``arch`` built by timm without weights, the id's other options passed as keyword arguments."""
    return create_timm(arch, pretrained=False, **{k: _parse_scalar(v) for k, v in options.items() if k != "arch"})


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
