"""What the Analyze and Compare pages offer, as library functions (pages only draw them):

- the model catalogue grouped and ordered for menus (project zoo first, then package weights, cached timm
  weights, random initialisations, anything else), and the default choice in it;
- which model ids can be tried on this machine (:func:`offered`);
- model and dataset ids built from what a user typed (:func:`checkpoint_model_id`, :func:`path_dataset_id`, the
  latter over the dataset registry's path-taking families);
- a fast check that a ``timm:`` id's pretrained weights can be had (:func:`check_timm_weights`): the local
  Hugging Face cache first, then a short connection probe, instead of timm's own retries (about 50 s offline).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import AnalysisError, ModelUnavailableError
from .models import CatalogueEntry, ModelId

GROUP_ORDER: tuple[str, ...] = ("zoo", "package", "timm", "random")
"""Menu order of catalogue groups: a group whose name contains the first word comes first, and so on."""

CATALOGUE_ONLY_SOURCES: tuple[str, ...] = ("zoo", "pkg", "object")
"""Sources whose models exist only when the catalogue lists them (a zoo model not trained yet is absent;
``object:`` ids name Python objects and are never offered)."""

def path_families() -> dict:
    """Dataset families given by a path (``folder:``, ``cifar10:``...), by the label the Analyze page shows:
    derived from the dataset registry (:func:`analysis.data.registered_families`), never listed here."""
    from .data import registered_families

    return {f.path.label: f for f in registered_families().values() if f.path is not None}

HUB_HOST = ("huggingface.co", 443)
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Group:
    """One menu group: its name and its entries, in catalogue order."""

    name: str
    entries: tuple[CatalogueEntry, ...]


def group_rank(name: str) -> int:
    """Position of a group name in :data:`GROUP_ORDER` (unknown groups last)."""
    lowered = name.lower()
    for i, word in enumerate(GROUP_ORDER):
        if word in lowered:
            return i
    return len(GROUP_ORDER)


def grouped(entries: Iterable[CatalogueEntry]) -> list[Group]:
    """Entries grouped by ``group``, groups in :data:`GROUP_ORDER` (stable for ties), entries in input order."""
    groups: dict[str, list[CatalogueEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    names = sorted(groups, key=group_rank)  # sorted() is stable: first-seen order among equal ranks
    return [Group(name, tuple(groups[name])) for name in names]


def default_index(entries: Sequence[CatalogueEntry], preferred: str) -> int:
    """Index of ``preferred`` (the product's default model) in ``entries``, else 0."""
    ids = [e.model_id for e in entries]
    return ids.index(preferred) if preferred in ids else 0


def offered(model_id: str, known: set[str]) -> bool:
    """Whether ``model_id`` can be tried here: listed in the catalogue (``known``), or from a source that takes
    any name (``random:``, ``timm:``, ``file:``; those report their own error if they cannot load)."""
    if model_id in known:
        return True
    try:
        source = ModelId.parse(model_id).source
    except AnalysisError:
        return False
    return source not in CATALOGUE_ONLY_SOURCES


def options_suffix(raw: str) -> str:
    """Extra ``key=value&...`` options as typed (with or without a leading ``?``/``&``) -> ``&...`` or ``''``."""
    raw = (raw or "").strip().lstrip("?&")
    return f"&{raw}" if raw else ""


def checkpoint_model_id(path: str, arch: str, options: str = "") -> str:
    """``file:<path>?arch=<arch>[&options]`` for a local checkpoint (path and arch must be given)."""
    path, arch = (path or "").strip(), (arch or "").strip()
    if not path or not arch:
        raise AnalysisError("a checkpoint needs both its path and its timm architecture")
    return f"file:{path}?arch={arch}{options_suffix(options)}"


def path_dataset_id(label: str, path: str) -> str:
    """``<family>:<path>`` for the path-taking family shown as ``label`` (e.g. ``folder:/data/x``)."""
    by_label = path_families()
    if label not in by_label:
        raise AnalysisError(f"unknown dataset family {label!r}; one of {', '.join(by_label)}")
    path = (path or "").strip()
    if not path:
        raise AnalysisError(f"give the {label} path")
    return f"{by_label[label].name}:{path}"


def upload_file_name(name: str, digest: str) -> str:
    """A safe, content-addressed file name for an uploaded checkpoint: ``<digest16>-<name>`` with anything
    but letters, digits, ``._-`` replaced by ``_`` (last 80 characters kept)."""
    import re

    return f"{digest[:16]}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[-80:]}"


# ------------------------------------------------------------------------------------------ timm weights
def _hub_cache() -> Path:
    hub = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    return Path(hub).expanduser()


def hub_repo(name: str) -> str | None:
    """The Hugging Face repository timm downloads ``name``'s weights from (None when timm has no hub id)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown to timm: the loader reports it
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def timm_weights_cached(name: str) -> bool:
    """True when ``name``'s weights are in the local Hugging Face cache (safetensors or bin in a snapshot)."""
    repo = hub_repo(name)
    if not repo:
        return False
    folder = _hub_cache() / ("models--" + repo.replace("/", "--"))
    return any(folder.glob("snapshots/*/*.safetensors")) or any(folder.glob("snapshots/*/*.bin"))


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub can be reached now: False at once under ``HF_HUB_OFFLINE=1``, else a TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def check_timm_weights(model_id: str) -> None:
    """For a ``timm:`` id, fail at once when its weights are neither cached locally nor downloadable now.
    Other ids pass (their sources check themselves)."""
    try:
        parsed = ModelId.parse(model_id)
    except AnalysisError:
        return
    if parsed.source != "timm" or timm_weights_cached(parsed.name) or hub_repo(parsed.name) is None:
        return
    if not hub_reachable():
        raise ModelUnavailableError(
            f"weights for timm:{parsed.name} are not in the local Hugging Face cache and the hub cannot be reached; "
            f"run once with internet (they are cached under ~/.cache/huggingface), or save them and use "
            f"file:<path>.safetensors?arch={parsed.name.split('.')[0]}"
        )
