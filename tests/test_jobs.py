"""Jobs in worker processes (DESIGN.md section 4): one worker per key, progress, cancel, failures, stale locks.

Worker processes are slow to start on a busy CPU (each imports torch), so the scenarios that need real
workers are all started once by the module fixture :func:`started` and run side by side; each test then
checks its own scenario. Nothing here depends on how fast the machine is: tests wait for conditions (poll a
predicate), never for a fixed time, and a job that must still be running when a test looks at it is held
after its first batch by a hold file (``HOLD_ENV``) until the test cancels it. Deadlines are generous guards
only, so that a bug cannot hang the suite.
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
from analysis.compression import CompressionRequest, FinetuneSettings, stored_summaries
from analysis.compression.pipeline import request_key
from analysis.jobs import api, job_queue, lock
from analysis.jobs.compression_job import JobClock, expected_stages, models_dir
from analysis.jobs.files import JobFiles, read_json, write_json, write_progress
from analysis.jobs.worker import HOLD_ENV, describe_error
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


def wait_for(predicate, timeout_s: float = WAIT_S, poll_s: float = 0.05):
    """Poll ``predicate()`` until it returns something true (returned) or the guard expires (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(poll_s)


def wait_until_running(key: str, cache_dir: str) -> jobs.JobStatus:
    """Poll until job ``key`` has finished at least one batch, or is over."""
    def progressed() -> jobs.JobStatus | None:
        current = jobs.status(key, cache_dir=cache_dir)
        return current if (current.state == "running" and current.batches_done >= 1) or current.finished else None

    return wait_for(progressed)


# ------------------------------------------------------------------------------------ shared scenarios
@dataclass
class Started:
    """Jobs submitted once for the whole module, each checked by its own test."""

    cache_dir: str
    done_keys: tuple[str, str]  # two concurrent submits of one new request
    done_request: tuple[str, str, AnalysisSettings]
    takeover_key: str  # submitted over a stale lock
    slow_key: str  # held after its first batch, to be cancelled
    doomed_key: str  # its dataset folder is deleted right after submit
    doomed_folder: Path
    overflow_key: str  # a model whose activations become NaN
    compress_request: CompressionRequest
    compress_key: str  # a compression run as a job
    held_compress_key: str  # a compression held after its first reported step, to be cancelled
    hold: Path  # while this file exists, the held jobs pause after each step

    def all_keys(self) -> list[str]:
        return [self.done_keys[0], self.takeover_key, self.slow_key, self.doomed_key, self.overflow_key,
                self.compress_key, self.held_compress_key]


def _submit_concurrently(model_id: str, dataset_id: str, settings: AnalysisSettings, cache_dir: str) -> tuple:
    """Two threads call :func:`jobs.submit` for one request at the same moment."""
    barrier = threading.Barrier(2)

    def one() -> str:
        barrier.wait()
        return jobs.submit(model_id, dataset_id, settings, cache_dir=cache_dir)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one) for _ in range(2)]
        return tuple(f.result(timeout=WAIT_S) for f in futures)


@pytest.fixture(scope="module", autouse=True)
def side_by_side():
    """The scenarios of :func:`started` run side by side (some are held on purpose until a test cancels them),
    so this module's jobs get as many slots of the machine's queue as they need; the queue's own test gives
    its private cache one slot."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(job_queue.SLOTS_ENV, "16")
        yield


@pytest.fixture(scope="module")
def started(tmp_path_factory, side_by_side) -> Started:
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

    hold = base / "hold"
    hold.touch()
    held_compression = CompressionRequest(model=MODEL, dataset=images, samples=8, eval_samples=8, seed=4)
    with pytest.MonkeyPatch.context() as mp:  # the workers inherit the hold from this environment
        mp.setenv(HOLD_ENV, str(hold))
        slow_key = jobs.submit(MODEL, images, AnalysisSettings(samples=40, batch_size=1, seed=2),
                               cache_dir=cache_dir)
        held_compress_key = jobs.submit_compression(held_compression, cache_dir=cache_dir)
    compress_request = CompressionRequest(model=MODEL, dataset=images, samples=8, eval_samples=8, seed=3)
    compress_key = jobs.submit_compression(compress_request, cache_dir=cache_dir)

    doomed_key = jobs.submit(MODEL, f"folder:{doomed_folder}", AnalysisSettings(samples=4), cache_dir=cache_dir)
    for path in sorted(doomed_folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    doomed_folder.rmdir()

    overflow_model = write_overflowing_model(base / "overflow.safetensors")
    overflow_key = jobs.submit(overflow_model, images, AnalysisSettings(samples=4, batch_size=4),
                               cache_dir=cache_dir)

    scenario = Started(cache_dir=cache_dir, done_keys=done_keys, done_request=done_request,
                       takeover_key=takeover_key, slow_key=slow_key, doomed_key=doomed_key,
                       doomed_folder=doomed_folder, overflow_key=overflow_key, compress_request=compress_request,
                       compress_key=compress_key, held_compress_key=held_compress_key, hold=hold)
    yield scenario
    hold.unlink(missing_ok=True)
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
    # the last stage reported is the spectra: one step per analysed layer (patch embedding, 2 blocks x 4, head)
    assert final.fraction == 1.0 and final.stage == "spectra" and final.batches_done == final.batches_total == 10
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


# ------------------------------------------------------------------------------------ compression jobs
def test_compression_runs_as_a_job_and_stores_its_summary(started, monkeypatch):
    key, cache_dir = started.compress_key, started.cache_dir
    assert key == request_key(started.compress_request)
    final = jobs.wait(key, WAIT_S, cache_dir=cache_dir)
    assert final.state == "done", final.message
    assert final.kind == "compression" and final.fraction == 1.0 and final.model_id == MODEL
    assert not JobFiles.of(key, cache_dir).lock.exists()
    (summary,) = [s for s in stored_summaries(cache_dir) if s.get("job_key") == key]
    assert final.result and (Path(cache_dir) / "compressions" / final.result).is_file()
    assert summary["eval_samples"] == 8 and summary["seed"] == 3 and 0 < summary["kept_fraction"] <= 1
    assert summary["export"] == str(models_dir(cache_dir) / f"{key}.safetensors")
    assert Path(summary["export"]).is_file()

    def no_spawn(*args, **kwargs):
        raise AssertionError("a worker was started for a stored compression")

    monkeypatch.setattr(api, "_spawn_worker", no_spawn)  # one job per request: the same request is done
    assert jobs.submit_compression(started.compress_request, cache_dir=cache_dir) == key
    assert log_count(JobFiles.of(key, cache_dir), "started attempt") == 1


def test_cancel_stops_a_held_compression_and_stores_nothing(started):
    key, cache_dir = started.held_compress_key, started.cache_dir
    running = wait_until_running(key, cache_dir)
    assert running.state == "running" and running.kind == "compression", running
    assert running.stage and 0 < running.fraction < 1 and running.eta_s is not None and running.eta_s > 0
    assert jobs.cancel(key, cache_dir=cache_dir) is True
    final = jobs.wait(key, WAIT_S, cache_dir=cache_dir)
    assert final.state == "cancelled", final
    assert not [s for s in stored_summaries(cache_dir) if s.get("job_key") == key]
    assert not (models_dir(cache_dir) / f"{key}.safetensors").exists()


def test_list_jobs_shows_failed_and_cancelled_but_not_done(started):
    for key in (started.slow_key, started.held_compress_key):  # held jobs end only when cancelled
        jobs.cancel(key, cache_dir=started.cache_dir)
    for key in started.all_keys():
        assert jobs.wait(key, WAIT_S, cache_dir=started.cache_dir).finished
    listed = {s.key: s.state for s in jobs.list_jobs(started.cache_dir)}
    assert listed == {started.slow_key: "cancelled", started.doomed_key: "failed", started.overflow_key: "failed"}
    compressions = {s.key: s.state for s in jobs.list_jobs(started.cache_dir, kind="compression")}
    assert compressions == {started.held_compress_key: "cancelled"}
    assert set(s.key for s in jobs.list_jobs(started.cache_dir, kind=None)) == set(listed) | set(compressions)


# ------------------------------------------------------------------------------------ the machine's queue
def test_the_machine_runs_one_job_at_a_time_in_the_order_asked(tmp_path, monkeypatch):
    """Three analyses asked for one after the other (as three browser sessions would) with one slot: the first
    runs (held after its first batch), the others wait with their places; the third is cancelled while it
    waits and is gone at once, never started; the second starts only once the first has ended."""
    monkeypatch.setenv(job_queue.SLOTS_ENV, "1")
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))
    cache_dir = str(tmp_path / "cache")
    images = f"folder:{write_images(tmp_path / 'images', per_class=4)}"
    keys = [jobs.submit(MODEL, images, AnalysisSettings(samples=8, batch_size=4, seed=seed), cache_dir=cache_dir)
            for seed in (11, 12, 13)]
    assert len(set(keys)) == 3
    first = wait_until_running(keys[0], cache_dir)
    assert first.state == "running", first

    def places():
        found = [jobs.status(key, cache_dir=cache_dir) for key in keys[1:]]
        return found if [s.queue_position for s in found] == [1, 2] else None

    second, third = wait_for(places)
    assert second.state == third.state == "queued"
    assert "1 job ahead" in second.message and "2 jobs ahead" in third.message
    assert third.elapsed_s > 0 and third.submitted > 0  # counts from the request, while it waits
    assert [s.key for s in jobs.queue(cache_dir)] == keys

    assert jobs.cancel(keys[2], cache_dir=cache_dir) is True
    gone = jobs.status(keys[2], cache_dir=cache_dir)  # at once: no wait
    assert gone.state == "cancelled" and "before it started" in gone.message
    assert log_count(JobFiles.of(keys[2], cache_dir), "started attempt") == 0
    assert keys[2] in {s.key for s in jobs.list_jobs(cache_dir)}  # it stays listed, with its state
    assert jobs.status(keys[1], cache_dir=cache_dir).queue_position == 1

    hold.unlink()
    finals = [jobs.wait(key, WAIT_S, cache_dir=cache_dir) for key in keys[:2]]
    assert [f.state for f in finals] == ["done", "done"], finals
    first_end = read_json(JobFiles.of(keys[0], cache_dir).progress)["updated"]
    second_start = read_json(JobFiles.of(keys[1], cache_dir).progress)["started"]
    assert second_start >= first_end  # never two at once
    assert jobs.queue(cache_dir) == []


def test_a_worker_that_does_not_obey_its_cancel_is_stopped_and_reported(tmp_path):
    """A job whose worker ignores the cancel flag (a stand-in process that only sleeps) is killed by the next
    reader of its status once the grace period is over, and published as cancelled."""
    cache_dir = str(tmp_path / "cache")
    key = "c" * 24
    files = JobFiles.of(key, cache_dir)
    files.folder.mkdir(parents=True)
    stuck = subprocess.Popen(["sleep", "600"])
    try:
        info = lock.LockInfo.for_process(stuck.pid, "attempt-1", "worker")
        files.lock.write_bytes(info.to_bytes())
        write_progress(files, state="running", token="attempt-1", message="statistics: batch 3/9", pid=stuck.pid)
        files.cancel.write_text("attempt-1")
        assert jobs.status(key, cache_dir=cache_dir).cancelling  # asked, inside the grace period: still running
        assert stuck.poll() is None
        past = time.time() - api.CANCEL_GRACE_S - 5
        os.utime(files.cancel, (past, past))
        final = jobs.status(key, cache_dir=cache_dir)
        assert final.state == "cancelled" and "stopped" in final.message, final
        assert stuck.wait(timeout=10) is not None
        assert not files.lock.exists()
    finally:
        if stuck.poll() is None:
            stuck.kill()


def test_a_cancel_is_obeyed_within_a_batch(tmp_path):
    """The data pass asks whether to stop at every layer of every batch: with the whole dataset in one batch,
    a stop asked after three layers ends the analysis before that batch is over, and nothing is stored."""
    from analysis.engine import Cancelled, analyze

    images = f"folder:{write_images(tmp_path / 'images', per_class=4)}"
    asked = {"n": 0}

    def should_stop() -> bool:
        asked["n"] += 1
        return asked["n"] > 3

    with pytest.raises(Cancelled):
        analyze(MODEL, images, samples=8, batch_size=8, cache_dir=str(tmp_path / "cache"), should_stop=should_stop)
    assert asked["n"] == 4  # the batch loop's own check, then one per layer: stopped at the third layer's input
    assert not list((tmp_path / "cache").glob("[0-9a-f]" * 24))


def test_job_clock_weighs_stages_by_their_work_and_never_goes_back():
    request = CompressionRequest(model=MODEL, samples=100, eval_samples=50)
    assert expected_stages(request) == [("analyse", 100.0), ("evaluate dense", 50.0), ("evaluate factorized", 50.0)]
    clock = JobClock(expected_stages(request), started=0.0)
    fraction, eta = clock.update("analyse", 50, 100, now=10.0)
    assert fraction == pytest.approx(50 / 200) and eta == pytest.approx(10.0 * 150 / 50)
    assert clock.update("analyse", 100, 100, now=20.0)[0] == pytest.approx(100 / 200)
    # a linear probe's feature pass (over the 100 analysed images) shows up inside each evaluation
    assert clock.update("evaluate dense: probe features", 100, 100, now=30.0)[0] == pytest.approx(200 / 400)
    assert clock.update("evaluate dense", 50, 50, now=40.0)[0] == pytest.approx(250 / 400)
    fraction, eta = clock.update("evaluate factorized", 50, 50, now=50.0)
    assert fraction == pytest.approx(300 / 400)  # its probe part not reported yet: still expected
    assert clock.update("evaluate factorized: probe features", 100, 100, now=60.0)[0] == pytest.approx(1.0)
    # an analysis read from the cache never reports: the evaluations are then the whole job
    cached = JobClock(expected_stages(request), started=0.0)
    assert cached.update("evaluate dense", 25, 50, now=5.0)[0] == pytest.approx(25 / 100)
    assert cached.update("evaluate dense", 10, 50, now=6.0)[0] == pytest.approx(25 / 100)  # never backwards
    tuned = CompressionRequest(model=MODEL, samples=100, eval_samples=50,
                               finetune=FinetuneSettings(steps=10, batch_size=4))
    clock = JobClock(expected_stages(tuned), finetune_step_cost=4 * 3.0, started=0.0)
    assert dict(expected_stages(tuned))["fine-tune"] == 10 * 4 * 3.0
    for stage, total in (("analyse", 100), ("evaluate dense", 50), ("evaluate factorized", 50)):
        clock.update(stage, total, total, now=1.0)
    fraction, eta = clock.update("fine-tune", 5, 10, now=2.0)  # 5 steps of 4 images, 3 forwards each
    assert fraction == pytest.approx((100 + 50 + 50 + 60) / (100 + 50 + 50 + 120 + 50))
    assert eta == pytest.approx(2.0 * (1 - fraction) / fraction)


# ---------------------------------------------------------------------------- the protocol, without workers
def test_a_reader_that_sees_a_final_state_never_finds_the_lock(tmp_path):
    """A worker's life (take the lock, report running, finish) against a reader polling status, many times:
    whenever the reader sees a final state the lock is already gone, and it never sees a finished worker as
    one that 'ended without reporting'."""
    cache_dir = str(tmp_path / "cache")
    key = "0a" * 12
    files = JobFiles.of(key, cache_dir)
    outcomes = ("cancelled", "failed", "done")
    for attempt in range(60):
        final_state = outcomes[attempt % 3]
        owner = lock.acquire(files, os.getpid(), "worker")
        assert owner is not None
        write_progress(files, state="running", kind="compression", token=owner.token, pid=os.getpid(),
                       batches_done=1, batches_total=2)
        finished = threading.Event()
        seen: list[tuple[str, bool, str]] = []

        def reader() -> None:
            while True:
                current = jobs.status(key, cache_dir=cache_dir)
                seen.append((current.state, files.lock.exists(), current.message))
                if current.state in ("done", "failed", "cancelled", "absent") and finished.is_set():
                    return

        thread = threading.Thread(target=reader)
        thread.start()
        extra = {}
        if final_state == "done":  # the result is stored while the worker still holds the lock
            stored = Path(cache_dir) / "compressions" / "r.json"
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text("{}")
            extra = {"result": stored.name}
        assert lock.release(files, owner.token, final={"state": final_state, "message": final_state,
                                                       "token": owner.token, "kind": "compression", **extra})
        finished.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()
        finals = [(state, held) for state, held, _ in seen if state not in ("queued", "running")]
        assert finals, seen
        assert all(not held for _, held in finals), seen  # final => lock already gone
        assert all("ended without reporting" not in message for _, _, message in seen), seen
        assert {state for state, _ in finals} == {final_state}
        files.progress.unlink()
        (Path(cache_dir) / "compressions" / "r.json").unlink(missing_ok=True)


def test_a_stored_result_under_a_live_lock_is_still_running(tmp_path, monkeypatch):
    """The worker stores the result, then publishes and releases: in between, readers say running."""
    cache_dir = str(tmp_path / "cache")
    key = "0b" * 12
    files = JobFiles.of(key, cache_dir)
    owner = lock.acquire(files, os.getpid(), "worker")
    write_progress(files, state="running", token=owner.token, batches_done=2, batches_total=2, fraction=1.0)
    monkeypatch.setattr(ResultCache, "has", lambda self, k: k == key)
    assert jobs.status(key, cache_dir=cache_dir).state == "running"
    assert lock.release(files, owner.token, final={"state": "done", "message": "done", "token": owner.token})
    final = jobs.status(key, cache_dir=cache_dir)
    assert final.state == "done" and not files.lock.exists()
    assert read_json(files.progress)["state"] == "done"
    # a release by an attempt that no longer owns the lock publishes nothing
    other = lock.acquire(files, os.getpid(), "worker")
    write_progress(files, state="running", token=other.token)
    assert lock.release(files, owner.token, final={"state": "failed", "token": owner.token}) is False
    assert read_json(files.progress)["state"] == "running" and files.lock.exists()
    assert lock.release(files, other.token)


def test_reading_an_unknown_job_creates_nothing(tmp_path):
    cache_dir = tmp_path / "cache"
    assert jobs.status("0c" * 12, cache_dir=str(cache_dir)).state == "absent"
    assert not cache_dir.exists()


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
