"""Export of a factorized model as one safetensors file, and how the model registry loads it back.

The file holds the compressed model's whole state dict (thin layers as ``<layer>.reduce.weight``,
``<layer>.expand.weight``/``.bias``) and, in the safetensors metadata (strings only, no pickles):

==========================  ====================================================================
``analysis.format``         ``factorized-v1``
``analysis.base_model``     the model id the compression started from (``zoo:vit-fmnist-supervised``)
``analysis.rank_map``       JSON ``{layer: rank}`` of the factorized layers
``analysis.data_config``    JSON timm-style data config (the base model's preprocessing)
``analysis.class_names``    JSON list of what the classifier outputs mean, or ``null``
``analysis.summary``        JSON of the compression summary (energies, parameters, accuracies)
==========================  ====================================================================

Loading (``file:<path>``; ``?arch=<timm arch>&kwarg=...`` optional): the skeleton is the base model (loaded
through the registry, so zoo and packaged models work offline) or, when ``arch`` is given, that timm
architecture; each layer of the rank map is replaced by an empty thin pair of that rank; then the state
dict is loaded strictly (every key, every shape), so a file that does not fit is refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, SettingsError
from ..models import describe_layers
from ..models.checkpoints import load_into, read_state_dict
from ..models.registry import SourceModel, load as load_registered, register_file_loader
from ..models.sources import timm_skeleton
from .thin_layers import empty_factorized_layer, replace_module

FORMAT = "factorized-v1"


def _metadata(base_model: str, ranks: Mapping[str, int], data_config: Mapping, class_names, summary: Mapping) -> dict:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(data_config).items()}
    return {
        "analysis.format": FORMAT,
        "analysis.base_model": base_model,
        "analysis.rank_map": json.dumps(dict(ranks), sort_keys=True),
        "analysis.data_config": json.dumps(config),
        "analysis.class_names": json.dumps(list(class_names) if class_names else None),
        "analysis.summary": json.dumps(dict(summary), default=str),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def export_bytes(model: nn.Module, base_model: str, ranks: Mapping[str, int], data_config: Mapping,
                 class_names=None, summary: Mapping | None = None) -> bytes:
    """The safetensors file as bytes (for a download button)."""
    from safetensors.torch import save

    return save(_state(model), metadata=_metadata(base_model, ranks, data_config, class_names, summary or {}))


def export_file(model: nn.Module, path: str | Path, base_model: str, ranks: Mapping[str, int], data_config: Mapping,
                class_names=None, summary: Mapping | None = None) -> Path:
    """Write the file atomically (temporary file + rename; a failed write leaves any previous file intact)."""
    from ..cache import atomic_write_bytes

    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"export path {str(path)!r} must end in .safetensors")
    atomic_write_bytes(path, export_bytes(model, base_model, ranks, data_config, class_names, summary))
    rank_path = path.with_suffix(".ranks.json")
    atomic_write_bytes(rank_path, json.dumps({"base_model": base_model, "rank_map": dict(ranks),
                                              "summary": dict(summary or {})}, indent=2, default=str).encode())
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata ({} for none); a non-safetensors or unreadable file gives {}."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # unreadable: read_state_dict reports it properly
        return {}


def is_factorized(metadata: Mapping[str, str]) -> bool:
    return metadata.get("analysis.format") == FORMAT


def apply_rank_map(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """Replace each named layer by an empty thin pair of the given rank (shapes only); each pair records its
    original layer's kind (``factorized_from``), so the compressed model's layers keep their kinds."""
    kinds = {spec.name: spec.kind for spec in describe_layers(model)}
    for name, rank in ranks.items():
        try:
            original = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the rank map names layer {name!r}, which the base model does not have") from None
        if not isinstance(rank, int) or rank < 0:
            raise CheckpointError(f"the rank map gives layer {name!r} an invalid rank {rank!r}")
        replace_module(model, name, empty_factorized_layer(original, rank, kinds.get(name)))
    return model


def parse_metadata(metadata: Mapping[str, str], label: str) -> tuple[str, dict[str, int], dict, list[str] | None]:
    """``(base_model, rank_map, data_config, class_names)`` from a factorized file's metadata."""
    try:
        ranks = json.loads(metadata["analysis.rank_map"])
        config = json.loads(metadata.get("analysis.data_config") or "null")
        names = json.loads(metadata.get("analysis.class_names") or "null")
        base = metadata["analysis.base_model"]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{label}: factorized-model metadata is incomplete or not JSON ({exc})") from None
    if not isinstance(ranks, dict):
        raise CheckpointError(f"{label}: the rank map is not a JSON object")
    if config is not None:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return base, ranks, config, names


def load_factorized(path: Path, options: Mapping[str, str]) -> SourceModel | None:
    """The ``file:`` loader of these exports (registered with the model registry); None for any other file."""
    metadata = read_metadata(path)
    if not is_factorized(metadata):
        return None
    arch = options.get("arch")
    base, ranks, config, class_names = parse_metadata(metadata, path.name)
    state = read_state_dict(path)
    if arch:
        model, label = timm_skeleton(arch, options), arch
    else:
        if base.startswith("file:") and Path(base[5:].split("?", 1)[0]).expanduser().resolve() == path.resolve():
            raise SettingsError(f"{path.name} names itself as its base model")
        base_loaded = load_registered(base)
        model, label = base_loaded.model, base_loaded.arch
        config = config or base_loaded.data_config
        class_names = class_names if class_names is not None else base_loaded.class_names
    apply_rank_map(model, ranks)
    load_into(model, state, path.name, label)
    description = f"{base} factorized at the utilized rank ({len(ranks)} thin layers), weights from {path.name}"
    return SourceModel(model, label, description, config, class_names)


register_file_loader(FORMAT, load_factorized)
