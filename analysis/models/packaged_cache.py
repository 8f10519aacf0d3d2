"""The on-disk cache of converted package weights (``<cache root>/_converted/``).

A converted model ``<name>`` is two files:

* ``<name>.safetensors``: the timm state dict produced by the converter;
* ``<name>.json``: its record: the sha256 of the source file inside the installed package, the sha256 of
  the ``.safetensors`` file, the converter version, the timm architecture and its keyword arguments.

Both are written atomically (a temporary file in the same folder, flushed and fsynced, then
``os.replace``), the safetensors first and the record last, so a reader sees either a complete previous
pair, a complete new pair, or a record whose sha256 does not match its weights. A reader trusts the pair
only when every field of the record matches what the caller expects *and* the sha256 of the weights file
matches the record; anything else (missing, truncated, flipped bytes, another converter version, another
package version) is reported as a reason string, and the caller converts again. A damaged file is never
loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CacheError
from ..paths import cache_root

CONVERTED_FOLDER = "_converted"
RECORD_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ConversionRecord:
    """What ``<name>.json`` holds. ``converted_sha256`` and ``conversion_seconds`` are filled in when written;
    ``notes`` is free text for people (not compared)."""

    name: str
    source_distribution: str
    source_version: str
    source_file: str
    source_sha256: str
    converter_version: str
    arch: str
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    converted_sha256: str = ""
    conversion_seconds: float = 0.0
    notes: str = ""
    format: int = RECORD_FORMAT

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a cached file to be reused (everything but the results)."""
        data = asdict(self)
        data.pop("converted_sha256")
        data.pop("conversion_seconds")
        data.pop("notes")
        data["timm_kwargs"] = _jsonable(data["timm_kwargs"])
        return data


def converted_dir() -> Path:
    """``<cache root>/_converted`` (not created here)."""
    return cache_root() / CONVERTED_FOLDER


def weights_path(name: str) -> Path:
    return converted_dir() / f"{name}.safetensors"


def record_path(name: str) -> Path:
    return converted_dir() / f"{name}.json"


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(expected: ConversionRecord) -> tuple[Path | None, str]:
    """Return ``(path, "")`` when the cached pair for ``expected.name`` can be trusted, else
    ``(None, reason)``. Trusted means: the record parses, its identity fields equal ``expected``'s, and
    the sha256 of the weights file equals the record's ``converted_sha256``."""
    record_file, weights_file = record_path(expected.name), weights_path(expected.name)
    if not record_file.is_file() or not weights_file.is_file():
        return None, "no converted file yet"
    try:
        stored = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"record {record_file.name} is unreadable ({type(exc).__name__})"
    if not isinstance(stored, dict):
        return None, f"record {record_file.name} is not a JSON object"
    for key, value in expected.identity().items():
        if stored.get(key) != value:
            return None, f"record field {key!r} is {stored.get(key)!r}, expected {value!r}"
    recorded = stored.get("converted_sha256")
    try:
        actual = sha256_file(weights_file)
    except OSError as exc:
        return None, f"converted file {weights_file.name} is unreadable ({exc})"
    if actual != recorded:
        return None, f"converted file {weights_file.name} has sha256 {actual[:12]}..., record says {str(recorded)[:12]}..."
    return weights_file, ""


def write_converted(record: ConversionRecord, state: Mapping[str, torch.Tensor], seconds: float) -> Path:
    """Write ``state`` and its record atomically; return the weights path."""
    from safetensors.torch import save_file

    folder = converted_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the converted-weights folder {folder} ({exc}); set ANALYSIS_CACHE_DIR") from None
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    final = weights_path(record.name)
    tmp = _temp_path(folder, final.name)
    try:
        save_file(tensors, str(tmp), metadata={"converter": record.converter_version, "arch": record.arch})
        _fsync(tmp)
        converted_sha = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    data = asdict(record)
    data["timm_kwargs"] = _jsonable(data["timm_kwargs"])
    data["converted_sha256"] = converted_sha
    data["conversion_seconds"] = round(seconds, 3)
    _atomic_write_text(record_path(record.name), json.dumps(data, indent=2, sort_keys=True) + "\n")
    return final


def _temp_path(folder: Path, final_name: str) -> Path:
    handle, name = tempfile.mkstemp(dir=folder, prefix=f".{final_name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(name, 0o644)  # mkstemp makes 0600; the cache may be shared by the app and the CLI
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _temp_path(path.parent, path.name)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Tuples become lists so that a record compares equal after a JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
