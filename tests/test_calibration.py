"""Time estimates a user can plan by (analysis.calibration) and the running job's clock (analysis_job).

Known answers: the work of a model is counted from its layers exactly as the module docstring says; the
meta-device FLOP count equals the count of a real forward; after one recorded run, the estimate of the same
work is exactly what that run measured (the learnt factors are its own ratios); the clock's time left is
the remaining batches at the speed of the batches done, plus the predicted tail.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis import calibration
from analysis.engine import plan
from analysis.jobs.analysis_job import AnalysisClock
from analysis.progress import Progress
from analysis.settings import AnalysisSettings
from tests.helpers import TINY_VIT

DATASET = "fashion-mnist:test"
RATES = calibration.Rates(forward=2e10, stats=5e9, eig=1e9)


@pytest.fixture
def fixed_rates(monkeypatch):
    """Rates without a measurement (the measurement itself has its own test)."""
    calls = []

    def fake_measure(device="cpu"):
        calls.append(device)
        return RATES

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


def test_the_measurement_gives_positive_rates_and_is_kept(tmp_path, monkeypatch):
    measured = calibration.measure("cpu")
    assert measured.forward > 0 and measured.stats > 0 and measured.eig > 0
    monkeypatch.setattr(calibration, "measure", lambda device="cpu": measured)
    assert calibration.rates(tmp_path) == measured
    monkeypatch.setattr(calibration, "measure", lambda device="cpu": pytest.fail("measured twice"))
    assert calibration.rates(tmp_path) == measured  # read back from the calibration file
    (stored,) = (tmp_path / calibration.FOLDER).glob("*.json")
    assert json.loads(stored.read_text())["rates"]["eig"] == pytest.approx(measured.eig)


def test_work_is_counted_from_the_layers_and_the_pass_is_measured(tmp_path):
    settings = AnalysisSettings(samples=32)
    the_plan = plan(TINY_VIT, DATASET, settings)
    work = calibration.work_of(the_plan)
    assert work.images == 32 and work.device == "cpu" and work.arch.endswith("@32x32") and work.layers == 10
    # the tiny ViT: width 48, MLP 192, 2 blocks; the patch embedding 3 x 8 x 8 -> 48; a head 48 -> 5 (all biased)
    halves_and_snapshots = 1 + 0.2 * (2 + 6)  # error bars on: two halves and six snapshots, eigenvalues only
    shapes = [(192, 48), (48, 5)] + 2 * [(48, 144), (48, 48), (48, 192), (192, 48)]
    expected = sum((d_in ** 3 + min(d_out, d_in + 1) ** 3) * halves_and_snapshots + d_in * d_out * (d_in + d_out)
                   for d_in, d_out in shapes)
    assert work.eigen == pytest.approx(expected)
    assert 0 < work.image_s < float("inf")  # measured on the run's own model and data
    assert not list(tmp_path.iterdir())  # the probe stores nothing
    assert next(the_plan.loaded.model.parameters()).device.type == "cpu"


def test_the_forward_flops_of_the_meta_pass_are_those_of_a_real_forward():
    from torch.utils.flop_counter import FlopCounterMode

    the_plan = plan(TINY_VIT, DATASET, AnalysisSettings(samples=4))
    model, size = the_plan.loaded.model, tuple(the_plan.loaded.data_config["input_size"])
    for block in model.blocks:  # explicit attention products (the CPU's fused kernel is not counted by torch)
        block.attn.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *size))
    real = counter.get_total_flops()
    assert real > 0 and calibration.forward_flops(model, size) == pytest.approx(real)
    # with the fused kernel the meta pass still counts the attention products (q k^T, and the weights times v)
    model_fused = plan(TINY_VIT, DATASET, AnalysisSettings(samples=4)).loaded.model
    assert calibration.forward_flops(model_fused, size) == pytest.approx(real)


@pytest.mark.parametrize("post_s", [9.0, 0.5])  # a tail mostly per layer, and one slower than the decompositions
def test_recorded_runs_teach_the_estimate_of_their_architecture(tmp_path, fixed_rates, monkeypatch, post_s):
    monkeypatch.setattr(calibration, "contention", lambda: 1.0)  # an idle machine
    work = calibration.Work(images=1000, image_s=0.01, eigen=2e9, layers=20, arch="net@28x28")
    before = calibration.predict(work, tmp_path)  # work.batch = 0: no first batch counted apart
    assert before.basis == "measured rates only" and before.high / before.low == pytest.approx(4.0)
    assert before.start_s == calibration.DEFAULTS["start_s"] and before.pass_s == pytest.approx(10.0)
    assert before.post_s == pytest.approx(20 * calibration.DEFAULTS["layer_s"] + 2e9 / RATES.eig)

    observed = calibration.Observed(start_s=6.0, pass_s=40.0, post_s=post_s)
    for _ in range(8):  # eight runs that saw the same: their lesson weighs 8 against the defaults' 2
        calibration.record_run(tmp_path, work, observed)
    after = calibration.predict(work, tmp_path)
    assert after.basis == "same architecture"
    assert after.start_s == pytest.approx((8 * 6.0 + 2 * calibration.DEFAULTS["start_s"]) / 10)
    probed = 10.0 * 4.0 ** 0.8  # the probe's 10 s times c_pass = 4 (40 s against 1,000 x 0.01 s), shrunk
    # and the same model and settings' whole passes (40 s) weigh 8 against the probe's 2, geometrically
    assert after.pass_s == pytest.approx(math.exp((8 * math.log(40.0) + 2 * math.log(probed)) / 10))
    eigen_s = 2e9 / RATES.eig
    if post_s >= eigen_s:  # the rest of the tail per layer
        layer_s = (8 * (post_s - eigen_s) / 20 + 2 * calibration.DEFAULTS["layer_s"]) / 10
        assert after.post_s == pytest.approx(20 * layer_s + eigen_s)
    else:  # slower decompositions
        layer_s = 2 * calibration.DEFAULTS["layer_s"] / 10
        assert after.post_s == pytest.approx(20 * layer_s + eigen_s * (post_s / eigen_s) ** 0.8)
    assert after.high / after.seconds == pytest.approx(calibration.SPREAD["same architecture"])

    twice = calibration.Work(images=2000, image_s=0.01, eigen=2e9, layers=20, arch="net@28x28")
    assert calibration.predict(twice, tmp_path).pass_s == pytest.approx(2 * after.pass_s)  # scales with the images
    other = calibration.Work(images=1000, image_s=0.01, eigen=2e9, layers=20, arch="other@28x28")
    assert calibration.predict(other, tmp_path).basis == "other runs"
    assert fixed_rates == ["cpu"]  # measured once, then read from the file


def test_a_busy_machine_is_taken_into_account(tmp_path, fixed_rates, monkeypatch):
    """Runs on a machine three times busier taught the start, the tail and the pass of an idle one; an estimate
    on a machine twice busier doubles them (the probe, measured at the load of the moment, needs nothing)."""
    work = calibration.Work(images=100, image_s=0.1, eigen=3e9, layers=10, arch="net@28x28")
    monkeypatch.setattr(calibration, "contention", lambda: 3.0)
    for _ in range(20):  # the last 20 runs count, against the defaults' 2
        calibration.record_run(tmp_path, work, calibration.Observed(start_s=30.0, pass_s=10.0, post_s=12.0,
                                                                     contention=3.0))
    monkeypatch.setattr(calibration, "contention", lambda: 2.0)
    estimate = calibration.predict(work, tmp_path)
    assert estimate.start_s == pytest.approx(2 * (20 * 30.0 / 3 + 2 * calibration.DEFAULTS["start_s"]) / 22)
    eigen_s = 3e9 / RATES.eig
    layer_s = (20 * (12.0 / 3 - eigen_s) / 10 + 2 * calibration.DEFAULTS["layer_s"]) / 22
    assert estimate.post_s == pytest.approx(2 * (10 * layer_s + eigen_s))
    history = 10.0 / 3 * 2  # its passes took 10 s at contention 3: 10 / 3 on an idle machine, twice that now
    assert estimate.pass_s == pytest.approx(math.exp((20 * math.log(history) + 2 * math.log(10.0)) / 22))


def test_contention_is_the_fair_share_of_this_run_s_threads_beside_the_other_load(monkeypatch):
    monkeypatch.setattr(calibration, "_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(calibration, "cpu_share", lambda seconds=0.2: 1.0)
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 0.0)
    assert calibration.contention() == 1.0  # idle, or busy only with niced work
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 1.0)
    assert calibration.contention() == pytest.approx(1.5)  # one busy process beside a 2-thread run on 2 cores
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 2.0)
    assert calibration.contention() == pytest.approx(2.0)  # one on every core
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 1.0)
    assert calibration.contention() == 1.0  # a one-thread run still has a core of its own
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 2.0)
    monkeypatch.setattr(calibration, "cpu_share", lambda seconds=0.2: 1 / 15)
    assert calibration.contention() == pytest.approx(15.0)  # oversubscribed: the other load saturates at C
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: 100.0)
    assert calibration.contention() == 20.0  # bounded


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc")
def test_other_load_sees_a_busy_process_outside_this_one():
    """A busy loop that is not this process's descendant (started through a parent that exits at once, so it is
    re-parented): its core counts as other work."""
    if os.nice(0) > 0:
        pytest.skip("the busy process would inherit this niceness and rightly count as niced work")
    spawner = subprocess.run([sys.executable, "-c", "import subprocess, sys; "
                              "print(subprocess.Popen([sys.executable, '-c', 'while True: pass'], stdin=subprocess.DEVNULL, "
                              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True).pid)"],
                             capture_output=True, text=True, check=True, timeout=60)
    hog = int(spawner.stdout.strip())
    try:
        time.sleep(0.3)
        assert calibration.other_load(0.5) >= 0.5  # the hog's core (whatever else runs beside it)
    finally:
        os.kill(hog, signal.SIGKILL)


def test_other_load_leaves_out_this_process_its_children_and_niced_work(monkeypatch):
    """Five processes over the interval: this one, its child (a job's loader worker), an unrelated busy one, a
    niced one, and one started meanwhile; plus the hypervisor's steal. Only the unrelated, the new one and the
    steal count."""
    tick, me = os.sysconf("SC_CLK_TCK"), os.getpid()
    snapshots = iter([
        {me: (1, 0, 100), 9001: (me, 0, 50), 9002: (1, 0, 10), 9003: (1, 19, 0)},
        {me: (1, 0, 100 + 4 * tick), 9001: (me, 0, 50 + 3 * tick), 9002: (1, 0, 10 + 2 * tick),
         9003: (1, 19, 5 * tick), 9004: (1, 0, tick)},
    ])
    steals = iter([7, 7 + tick])
    monkeypatch.setattr(calibration, "_processes", lambda: next(snapshots))
    monkeypatch.setattr(calibration, "_steal_ticks", lambda: next(steals))
    start = time.perf_counter()
    load = calibration.other_load(0.05)
    wall = time.perf_counter() - start
    assert load == pytest.approx(4.0 / 0.05, rel=0.5) and load <= 4.0 / 0.05 and load >= 4.0 / wall


def test_contention_without_proc_stat_is_the_inverse_of_the_share_of_a_core(monkeypatch):
    assert 0 < calibration.cpu_share(0.05) <= 1.0
    monkeypatch.setattr(calibration, "other_load", lambda seconds=0.2: None)
    monkeypatch.setattr(calibration, "cpu_share", lambda seconds=0.2: 0.5)
    assert calibration.contention() == pytest.approx(2.0)  # another process on every core
    monkeypatch.setattr(calibration, "cpu_share", lambda seconds=0.2: 1.0)
    assert calibration.contention() == 1.0  # idle, or busy only with niced work
    monkeypatch.setattr(calibration, "cpu_share", lambda seconds=0.2: 0.0)
    assert calibration.contention() == 20.0  # bounded


def test_long_runs_are_flagged():
    short = calibration.TimeEstimate(seconds=30, low=15, high=60, start_s=8, pass_s=20, post_s=2, basis="other runs")
    long = calibration.TimeEstimate(seconds=calibration.LONG_RUN_S + 1, low=1, high=2, start_s=0, pass_s=0,
                                    post_s=0, basis="other runs")
    assert not short.long and long.long


def test_the_clock_takes_the_time_left_from_the_batches_after_the_first():
    clock = AnalysisClock(started=100.0, post_s=20.0)
    fraction, left = clock.update(Progress("statistics", 1, 10, 32, 320, elapsed_s=8.0), now=113.0)
    assert left == pytest.approx(9 * 8.0 + 20.0)  # the first batch alone (discovery, self-check): an upper bound
    fraction, left = clock.update(Progress("statistics", 2, 10, 64, 320, elapsed_s=10.0), now=115.0)
    assert left == pytest.approx((10 - 2) * 2.0 + 20.0)  # 8 batches at the second's 2 s, then the predicted tail
    assert fraction == pytest.approx(15.0 / (15.0 + left))
    slower, left_later = clock.update(Progress("statistics", 3, 10, 96, 320, elapsed_s=60.0), now=165.0)
    assert left_later == pytest.approx(7 * 26.0 + 20.0)  # the real speed, not the prediction, decides
    assert slower >= fraction  # never goes back
    assert clock.image_s == pytest.approx(52.0 / 64)  # the batches after the first: what a probe measures
    clock.update(Progress("statistics", 10, 10, 320, 320, elapsed_s=200.0), now=305.0)
    _, tail = clock.update(Progress("spectra", 1, 4, 320, 320), now=310.0)
    assert tail == pytest.approx(max(20.0 - 5.0, 5.0 * 3 / 1))
    observed = clock.observed(end=330.0)
    # the first batch is timed apart: 8 s for 32 images; the pass after it 192 s for 288 images
    assert (observed.start_s, observed.first_s, observed.pass_s, observed.post_s) == pytest.approx((5.0, 8.0, 192.0, 25.0))
    assert (observed.first_images, observed.pass_images) == (32, 288)


def test_a_short_runs_first_batch_is_not_learnt_as_a_slower_pass(tmp_path, fixed_rates, monkeypatch):
    """Two batches of which the first (discovery, self-check) took three times the second: the time per image
    learnt is the second's, and the first batch's cost is learnt apart (c_first), so a long run of the same
    model is predicted at the second batch's speed plus one slow first batch."""
    monkeypatch.setattr(calibration, "contention", lambda: 1.0)
    short = calibration.Work(images=64, image_s=0.05, eigen=0.0, layers=1, arch="net@28x28", batch=32)
    observed = calibration.Observed(start_s=5.0, pass_s=32 * 0.05, post_s=0.15, first_s=3 * 32 * 0.05,
                                    first_images=32, pass_images=32)
    for _ in range(20):
        calibration.record_run(tmp_path, short, observed)
    long = calibration.Work(images=3200, image_s=0.05, eigen=0.0, layers=1, arch="net@28x28", batch=32)
    estimate = calibration.predict(long, tmp_path)
    c_first = math.exp((20 * math.log(3.0) + 2 * math.log(calibration.DEFAULTS["c_first"])) / 22)  # shrunk
    start = (20 * 5.0 + 2 * calibration.DEFAULTS["start_s"]) / 22
    assert estimate.start_s == pytest.approx(start + c_first * 32 * 0.05)
    assert estimate.pass_s == pytest.approx((3200 - 32) * 0.05)  # not 2x: the first batch is not in it
