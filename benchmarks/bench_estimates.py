"""Estimate against reality: the time the app announces before a run (analysis.calibration) against the time
the run takes as a job, from the click (submit) to the stored result, worker start and queue included.

Every run goes through the app's own path: ``calibration.estimate_run_time`` (what the Analyze page shows),
then ``jobs.submit`` and ``jobs.wait`` on a fresh cache folder. The calibration file lives in that cache, so it
starts empty (rates measured once, no run seen) and learns from each finished run in order: the first runs are
estimated from the measured rates alone, later ones from other architectures' runs, and a repeated
architecture (at another image count) from its own. Prints one row per run, with the machine's contention
when it was estimated (``busy``: 1 is idle; see ``analysis.calibration.contention``), and the load.

    .venv/bin/python benchmarks/bench_estimates.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = [  # (model, dataset, images, max_width): zoo ViTs, timm ViTs and ResNets on CPU
    ("zoo:vit-fmnist-supervised", "fashion-mnist:test", 2000, None),
    ("random:vit_tiny_patch16_224", "fashion-mnist:test", 200, None),
    ("random:resnet18", "fashion-mnist:test", 100, 2304),
    ("zoo:vit-fmnist-mae", "fashion-mnist:test", 5000, None),
    ("random:vit_small_patch16_224", "fashion-mnist:test", 100, None),
    ("random:resnet50", "fashion-mnist:test", 50, 2304),
    ("random:vit_tiny_patch16_224", "fashion-mnist:test", 500, None),
    ("random:resnet18", "fashion-mnist:test", 300, 2304),
    ("random:resnet18", "fashion-mnist:test", 40, None),
]
QUICK = RUNS[:3] + RUNS[6:8]


def _load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="five runs instead of nine")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one run")
    parser.add_argument("--cache", default=None,
                        help="cache folder to use and keep (a second invocation on it shows what the first taught: "
                             "its results are cached, so each run's sample count is changed by --shift)")
    parser.add_argument("--shift", type=int, default=0, help="images added to every run (new keys on a kept cache)")
    args = parser.parse_args()

    from analysis import jobs
    from analysis.calibration import contention, estimate_run_time, rates
    from analysis.settings import AnalysisSettings
    from ui.text import duration, duration_range

    import torch

    print(f"date {dt.datetime.now().isoformat(timespec='seconds')}  machine {platform.machine()} {os.cpu_count()} "
          f"logical CPUs  torch {torch.__version__}  {_load()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-estimates-") as scratch:
        cache = args.cache or scratch
        measured = rates(cache)
        print(f"rates (an idle machine's; measured in {measured.measured_s:.1f} s at contention "
              f"{measured.contention:.1f}): matrix product {measured.forward / 1e9:.1f} GFLOP/s, "
              f"statistics {measured.stats / 1e9:.2f} G rows*d^2/s, eigen {measured.eig / 1e9:.2f} G d^3/s")
        print(f"{'model':32s} {'images':>6s} {'max_width':>9s} {'estimate':>16s} {'central':>9s} {'actual':>9s} "
              f"{'actual/central':>14s} {'busy':>5s}  basis")
        for model, dataset, images, max_width in (QUICK if args.quick else RUNS):
            images += args.shift
            settings = AnalysisSettings(samples=images, max_width=max_width)
            busy = contention()
            estimate = estimate_run_time(model, dataset, settings, cache)
            start = time.monotonic()
            key = jobs.submit(model, dataset, settings, cache_dir=cache)
            final = jobs.wait(key, args.timeout, cache_dir=cache, poll_s=0.5)
            actual = time.monotonic() - start
            if final.state != "done":
                print(f"{model}: {final.state} {final.message}")
                continue
            ratio = actual / estimate.seconds
            inside = estimate.low <= actual <= estimate.high
            rows.append((model, images, ratio, inside))
            print(f"{model:32s} {images:6d} {str(max_width or '-'):>9s} "
                  f"{duration_range(estimate.low, estimate.high):>16s} {duration(estimate.seconds):>9s} "
                  f"{duration(actual):>9s} {ratio:14.2f} {busy:5.1f}  {estimate.basis}"
                  f"{'' if inside else ' (outside the range)'}",
                  flush=True)
    within = sum(1 for *_, ratio, _ in rows if 0.5 <= ratio <= 2.0)
    print(f"{within} of {len(rows)} runs within 2x of the central estimate; "
          f"{sum(1 for *_, inside in rows if inside)} inside the range shown; {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
