"""The bad-input catalogue: every case fails with a specific one-line message and damages no stored result.

A module-wide cache holds one good analysis; every case runs with that cache as the current cache and,
afterwards, the entry's files must be byte-identical and still load (the ``guard`` fixture). How the app
shows these errors (messages, not tracebacks) is covered in ``test_app.py``
(``test_analyze_shows_a_bad_model_id_as_one_line``, ``test_failed_job_shows_its_reason``).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from analysis import analyze, defaults, load_model, restrictions
from analysis.cache import ResultCache
from analysis.compression import CompressionRequest, compress
from analysis.jobs import analysis_job
from analysis.partial import PartialStore
from analysis.errors import (
    AnalysisError, CacheError, CheckpointError, DatasetError, ModelUnavailableError, NumericalError, SettingsError,
    UnknownModelError,
)

from .helpers import TINY_VIT, TINY_VIT_OPTIONS, make_image_folder, save_tiny_vit_checkpoint

ARCH = f"arch=vit_tiny_patch16_224&{TINY_VIT_OPTIONS}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder dataset, a tiny checkpoint and a cache with one stored analysis."""
    root = tmp_path_factory.mktemp("bad-inputs")
    folder = make_image_folder(root / "images", per_class=5)
    ckpt_id = save_tiny_vit_checkpoint(root / "tiny.safetensors")
    cache_dir = root / "cache"
    result = analyze(TINY_VIT, f"folder:{folder}", cache_dir=str(cache_dir))
    return {"root": root, "folder": f"folder:{folder}", "ckpt": root / "tiny.safetensors", "ckpt_id": ckpt_id,
            "cache": cache_dir, "key": result.key}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def guard(world, monkeypatch):
    """Run the case against the module cache; afterwards the stored entry is untouched and loads."""
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(world["cache"]))
    entry = world["cache"] / world["key"]
    before = _snapshot(entry)
    yield world
    assert _snapshot(entry) == before
    assert ResultCache(world["cache"]).load(world["key"]) is not None


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message, message
    return message


def _tampered_checkpoint(world, name: str, value: float) -> str:
    state = load_file(str(world["ckpt"]))
    state["blocks.0.mlp.fc1.weight"] = torch.full_like(state["blocks.0.mlp.fc1.weight"], value)
    path = world["root"] / name
    save_file(state, str(path))
    return f"file:{path}?{ARCH}"


# ------------------------------------------------------------------------------------------- models
def test_unknown_model_source(guard):
    with pytest.raises(UnknownModelError, match="unknown model source 'nope'") as exc:
        analyze("nope:thing", guard["folder"])
    _one_line(exc)


def test_unknown_timm_architecture_suggests_close_names(guard):
    with pytest.raises(UnknownModelError, match="did you mean") as exc:
        analyze("random:vit_tiny_patch16_22", guard["folder"])
    _one_line(exc)


def test_timm_name_without_weights_offline_says_how_to_get_them(guard):
    with pytest.raises(ModelUnavailableError, match="local Hugging Face cache") as exc:
        load_model("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert "file:" in _one_line(exc)


def test_unknown_zoo_model_lists_the_zoo(guard):
    with pytest.raises(UnknownModelError, match="zoo:vit-fmnist-supervised"):
        analyze("zoo:vit-fmnist-nothing", guard["folder"])


def test_file_checkpoint_without_architecture(guard):
    with pytest.raises(SettingsError, match=r"needs \?arch="):
        analyze(f"file:{guard['ckpt']}", guard["folder"])


def test_missing_checkpoint_file(guard):
    with pytest.raises(CheckpointError, match="does not exist"):
        analyze(f"file:{guard['root'] / 'absent.safetensors'}?{ARCH}", guard["folder"])


def test_checkpoint_for_another_architecture(guard):
    with pytest.raises(CheckpointError, match="missing keys|shape mismatch") as exc:
        analyze(f"file:{guard['ckpt']}?arch=resnet18", guard["folder"])
    _one_line(exc)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"analysis-pickle-ran-{os.getpid()}"


def test_pickle_checkpoint_that_would_run_code_is_refused_and_not_run(guard):
    path = guard["root"] / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, str(path))
    MARKER.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refused"):
        analyze(f"file:{path}?{ARCH}", guard["folder"])
    assert not MARKER.exists()


def test_truncated_safetensors(guard):
    path = guard["root"] / "truncated.safetensors"
    path.write_bytes(guard["ckpt"].read_bytes()[: 3000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        analyze(f"file:{path}?{ARCH}", guard["folder"])


def test_unsupported_checkpoint_suffix(guard):
    path = guard["root"] / "weights.onnx"
    path.write_bytes(b"\x08\x01")
    with pytest.raises(CheckpointError, match="unsupported suffix"):
        analyze(f"file:{path}?{ARCH}", guard["folder"])


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_checkpoint_with_non_finite_weights_is_refused(guard, value):
    with pytest.raises(CheckpointError, match="non-finite values in 'blocks.0.mlp.fc1.weight'"):
        analyze(_tampered_checkpoint(guard, f"broken-{value}.safetensors", value), guard["folder"])


def test_model_whose_activations_overflow_to_inf_or_nan(guard):
    # finite float32 weights so large that fc1's outputs overflow: inf, then NaN after GELU/LayerNorm
    with pytest.raises(NumericalError, match="NaN or inf activations") as exc:
        analyze(_tampered_checkpoint(guard, "overflow.safetensors", 1e38), guard["folder"])
    _one_line(exc)


# ------------------------------------------------------------------------------------------- datasets
def test_unknown_dataset_family(guard):
    with pytest.raises(DatasetError, match="unknown dataset"):
        analyze(TINY_VIT, "imagenet-21k:train")


def test_missing_image_folder(guard):
    with pytest.raises(DatasetError):
        analyze(TINY_VIT, f"folder:{guard['root'] / 'no-such-folder'}")


def test_empty_image_folder(guard):
    empty = guard["root"] / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match="no images|empty") as exc:
        analyze(TINY_VIT, f"folder:{empty}")
    _one_line(exc)


def test_folder_with_only_non_images(guard):
    folder = guard["root"] / "texts"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError):
        analyze(TINY_VIT, f"folder:{folder}")


def test_corrupt_jpeg_is_named(guard):
    folder = guard["root"] / "corrupt"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 10, 10)).save(folder / f"good_{i}.jpg")
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="zz_broken.jpg") as exc:
        analyze(TINY_VIT, f"folder:{folder}")
    _one_line(exc)


def test_mixed_grey_rgba_and_palette_images_are_analysed_as_rgb(guard):
    folder = guard["root"] / "mixed"
    folder.mkdir(exist_ok=True)
    Image.new("L", (30, 30), 90).save(folder / "grey.png")
    Image.new("RGBA", (40, 36), (10, 200, 30, 128)).save(folder / "rgba.png")
    Image.new("P", (32, 32), 3).save(folder / "palette.png")
    result = analyze(TINY_VIT, f"folder:{folder}")  # not an error: every image becomes 3-channel RGB
    assert result.meta.n_images == 3


def test_fewer_images_than_requested(guard):
    with pytest.raises(AnalysisError, match="has only 10 images") as exc:
        analyze(TINY_VIT, guard["folder"], samples=500)
    _one_line(exc)


@pytest.mark.parametrize("samples", [0, -3])
def test_zero_or_negative_samples(guard, samples):
    with pytest.raises(SettingsError, match="samples"):
        analyze(TINY_VIT, guard["folder"], samples=samples)


# ------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("energy", [0.0, 1.5, -0.2, math.nan])
def test_energy_outside_zero_one(guard, energy):
    with pytest.raises(SettingsError, match=r"\(0, 1\]"):
        analyze(TINY_VIT, guard["folder"], energy_in=energy)
    with pytest.raises(SettingsError, match=r"\(0, 1\]"):
        analyze(TINY_VIT, guard["folder"], energy_out=energy)


def test_zero_batch_size(guard):
    with pytest.raises(SettingsError, match="batch_size"):
        analyze(TINY_VIT, guard["folder"], batch_size=0)


def test_fp16_on_the_cpu(guard):
    with pytest.raises(SettingsError, match="fp16"):
        analyze(TINY_VIT, guard["folder"], precision="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu(guard):
    with pytest.raises(SettingsError, match="no usable CUDA GPU"):
        analyze(TINY_VIT, guard["folder"], device="cuda")


def test_impossible_compression_budget(guard):
    with pytest.raises(SettingsError, match="--keep"):
        compress(CompressionRequest(model=TINY_VIT, dataset=guard["folder"], keep=0.0))


def test_compression_evaluated_on_unlabelled_data(guard):
    with pytest.raises(DatasetError, match="has no labels"):
        compress(CompressionRequest(model=TINY_VIT, dataset=guard["folder"], eval_dataset="photos"))


# ------------------------------------------------------------------------------------------- cache
def test_unwritable_cache_folder_fails_before_computing(guard, monkeypatch):
    blocker = guard["root"] / "a-file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CacheError, match="not writable") as exc:
        analyze(TINY_VIT, guard["folder"], samples=4, cache_dir=str(blocker / "cache"))
    _one_line(exc)


@pytest.mark.parametrize("key", ["../../etc/passwd", "/tmp", "..", "ABCDEF0123456789abcdef01", "0" * 23])
def test_path_traversal_in_a_cache_key(guard, key):
    cache = ResultCache(guard["cache"])
    for call in (cache.load, cache.delete, cache.entry_dir, cache.load_moments):
        with pytest.raises(CacheError, match="is not a cache key"):
            call(key)


def test_export_and_summary_names_never_come_from_user_text(guard):
    from analysis.compression.pipeline import summary_name

    name = summary_name({"model": "../../../../etc/passwd", "dataset": "/etc", "finetune": {}})
    assert "/" not in name and name.endswith(".json") and len(name) == 29


def test_disk_full_while_storing_keeps_the_previous_entry(guard, monkeypatch):
    import analysis.cache as cache_module

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_write_entry_files", full_disk)
    with pytest.raises(CacheError, match=r"could not write cache entry \w+ \(No space left on device\); previous results untouched") as exc:
        analyze(TINY_VIT, guard["folder"], samples=6)
    _one_line(exc)
    assert not any((guard["cache"] / ".staging").glob("*")), "a failed write must not leave staging folders"


def test_entry_deleted_while_being_read_is_treated_as_absent_and_recomputed(world, tmp_path, monkeypatch):
    import shutil

    import analysis.cache as cache_module

    cache_dir = tmp_path / "cache"
    key = analyze(TINY_VIT, world["folder"], samples=4, cache_dir=str(cache_dir)).key
    real_load = cache_module.np.load

    def delete_then_load(path, *args, **kwargs):
        shutil.rmtree(cache_dir / key, ignore_errors=True)  # another process deletes the entry mid-read
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "load", delete_then_load)
    assert ResultCache(cache_dir).load(key) is None
    monkeypatch.setattr(cache_module.np, "load", real_load)
    again = analyze(TINY_VIT, world["folder"], samples=4, cache_dir=str(cache_dir))
    assert again.key == key and ResultCache(cache_dir).load(key) is not None


# ------------------------------------------------------------------------------------------- restricted mode
def test_restricted_mode_refuses_datasets_and_checkpoints_outside_the_allowed_folders(guard, monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("ANALYSIS_ALLOWED_DIRS", str(allowed))
    with pytest.raises(SettingsError, match="outside the folders this server allows"):
        analyze(TINY_VIT, guard["folder"])
    with pytest.raises(SettingsError, match="outside the folders this server allows"):
        analyze(f"file:{guard['ckpt']}?{ARCH}", "fashion-mnist:test", samples=4)
    sneaky = allowed / "link-to-images"
    sneaky.symlink_to(guard["folder"].removeprefix("folder:"))
    with pytest.raises(SettingsError, match="outside the folders"):  # symlinks are followed before the check
        analyze(TINY_VIT, f"folder:{sneaky}")
    with pytest.raises(SettingsError, match="outside the folders"):
        analyze(TINY_VIT, f"folder:{allowed}/../../..")
    inside = make_image_folder(allowed / "images", per_class=2)
    assert analyze(TINY_VIT, f"folder:{inside}", cache_dir=str(tmp_path / "c")).meta.n_images == 4


def test_restricted_mode_limits_upload_size(monkeypatch):
    from analysis.restrictions import check_upload_size

    monkeypatch.setenv("ANALYSIS_MAX_UPLOAD_MB", "1")
    check_upload_size(1024 * 1024)
    with pytest.raises(SettingsError, match="at most 1 MB"):
        check_upload_size(1024 * 1024 + 1)


@pytest.mark.parametrize("name, value, read", [
    ("ANALYSIS_DEFAULT_SAMPLES", "abc", lambda tmp: defaults.DEFAULT_SAMPLES),
    ("ANALYSIS_DEFAULT_SAMPLES", "0", lambda tmp: defaults.default_samples()),
    ("ANALYSIS_CHECKPOINT_SECONDS", "-1", lambda tmp: PartialStore(tmp, "0" * 24, 4)),
    ("ANALYSIS_CHECKPOINT_SECONDS", "nan", lambda tmp: PartialStore(tmp, "0" * 24, 4)),
    ("ANALYSIS_CHECKPOINT_BATCHES", "1.5", lambda tmp: PartialStore(tmp, "0" * 24, 4)),
    ("ANALYSIS_MAX_UPLOAD_MB", "lots", lambda tmp: restrictions.max_upload_bytes()),
    ("ANALYSIS_JOB_BATCH_DELAY_S", "-2", lambda tmp: analysis_job.pause_after_batch(lambda: False)),
], ids=["samples-abc", "samples-0", "seconds-negative", "seconds-nan", "batches-fraction", "upload", "delay"])
def test_a_bad_environment_setting_is_a_clear_error_naming_the_variable(name, value, read, monkeypatch, tmp_path):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"environment variable {name} must be .*got '{value}'"):
        read(tmp_path)


def test_environment_settings_are_read_when_used_not_at_import(monkeypatch, tmp_path):
    monkeypatch.setenv("ANALYSIS_DEFAULT_MODEL", "random:resnet18")
    monkeypatch.setenv("ANALYSIS_DEFAULT_SAMPLES", "7")
    monkeypatch.setenv("ANALYSIS_CHECKPOINT_SECONDS", "2.5")
    assert defaults.DEFAULT_MODEL == "random:resnet18" and defaults.default_samples() == 7
    assert PartialStore(tmp_path, "0" * 24, 4).every_seconds == 2.5
    monkeypatch.delenv("ANALYSIS_DEFAULT_SAMPLES")
    assert defaults.DEFAULT_SAMPLES is None
