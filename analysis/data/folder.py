"""``folder:<path>``: any folder of images, either with class sub-folders or flat.

Layouts:

- class sub-folders (ImageNet-val style, ``<path>/<class>/**/<image>``): labels are the positions of the
  sub-folder names in sorted order; sub-folders without images are not classes; images at the top level
  beside class folders are an error (their label would be ambiguous);
- flat (``<path>/<image>``): every label is ``-1``.

Scanning lists names only (sorted, hidden files and folders skipped, symlinked folders not followed below
the top); images are decoded lazily when an item is read, so a 50,000-image folder opens quickly. The
identity is a sha256 over each image's relative path, size and modification time (``st_mtime_ns``): it
changes when files are added, removed, renamed, resized or touched, but a content change that keeps both
the size and the modification time is not detected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import ImageSource, sha256_bytes
from .image_files import IMAGE_EXTENSIONS, is_hidden, is_image_name, read_image_file
from .families import DatasetEntry, PathTemplate, register_family


class _Scan:
    """What a walk found: image paths (relative, sorted), their stat lines, and how many other files."""

    def __init__(self):
        self.images: list[str] = []
        self.stats: list[str] = []
        self.other_files = 0

    def add_file(self, rel: str, entry: os.DirEntry) -> None:
        if is_image_name(entry.name):
            st = entry.stat()
            self.images.append(rel)
            self.stats.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
        elif not is_hidden(entry.name):
            self.other_files += 1


def _walk(root: Path, rel_dir: str, scan: _Scan) -> None:
    """Recursively collect images under ``root/rel_dir`` in sorted order (no symlinked folders)."""
    try:
        entries = sorted(os.scandir(root / rel_dir), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list folder {root / rel_dir}: {exc.strerror or exc}") from None
    for entry in entries:
        if is_hidden(entry.name):
            continue
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        if entry.is_dir(follow_symlinks=False):
            _walk(root, rel, scan)
        elif entry.is_file():
            scan.add_file(rel, entry)


def scan_folder(root: Path) -> tuple[list[str], np.ndarray, list[str] | None, str]:
    """``(relative image paths, labels, class names or None, identity)`` of an image folder."""
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (folder: datasets need a directory of images)")
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list folder {root}: {exc.strerror or exc}") from None
    flat = _Scan()
    class_scans: list[tuple[str, _Scan]] = []
    for entry in top:
        if is_hidden(entry.name):
            continue
        if entry.is_dir():  # a symlinked class folder at the top level is followed
            sub = _Scan()
            _walk(root, entry.name, sub)
            class_scans.append((entry.name, sub))
        elif entry.is_file():
            flat.add_file(entry.name, entry)
    classes = [(name, scan) for name, scan in class_scans if scan.images]
    if classes and flat.images:
        raise DatasetError(
            f"{root} mixes {len(flat.images)} images at the top level (e.g. {flat.images[0]}) with class "
            f"sub-folders ({', '.join(n for n, _ in classes[:3])}); move the loose images into a class folder "
            f"or use a folder with only loose images"
        )
    if classes:
        paths = [p for _, scan in classes for p in scan.images]
        labels = np.concatenate([np.full(len(scan.images), i, dtype=np.int64) for i, (_, scan) in enumerate(classes)])
        class_names = [name for name, _ in classes]
        stats = [s for _, scan in classes for s in scan.stats]
        layout = "classes"
    elif flat.images:
        paths, stats, class_names, layout = flat.images, flat.stats, None, "flat"
        labels = np.full(len(paths), -1, dtype=np.int64)
    else:
        others = flat.other_files + sum(scan.other_files for _, scan in class_scans)
        if others:
            raise DatasetError(
                f"no images found in {root}: {others} file(s), none with an image extension "
                f"({' '.join(IMAGE_EXTENSIONS)})"
            )
        raise DatasetError(f"no images found in {root}: the folder is empty")
    identity = sha256_bytes("folder-v1", layout, "\n".join(class_names or []), "\n".join(stats))
    return paths, labels, class_names, identity


class FolderSource(ImageSource):
    """``folder:<path>``: images read lazily from files; labels from sorted class sub-folders or ``-1``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.paths, self._labels, self.class_names, self._identity = scan_folder(self.root)
        self.dataset_id = f"folder:{self.root}"
        layout = f"{len(self.class_names)} classes" if self.class_names else "unlabelled"
        self.description = f"image folder {self.root} ({len(self.paths):,} images, {layout})"

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int):
        return read_image_file(self.root / self.paths[index], self.item_name(index))

    def item_name(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def labels(self) -> np.ndarray:
        return self._labels

    def identity(self) -> str:
        return self._identity

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "FolderSource":
        if not arg:
            raise DatasetError("folder: needs a path, e.g. folder:/data/imagenet/val")
        if options:
            raise DatasetError(f"folder datasets take no options, got {', '.join(sorted(options))}")
        from ..restrictions import check_path

        check_path(arg, "dataset folder")
        return cls(arg)

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        return []  # needs a path: offered as a path template, not as a concrete dataset


register_family("folder", FolderSource, PathTemplate(
    "folder:<path>", "any image folder: class sub-folders (ImageNet-val layout) or flat, unlabelled",
    label="image folder", help="A folder of images (class sub-folders or flat)"))
