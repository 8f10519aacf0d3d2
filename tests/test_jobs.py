"""Jobs in worker processes (DESIGN.md section 4): one worker per key, progress, cancel, failures, stale locks.

Worker processes are slow to start on a busy CPU (each imports torch), so the scenarios that need real
workers are all started once by the module fixture :func:`started` and run side by side; each test then
checks its own scenario. Waits use generous timeouts only so that a bug cannot hang the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import jobs
from analysis.cache import ResultCache
from analysis.engine import plan
from analysis.errors import AnalysisError, CacheError, DatasetError, NumericalError, SettingsError, UnknownModelError
from analysis.jobs import api, lock
from analysis.jobs.files import JobFiles, write_json, write_progress
from analysis.jobs.worker import BATCH_DELAY_ENV, describe_error
from analysis.settings import AnalysisSettings

ARCH = "vit_tiny_patch16_224"
ARCH_OPTIONS = "img_size=32&patch_size=8&depth=2&embed_dim=48&num_heads=2"
MODEL = f"random:{ARCH}?{ARCH_OPTIONS}"
WAIT_S = 300.0  # only a guard against hanging: jobs here finish in seconds to tens of seconds


# ----------------------------------------------------------------------------------------------- helpers
def write_images(root: Path, per_class: int, classes: int = 2, seed: int = 0) -> Path:
    """``classes`` sub-folders of ``per_class`` 32x32 PNGs: colour ramps plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 32)
    for c in range(classes):
        folder = root / f"label{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tint = rng.uniform(40, 215, size=3)
            slope = rng.uniform(-60, 60, size=(2, 3))
            pixels = (tint + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1]
                      + rng.normal(0, 10, size=(32, 32, 3)))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def write_overflowing_model(path: Path) -> str:
    """A finite checkpoint whose first qkv projection overflows float32 (inf -> NaN downstream)."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(ARCH, pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=48,
                              num_heads=2)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    state["blocks.0.attn.qkv.weight"] = torch.full_like(state["blocks.0.attn.qkv.weight"], 3e38)
    save_file(state, str(path))
    return f"file:{path}?arch={ARCH}&{ARCH_OPTIONS}"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def plant_stale_lock(files: JobFiles, token: str = "dead-attempt") -> None:
    """A lock left behind by a worker that died (its pid is gone; its start time could never match)."""
    files.folder.mkdir(parents=True, exist_ok=True)
    info = lock.LockInfo(pid=dead_pid(), hostname=socket.gethostname(), start_ticks=1, created=time.time() - 60,
                         token=token, role="worker")
    files.lock.write_bytes(info.to_bytes())


def log_count(files: JobFiles, marker: str) -> int:
    """How many lines of ``worker.log`` contain ``marker``."""
    if not files.log.exists():
        return 0
    return sum(marker in line for line in files.log.read_text(errors="replace").splitlines())


def wait_until_running(key: str, cache_dir: str) -> jobs.JobStatus:
    """Poll until job ``key`` has finished at least one batch (or is over, or the guard expires)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        current = jobs.status(key, cache_dir=cache_dir)
        if (current.state == "running" and current.batches_done >= 1) or current.finished:
            return current
        if time.monotonic() > deadline:
            return current
        time.sleep(0.1)


# ------------------------------------------------------------------------------------ shared scenarios
@dataclass
class Started:
    """Jobs submitted once for the whole module, each checked by its own test."""

    cache_dir: str
    done_keys: tuple[str, str]  # two concurrent submits of one new request
    done_request: tuple[str, str, AnalysisSettings]
    takeover_key: str  # submitted over a stale lock
    slow_key: str  # throttled, to be cancelled
    doomed_key: str  # its dataset folder is deleted right after submit
    doomed_folder: Path
    overflow_key: str  # a model whose activations become NaN

    def all_keys(self) -> list[str]:
        return [self.done_keys[0], self.takeover_key, self.slow_key, self.doomed_key, self.overflow_key]


def _submit_concurrently(model_id: str, dataset_id: str, settings: AnalysisSettings, cache_dir: str) -> tuple:
    """Two threads call :func:`jobs.submit` for one request at the same moment."""
    barrier = threading.Barrier(2)

    def one() -> str:
        barrier.wait()
        return jobs.submit(model_id, dataset_id, settings, cache_dir=cache_dir)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one) for _ in range(2)]
        return tuple(f.result(timeout=WAIT_S) for f in futures)


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Started:
    base = tmp_path_factory.mktemp("jobs")
    cache_dir = str(base / "cache")
    images = f"folder:{write_images(base / 'images', per_class=20)}"
    doomed_folder = write_images(base / "doomed", per_class=3, seed=1)

    done_request = (MODEL, images, AnalysisSettings(samples=8, batch_size=8))
    done_keys = _submit_concurrently(*done_request, cache_dir)

    takeover_settings = AnalysisSettings(samples=8, batch_size=8, seed=1)
    takeover_key = plan(MODEL, images, takeover_settings).key
    plant_stale_lock(JobFiles.of(takeover_key, cache_dir))
    assert jobs.submit(MODEL, images, takeover_settings, cache_dir=cache_dir) == takeover_key

    with pytest.MonkeyPatch.context() as mp:  # the worker inherits the throttle from this environment
        mp.setenv(BATCH_DELAY_ENV, "3")
        slow_key = jobs.submit(MODEL, images, AnalysisSettings(samples=40, batch_size=1, seed=2),
                               cache_dir=cache_dir)

    doomed_key = jobs.submit(MODEL, f"folder:{doomed_folder}", AnalysisSettings(samples=4), cache_dir=cache_dir)
    for path in sorted(doomed_folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    doomed_folder.rmdir()

    overflow_model = write_overflowing_model(base / "overflow.safetensors")
    overflow_key = jobs.submit(overflow_model, images, AnalysisSettings(samples=4, batch_size=4),
                               cache_dir=cache_dir)

    scenario = Started(cache_dir=cache_dir, done_keys=done_keys, done_request=done_request,
                       takeover_key=takeover_key, slow_key=slow_key, doomed_key=doomed_key,
                       doomed_folder=doomed_folder, overflow_key=overflow_key)
    yield scenario
    for key in scenario.all_keys():  # never leave a worker behind
        jobs.cancel(key, cache_dir=cache_dir)
    for key in scenario.all_keys():
        jobs.wait(key, 60, cache_dir=cache_dir)
    for proc in list(api._children.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ scenarios with workers
def test_concurrent_submits_start_one_worker_that_finishes_done(started):
    key = started.done_keys[0]
    assert started.done_keys[1] == key
    final = jobs.wait(key, WAIT_S, cache_dir=started.cache_dir)
    assert final.state == "done", final.message
    assert final.fraction == 1.0 and final.batches_done == final.batches_total == 1
    assert final.images_done == final.images_total == 8
    assert final.model_id == MODEL and final.eta_s is None

    files = JobFiles.of(key, started.cache_dir)
    assert log_count(files, "submitted attempt") == 1
    assert log_count(files, "started attempt") == 1
    assert not files.lock.exists()
    result = ResultCache(started.cache_dir).load(key)
    assert result is not None and len(result.layers) > 0
    assert result.meta.key == key


def test_resubmitting_a_finished_request_starts_nothing(started, monkeypatch):
    key = started.done_keys[0]
    assert jobs.wait(key, WAIT_S, cache_dir=started.cache_dir).state == "done"

    def no_spawn(*args, **kwargs):
        raise AssertionError("a worker was started for a cached result")

    monkeypatch.setattr(api, "_spawn_worker", no_spawn)
    assert jobs.submit(*started.done_request, cache_dir=started.cache_dir) == key
    assert jobs.status(key, cache_dir=started.cache_dir).state == "done"
    assert log_count(JobFiles.of(key, started.cache_dir), "started attempt") == 1


def test_stale_lock_of_a_dead_worker_is_taken_over(started):
    final = jobs.wait(started.takeover_key, WAIT_S, cache_dir=started.cache_dir)
    assert final.state == "done", final.message
    files = JobFiles.of(started.takeover_key, started.cache_dir)
    assert log_count(files, "started attempt") == 1
    assert log_count(files, "dead-attempt") == 0
    assert not files.lock.exists()
    assert not list(files.folder.glob("lock.stale-*"))
    assert ResultCache(started.cache_dir).has(started.takeover_key)


def test_cancel_stops_a_running_job_and_caches_nothing(started):
    key, cache_dir = started.slow_key, started.cache_dir
    running = wait_until_running(key, cache_dir)
    assert running.state == "running", running
    assert running.batches_total == 40 and 0 < running.fraction < 1 and running.pid is not None

    assert jobs.cancel(key, cache_dir=cache_dir) is True
    final = jobs.wait(key, WAIT_S, cache_dir=cache_dir)
    assert final.state == "cancelled", final
    assert final.batches_done < final.batches_total
    assert not ResultCache(cache_dir).has(key)
    assert not ResultCache(cache_dir).entry_dir(key).exists()
    assert not JobFiles.of(key, cache_dir).lock.exists()
    assert jobs.cancel(key, cache_dir=cache_dir) is False  # nothing live to ask any more


def test_job_whose_dataset_disappeared_fails_with_one_line_message(started):
    final = jobs.wait(started.doomed_key, WAIT_S, cache_dir=started.cache_dir)
    assert final.state == "failed"
    assert str(started.doomed_folder) in final.message and "\n" not in final.message
    assert not final.message.startswith("DatasetError")  # library errors are shown as their own message
    assert not ResultCache(started.cache_dir).entry_dir(started.doomed_key).exists()


def test_numerically_broken_model_fails_with_numerical_message(started):
    final = jobs.wait(started.overflow_key, WAIT_S, cache_dir=started.cache_dir)
    assert final.state == "failed"
    assert "NaN or inf" in final.message and "\n" not in final.message
    assert not ResultCache(started.cache_dir).entry_dir(started.overflow_key).exists()
    files = JobFiles.of(started.overflow_key, started.cache_dir)
    assert log_count(files, "Traceback") == 1  # the full traceback is in the log only
    assert log_count(files, NumericalError.__name__) >= 1


def test_list_jobs_shows_failed_and_cancelled_but_not_done(started):
    for key in started.all_keys():
        jobs.wait(key, WAIT_S, cache_dir=started.cache_dir)
    listed = {s.key: s.state for s in jobs.list_jobs(started.cache_dir)}
    assert listed == {started.slow_key: "cancelled", started.doomed_key: "failed", started.overflow_key: "failed"}


# ------------------------------------------------------------------------------- no worker process needed
@pytest.mark.parametrize(
    ("model_id", "dataset", "settings", "error"),
    [
        ("nosuchsource:thing", "images", AnalysisSettings(samples=4), UnknownModelError),
        (MODEL, "missing", AnalysisSettings(samples=4), DatasetError),
        (MODEL, "images", AnalysisSettings(samples=0), SettingsError),
        (MODEL, "images", AnalysisSettings(samples=4, energy_in=1.5), AnalysisError),
    ],
)
def test_bad_requests_raise_from_submit_and_start_nothing(tmp_path, model_id, dataset, settings, error):
    folders = {"images": write_images(tmp_path / "images", per_class=2), "missing": tmp_path / "missing"}
    cache_dir = str(tmp_path / "cache")
    with pytest.raises(error):
        jobs.submit(model_id, f"folder:{folders[dataset]}", settings, cache_dir=cache_dir)
    assert not (tmp_path / "cache" / "_jobs").exists()


def test_request_that_no_longer_matches_its_key_fails_in_the_worker(tmp_path):
    from analysis.jobs.__main__ import main

    folder = write_images(tmp_path / "images", per_class=2)
    cache_dir = str(tmp_path / "cache")
    settings = AnalysisSettings(samples=4)
    key = plan(MODEL, f"folder:{folder}", settings).key
    files = JobFiles.of(key, cache_dir)
    write_json(files.request, {"model_id": MODEL, "dataset_id": f"folder:{folder}",
                               "settings": {"samples": 4}, "cwd": os.getcwd()})
    write_images(tmp_path / "images", per_class=3, seed=5)  # the dataset changes before the worker runs

    assert main(["run-worker", key, "--cache-dir", cache_dir]) == 1
    final = jobs.status(key, cache_dir=cache_dir)
    assert final.state == "failed" and "changed since" in final.message
    assert not files.lock.exists()


def test_only_one_contender_takes_over_a_stale_lock(tmp_path):
    files = JobFiles.of("ab" * 12, tmp_path)
    plant_stale_lock(files)
    barrier = threading.Barrier(8)

    def contend() -> lock.LockInfo | None:
        barrier.wait()
        return lock.acquire(files, os.getpid(), "submitter")

    with ThreadPoolExecutor(8) as pool:
        winners = [info for info in pool.map(lambda _: contend(), range(8)) if info is not None]
    assert len(winners) == 1
    assert lock.read_lock(files).token == winners[0].token
    assert lock.acquire(files, os.getpid(), "submitter") is None  # the new owner (this process) is alive
    assert not list(files.folder.glob("lock.stale-*"))
    assert lock.release(files, "someone-else") is False and files.lock.exists()
    assert lock.release(files, winners[0].token) is True and not files.lock.exists()


def test_unreadable_lock_counts_as_live_only_while_young(tmp_path):
    files = JobFiles.of("cd" * 12, tmp_path)
    files.folder.mkdir(parents=True)
    files.lock.write_bytes(b"")  # a creator between open() and write()
    assert lock.lock_is_live(files)
    assert lock.acquire(files, os.getpid(), "submitter") is None
    old = time.time() - 10 * lock.UNREADABLE_LOCK_GRACE_S
    os.utime(files.lock, (old, old))
    assert not lock.lock_is_live(files)
    assert lock.acquire(files, os.getpid(), "submitter") is not None


def test_process_liveness_checks_pid_and_start_time():
    me = os.getpid()
    assert lock.process_alive(me, lock.process_start_ticks(me))
    assert not lock.process_alive(dead_pid())
    if lock.process_start_ticks(me) is not None:  # a recycled pid has another start time
        assert not lock.process_alive(me, lock.process_start_ticks(me) + 1)


def test_status_of_a_worker_that_died_without_reporting_is_failed(tmp_path):
    cache_dir = str(tmp_path / "cache")
    key = "ef" * 12
    assert jobs.status(key, cache_dir=cache_dir).state == "absent"
    assert jobs.cancel(key, cache_dir=cache_dir) is False
    files = JobFiles.of(key, cache_dir)
    plant_stale_lock(files, token="t1")
    write_progress(files, state="running", token="t1", pid=1, batches_done=2, batches_total=5, fraction=0.4)
    crashed = jobs.status(key, cache_dir=cache_dir)
    assert crashed.state == "failed" and "ended without reporting" in crashed.message
    assert crashed.batches_done == 2
    assert jobs.cancel(key, cache_dir=cache_dir) is False
    assert [s.key for s in jobs.list_jobs(cache_dir)] == [key]


def test_status_rejects_malformed_keys(tmp_path):
    with pytest.raises(CacheError):
        jobs.status("../../etc", cache_dir=str(tmp_path))


def test_errors_are_described_in_one_line():
    assert describe_error(DatasetError("image folder /x does not exist")) == "image folder /x does not exist"
    assert describe_error(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert describe_error(RuntimeError()) == "RuntimeError"
