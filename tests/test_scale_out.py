"""Scale-out and fault tolerance: torchrun data-parallel statistics equal a single process; a job killed
with SIGKILL resumes from its checkpoint and ends with the uninterrupted result."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import jobs
from analysis.cache import ResultCache
from analysis.engine import analyze, compute, plan
from analysis.jobs.worker import BATCH_DELAY_ENV
from analysis.partial import PartialStore
from analysis.settings import AnalysisSettings

from .helpers import TINY_VIT, make_image_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder_id(tmp_path_factory):
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('scale_images'), per_class=11, classes=3)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_give_the_single_process_statistics_and_table(folder_id, tmp_path):
    cache_dir = tmp_path / "dist-cache"
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "analysis", "run", "--model", TINY_VIT, "--dataset",
               folder_id, "--samples", "31", "--batch-size", "4", "--keep-moments", "--quiet"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks      2" in done.stdout
    key = done.stdout.split("key", 1)[1].split()[0]
    cache = ResultCache(cache_dir)
    distributed_result, distributed_moments = cache.load(key), cache.load_moments(key)
    assert distributed_result.meta.world_size == 2 and distributed_result.meta.n_images == 31

    settings = AnalysisSettings(samples=31, batch_size=4, keep_moments=True)
    the_plan = plan(TINY_VIT, folder_id, settings)
    assert the_plan.key == key  # same analysis, same cache entry
    single, moments = compute(the_plan)
    assert set(moments) == set(distributed_moments)
    for name, tensor in moments.items():
        # other batches: each batch's float32 product x^T x rounds differently (measured ~2e-7 of the largest entry)
        scale = float(tensor.abs().max()) or 1.0
        torch.testing.assert_close(distributed_moments[name], tensor, rtol=0, atol=1e-5 * scale, msg=name)
    columns = ["layer", "k_in", "k_out", "rank", "utilization", "params_factorized", "n_samples"]
    assert distributed_result.layers[columns].equals(single.layers[columns])


def test_partial_statistics_resume_to_the_uninterrupted_result(folder_id, tmp_path, monkeypatch):
    """In-process: stop after 3 batches with a checkpoint every batch, then finish from the checkpoint."""
    monkeypatch.setenv("ANALYSIS_CHECKPOINT_BATCHES", "1")
    settings = AnalysisSettings(samples=30, batch_size=4)
    the_plan = plan(TINY_VIT, folder_id, settings)
    store = PartialStore(tmp_path, the_plan.key, 4)

    def stop_after_three() -> bool:  # asked at every layer of every batch: stop once batch 3 is checkpointed
        saved = store.load()
        return saved is not None and saved.batches_done >= 3

    from analysis.engine import Cancelled

    with pytest.raises(Cancelled):
        compute(the_plan, partial=store, should_stop=stop_after_three)
    assert store.load().batches_done == 3
    resumed, _ = compute(plan(TINY_VIT, folder_id, settings), partial=PartialStore(tmp_path, the_plan.key, 4))
    assert resumed.meta.resumed_from_batch == 3 and resumed.meta.n_images == 30
    uninterrupted, _ = compute(plan(TINY_VIT, folder_id, settings))
    for a, b in zip(resumed.spectra, uninterrupted.spectra):
        np.testing.assert_array_equal(a.eig_in, b.eig_in)
        np.testing.assert_array_equal(a.eig_out, b.eig_out)


def test_a_checkpoint_from_another_batch_size_is_ignored(folder_id, tmp_path):
    store = PartialStore(tmp_path, "0" * 24, 4)
    store.save({"x": torch.zeros(2)}, 2, 8)
    assert PartialStore(tmp_path, "0" * 24, 8).load() is None
    assert PartialStore(tmp_path, "0" * 24, 4).load().batches_done == 2
    store.path.write_bytes(b"not a safetensors file")
    assert PartialStore(tmp_path, "0" * 24, 4).load() is None


def _wait(predicate, timeout: float = 240.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")


def test_a_job_killed_with_sigkill_resumes_and_ends_with_the_uninterrupted_result(folder_id, tmp_path, monkeypatch):
    cache_dir = tmp_path / "job-cache"
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("ANALYSIS_CHECKPOINT_BATCHES", "1")
    monkeypatch.setenv(BATCH_DELAY_ENV, "0.4")
    settings = AnalysisSettings(samples=33, batch_size=3)
    key = jobs.submit(TINY_VIT, folder_id, settings)
    partial = cache_dir / ".partial" / f"{key}.safetensors"
    _wait(lambda: partial.is_file() and (jobs.status(key).batches_done or 0) >= 3)
    pid = jobs.status(key).pid
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not _alive(pid), timeout=30)
    done_before = PartialStore(cache_dir, key, 3).load().batches_done
    assert 3 <= done_before < 11

    monkeypatch.setenv(BATCH_DELAY_ENV, "0")
    assert jobs.submit(TINY_VIT, folder_id, settings) == key  # the dead worker's lock is taken over
    final = jobs.wait(key, timeout_s=300)
    assert final.state == "done", final.message
    resumed = ResultCache(cache_dir).load(key)
    assert resumed.meta.resumed_from_batch >= done_before
    assert not partial.exists()
    uninterrupted = analyze(TINY_VIT, folder_id, samples=33, batch_size=3, use_cache=False)
    for a, b in zip(resumed.spectra, uninterrupted.spectra):
        np.testing.assert_array_equal(a.eig_in, b.eig_in)
        np.testing.assert_array_equal(a.eig_out, b.eig_out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True
