"""``cifar10:<root>`` and ``cifar100:<root>``: CIFAR from the official "python version" pickles.

``<root>`` may be the batches folder itself (``cifar-10-batches-py/`` or ``cifar-100-python/``) or the
folder that contains it (torchvision's ``root``). The test split (10,000 images) is the default; add
``?split=train`` for the 50,000 training images. CIFAR-100 uses the 100 fine labels.

The batches are pickles; they are read with :mod:`analysis.data.safe_pickle`, which refuses any global
other than numpy's array rebuilding functions, so a malicious file cannot run code. The identity is the
sha256 of the bytes of the batch files read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import ArraySource, sha256_bytes
from .families import DatasetEntry, PathTemplate, register_family
from .safe_pickle import load_plain_pickle


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant."""

    family: str
    title: str
    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str


CIFAR10 = CifarLayout(
    family="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta="batches.meta", label_key="labels", names_key="label_names",
)
CIFAR100 = CifarLayout(
    family="cifar100", title="CIFAR-100", folder="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta="meta", label_key="fine_labels", names_key="fine_label_names",
)


def _text_keys(obj: object, what: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{what} holds a {type(obj).__name__}, expected a dict of arrays")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _read(path: Path, digest: "hashlib._Hash") -> dict[str, object]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    digest.update(path.name.encode() + b"\0" + data)
    return _text_keys(load_plain_pickle(data, str(path)), str(path))


def find_batches_dir(root: Path, layout: CifarLayout) -> Path:
    """The folder holding the batch files: ``root/<layout.folder>`` or ``root`` itself."""
    if not root.exists():
        raise DatasetError(f"{layout.title} root {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{layout.title} root {root} is not a folder")
    needed = [*layout.splits["test"], layout.meta]
    for candidate in (root / layout.folder, root):
        if all((candidate / name).is_file() for name in needed):
            return candidate
    raise DatasetError(
        f"{root} is not a {layout.title} root: expected {layout.folder}/{{{', '.join(needed)}}} "
        f"(the 'python version' pickles, as torchvision downloads them) in it or the files themselves"
    )


class CifarSource(ArraySource):
    """One split of CIFAR-10 or CIFAR-100, loaded into memory as 32x32 RGB uint8."""

    layout: CifarLayout = CIFAR10

    def __init__(self, root: str | Path, split: str = "test"):
        layout = self.layout
        if split not in layout.splits:
            raise DatasetError(f"{layout.title} has splits 'test' and 'train', not {split!r}")
        root = Path(root).expanduser().resolve()
        folder = find_batches_dir(root, layout)
        missing = [name for name in layout.splits[split] if not (folder / name).is_file()]
        if missing:
            raise DatasetError(f"{layout.title} {split} split incomplete in {folder}: missing {', '.join(missing)}")
        digest = hashlib.sha256()
        meta = _read(folder / layout.meta, digest)
        names = meta.get(layout.names_key)
        if not isinstance(names, (list, tuple)) or not names:
            raise DatasetError(f"{folder / layout.meta} has no '{layout.names_key}' list of class names")
        class_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
        images, labels = [], []
        for name in layout.splits[split]:
            batch = _read(folder / name, digest)
            data, batch_labels = batch.get("data"), batch.get(layout.label_key)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                shape = getattr(data, "shape", None)
                raise DatasetError(f"{folder / name}: 'data' must be a uint8 array (N, 3072), got {shape}")
            batch_labels = np.asarray(batch_labels if batch_labels is not None else [], dtype=np.int64)
            if len(batch_labels) != len(data):
                raise DatasetError(f"{folder / name}: {len(data)} images but {len(batch_labels)} '{layout.label_key}'")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(batch_labels)
        query = "" if split == "test" else f"?split={split}"
        super().__init__(
            dataset_id=f"{layout.family}:{root}{query}",
            description=f"{layout.title} {split} split from {folder} ({sum(map(len, images)):,} images, "
                        f"{len(class_names)} classes)",
            images=np.ascontiguousarray(np.concatenate(images)), labels=np.concatenate(labels),
            identity=sha256_bytes(layout.family, split, digest.hexdigest()), class_names=class_names,
        )

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "CifarSource":
        title = cls.layout.title
        if not arg:
            raise DatasetError(f"{cls.layout.family}: needs a root folder, e.g. {cls.layout.family}:/data/cifar")
        unknown = sorted(set(options) - {"split"})
        if unknown:
            raise DatasetError(f"{title} datasets take only the option split=test|train, got {', '.join(unknown)}")
        from ..restrictions import check_path

        check_path(arg, f"{cls.layout.family} root")
        return cls(arg, options.get("split", "test").strip().lower())

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        return []  # needs a root: offered as a path template, not as a concrete dataset


class Cifar100Source(CifarSource):
    layout = CIFAR100


register_family("cifar10", CifarSource, PathTemplate(
    "cifar10:<root>", "CIFAR-10 from a local root (cifar-10-batches-py/): test split, ?split=train for the training split",
    label="CIFAR-10 root", help="The folder that holds the cifar-*-python data"))
register_family("cifar100", Cifar100Source, PathTemplate(
    "cifar100:<root>", "CIFAR-100 from a local root (cifar-100-python/, fine labels): test split, ?split=train for "
    "the training split", label="CIFAR-100 root", help="The folder that holds the cifar-*-python data"))
