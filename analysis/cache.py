"""On-disk result cache: one folder per content key, published atomically, validated on every read.

Layout of an entry ``<cache root>/<key>/``::

    manifest.json      schema version, key parts, meta, per-layer metadata, sha256 of every file (written last)
    spectra.npz        per-layer arrays (eigenvalues, singular values, preservation-error grid); no pickles
    layers.parquet     the per-layer table at the analysis energies (for export; the Result rebuilds it)
    layers.csv         the same table as CSV
    moments.safetensors  optional raw statistics (C_in, s, N per layer) when ``keep_moments`` is set

An entry is written into ``<root>/.staging/<key>-<random>/`` and then renamed into place, so a reader sees
either the previous complete entry or the new complete one, never a half-written one; a crash leaves only
a staging folder, which is ignored. An entry whose manifest is missing, unparsable, of another schema, or
whose files do not match their recorded sha256 is treated as absent (and recomputed by the engine).

A key the cache does not hold may be one of the entries shipped with the repository for the demo
(:mod:`analysis.demo_results`): it is then copied in on first use and validated like any other entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .defaults import DEFAULT_ENERGY
from .demo_results import SEED_ROOT, seed_entry
from .errors import CacheError
from .meta import ResultMeta
from .paths import cache_root
from .result import LayerSpectrum, Result, WPRIME_ENERGIES

SCHEMA_VERSION = 3
"""3: which layers count comes from the model's blocks (stem, head-side), the statuses fixed input, zero input
and zero output, and k undefined for them: entries of schema 2 counted other layers and are recomputed."""
KEY_PATTERN = re.compile(r"^[0-9a-f]{24}$")
ENTRY_FILES = ("spectra.npz", "layers.parquet", "layers.csv")


@dataclass(frozen=True)
class CacheEntry:
    """What a listing shows of one intact entry, read from its manifest alone (no arrays)."""

    key: str
    created: float
    meta: ResultMeta
    energy_in: float
    energy_out: float
    n_layers: int
    n_not_applicable: int


def content_key(parts: dict) -> str:
    """24 hex digits of the sha256 of the canonical JSON of ``parts`` (plus the schema version)."""
    canonical = json.dumps({"schema": SCHEMA_VERSION, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def check_key(key: str) -> str:
    """Reject anything that is not a bare key (no path can escape the cache folder)."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise CacheError(f"{key!r} is not a cache key (24 lowercase hex digits)")
    return key


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


RECENT_NS = 2_000_000_000
"""A file changed less than this long ago (ns) is hashed every time: the kernel's file times advance by a
clock tick, so two writes within one tick can leave the same times."""


@functools.lru_cache(maxsize=4096)
def _digest_of_version(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return file_sha256(Path(path))


def stored_file_sha256(path: Path) -> str:
    """:func:`file_sha256` of a stored file, hashed once per version of the file in this process: a version is
    its inode, size, modification and change times (a rewrite, a rename over it, a truncation or a copy all
    make a new one; ``ctime`` cannot be set back by ``utime``). Listing the cache re-hashed every entry's
    files on every page run, 27 MB for the shipped entries alone, while twenty sessions waited on the server
    (issue 23)."""
    info = os.stat(path)
    if time.time_ns() - info.st_ctime_ns < RECENT_NS:  # file times tick coarsely: a change may not show yet
        return file_sha256(path)
    return _digest_of_version(str(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultCache:
    """The cache folder. ``root`` defaults to :func:`analysis.paths.cache_root`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else cache_root()

    def entry_dir(self, key: str) -> Path:
        return self.root / check_key(key)

    # ----------------------------------------------------------------------------------------- reading
    def manifest(self, key: str) -> dict | None:
        """The manifest of a complete, intact entry, else None.

        Its ``meta`` must read as a :class:`ResultMeta` (unknown keys are ignored, missing ones take their
        defaults); a malformed one makes the entry absent."""
        folder = self.entry_dir(key)
        if not (folder / "manifest.json").exists():
            self._adopt_seed(key)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION or manifest.get("key") != key:
            return None
        files = manifest.get("files", {})
        if not all(name in files for name in ENTRY_FILES):
            return None
        try:
            ResultMeta.from_dict(manifest.get("meta"))
        except ValueError:
            return None
        for name, digest in files.items():
            try:
                if stored_file_sha256(folder / name) != digest:
                    return None
            except OSError:
                return None
        return manifest

    def _adopt_seed(self, key: str) -> None:
        """Copy the shipped demo entry ``key`` into this cache, if there is a current one (atomic, like
        :meth:`store`); the caller then validates it. A cache that cannot be written simply stays without it."""
        if self.root == SEED_ROOT:
            return
        seed = seed_entry(key)
        if seed is None:
            return
        staging = self.root / ".staging" / f"{key}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(seed, staging)
            if not (self.root / key / "manifest.json").exists():
                self._publish(staging, self.root / key)
        except OSError:
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def entry(self, key: str) -> CacheEntry | None:
        """The listing of an intact entry, else None."""
        manifest = self.manifest(key)
        return None if manifest is None else _entry_from_manifest(manifest)

    def has(self, key: str) -> bool:
        return self.manifest(key) is not None

    def load(self, key: str) -> Result | None:
        """The stored result, or None when the entry is absent, partial or damaged."""
        manifest = self.manifest(key)
        if manifest is None:
            return None
        try:
            with np.load(self.entry_dir(key) / "spectra.npz", allow_pickle=False) as arrays:
                spectra = [_spectrum_from_arrays(i, info, arrays) for i, info in enumerate(manifest["layers"])]
        except (OSError, ValueError, KeyError):
            return None
        return Result(
            meta=ResultMeta.from_dict(manifest["meta"]),
            spectra=spectra,
            not_applicable=manifest.get("not_applicable", []),
            energy_in=manifest["energy_in"],
            energy_out=manifest["energy_out"],
        )

    def load_moments(self, key: str) -> dict | None:
        """The raw statistics of an intact entry stored with ``keep_moments`` (``{"<layer>|C_in": ...}``),
        else None (no moments stored, or the entry is damaged: the manifest check covers this file too)."""
        manifest = self.manifest(key)
        if manifest is None or "moments.safetensors" not in manifest.get("files", {}):
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(self.entry_dir(key) / "moments.safetensors"), device="cpu")
        except Exception:  # removed between the check and the read, or unreadable: treat as absent
            return None

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and KEY_PATTERN.fullmatch(p.name))

    def entries(self) -> Iterator[CacheEntry]:
        """Every intact entry, newest first."""
        entries = [e for e in (self.entry(k) for k in self.keys()) if e is not None]
        yield from sorted(entries, key=lambda e: e.created, reverse=True)

    def resolve(self, prefix: str) -> str:
        """A full key from a unique prefix (as users type in the CLI)."""
        if not re.fullmatch(r"[0-9a-f]{1,24}", prefix or ""):
            raise CacheError(f"{prefix!r} is not a cache key or key prefix (hex digits)")
        matches = [k for k in self.keys() if k.startswith(prefix)]
        if not matches:
            raise CacheError(f"no cached analysis with key {prefix!r}; see `python -m analysis list cache`")
        if len(matches) > 1:
            raise CacheError(f"key prefix {prefix!r} is ambiguous ({len(matches)} entries); type more digits")
        return matches[0]

    # ----------------------------------------------------------------------------------------- writing
    def check_writable(self) -> None:
        """Fail early (before a long computation) when the cache folder cannot take a new entry."""
        try:
            staging = self.root / ".staging"
            staging.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=staging, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CacheError(f"cache folder {str(self.root)!r} is not writable ({exc.strerror or exc}); "
                             f"set ANALYSIS_CACHE_DIR to a writable folder") from None

    def store(self, key: str, result: Result, moments: dict | None = None) -> Path:
        """Write ``result`` (and optional raw moments) as entry ``key``, atomically replacing any old one."""
        check_key(key)
        try:
            staging = self.root / ".staging" / f"{key}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
        except OSError as exc:
            raise CacheError(f"cache folder {str(self.root)!r} is not writable ({exc.strerror or exc})") from None
        try:
            files = _write_entry_files(staging, result, moments)
            manifest = {
                "schema": SCHEMA_VERSION,
                "key": key,
                "created": time.time(),
                "meta": result.meta.to_dict(),
                "energy_in": result.energy_in,
                "energy_out": result.energy_out,
                "layers": [_layer_info(s) for s in result.spectra],
                "not_applicable": result.not_applicable,
                "files": {name: file_sha256(staging / name) for name in files},
            }
            atomic_write_bytes(staging / "manifest.json", json.dumps(manifest, indent=1, default=_json_default).encode())
            self._publish(staging, self.root / key)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise CacheError(f"could not write cache entry {key} ({exc.strerror or exc}); previous results untouched") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.root / key

    def _publish(self, staging: Path, target: Path) -> None:
        """Swap ``staging`` into ``target``: the old entry is moved aside first, then removed."""
        trash = None
        if target.exists():
            trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
        os.replace(staging, target)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def delete(self, key: str) -> bool:
        """Remove an entry (moved aside atomically, then deleted). True if something was removed."""
        folder = self.entry_dir(key)
        if not folder.exists():
            return False
        trash = folder.with_name(f".trash-{key}-{uuid.uuid4().hex[:8]}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


def _entry_from_manifest(manifest: dict) -> CacheEntry:
    created = manifest.get("created", 0.0)
    return CacheEntry(
        key=manifest["key"],
        created=float(created) if isinstance(created, (int, float)) else 0.0,
        meta=ResultMeta.from_dict(manifest["meta"]),
        energy_in=manifest.get("energy_in", DEFAULT_ENERGY),
        energy_out=manifest.get("energy_out", DEFAULT_ENERGY),
        n_layers=len(manifest.get("layers", [])),
        n_not_applicable=len(manifest.get("not_applicable", [])),
    )


def _layer_info(spectrum: LayerSpectrum) -> dict:
    return {
        "name": spectrum.name,
        "kind": spectrum.kind,
        "block": spectrum.block,
        "block_label": spectrum.block_label,
        "d_in": spectrum.d_in,
        "d_out": spectrum.d_out,
        "has_bias": spectrum.has_bias,
        "in_mlu": spectrum.in_mlu,
        "n_samples": spectrum.n_samples,
        "status": spectrum.status,
        "status_reason": spectrum.status_reason,
        "tokens": spectrum.tokens,
    }


def _write_entry_files(folder: Path, result: Result, moments: dict | None) -> list[str]:
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(result.spectra):
        arrays[f"{i}|eig_in"] = s.eig_in
        arrays[f"{i}|eig_out"] = s.eig_out
        arrays[f"{i}|w_singular"] = s.w_singular
        arrays[f"{i}|pres_k_out"] = s.pres_k_out
        arrays[f"{i}|pres_k_in"] = s.pres_k_in
        arrays[f"{i}|pres_error"] = s.pres_error
        for energy, values in s.wprime_singular.items():
            arrays[f"{i}|wprime|{energy!r}"] = values
        for name, values in s.extras.items():
            arrays[f"{i}|x|{name}"] = np.asarray(values)
    with open(folder / "spectra.npz", "wb") as fh:
        np.savez(fh, **arrays)
    table = result.layers
    table.to_parquet(folder / "layers.parquet", index=False)
    table.to_csv(folder / "layers.csv", index=False)
    files = list(ENTRY_FILES)
    if moments:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in moments.items()}, str(folder / "moments.safetensors"))
        files.append("moments.safetensors")
    return files


def _spectrum_from_arrays(i: int, info: dict, arrays) -> LayerSpectrum:
    return LayerSpectrum(
        name=info["name"],
        kind=info["kind"],
        block=info["block"],
        d_in=info["d_in"],
        d_out=info["d_out"],
        has_bias=info["has_bias"],
        in_mlu=info["in_mlu"],
        n_samples=info["n_samples"],
        eig_in=arrays[f"{i}|eig_in"],
        eig_out=arrays[f"{i}|eig_out"],
        w_singular=arrays[f"{i}|w_singular"],
        wprime_singular={e: arrays[f"{i}|wprime|{e!r}"] for e in WPRIME_ENERGIES},
        pres_k_out=arrays[f"{i}|pres_k_out"],
        pres_k_in=arrays[f"{i}|pres_k_in"],
        pres_error=arrays[f"{i}|pres_error"],
        block_label=info.get("block_label", ""),
        tokens=info.get("tokens", ""),
        extras={name[len(prefix):]: arrays[name] for prefix in (f"{i}|x|",) for name in arrays.files
                if name.startswith(prefix)},
        status=info["status"],
        status_reason=info["status_reason"],
    )
