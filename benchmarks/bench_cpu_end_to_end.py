"""A whole default analysis on the CPU against the forward pass alone, in one process (issue 28).

Two ratios, each of medians over ``--repeats`` alternated runs in this one process:

- ``forward / analysis``: seconds of the forward pass alone over the analysed images (the same loader,
  batch size and dataset as the analysis, ``torch.inference_mode``, data loading included) divided by the
  seconds of the whole analysis with the default settings (split halves and convergence snapshots on,
  i.e. uncertainty on), from planning to the stored cache entry (:func:`analysis.engine.run_plan` into a
  fresh cache folder each time, so the cache write is counted and nothing is read from a cache);
- ``uncertainty cost``: the default analysis' seconds divided by the same analysis with
  ``uncertainty=False``.

Both are also given in CPU seconds (this process' threads and its finished children, i.e. the loader's
workers): on a machine shared with other work the wall-clock ratios move with the neighbours' load from one
run to the next, the CPU-time ratios much less (they count the work done, not the waiting).

Model ``random:vit_tiny_patch16_224`` (every Linear/Conv analysed, every token used), ``--samples`` images
of ``fashion-mnist:test`` (the default dataset), ``--threads`` torch threads. With ``--busy N`` this script
starts N CPU-bound processes (Python busy loops at the default niceness) for the whole measurement and
stops them at the end, as on a machine shared with other work. ``--profile FILE`` writes a cProfile of one
extra default analysis (after the timed runs) and prints its top entries; ``--timings`` prints the
analysis' own stage timings (:class:`analysis.meta.Timings`) of every run.

    .venv/bin/python benchmarks/bench_cpu_end_to_end.py                 # prints the two ratios
    .venv/bin/python benchmarks/bench_cpu_end_to_end.py --busy 2 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.data import make_loader  # noqa: E402
from analysis.engine import plan, run_plan  # noqa: E402
from analysis.settings import AnalysisSettings  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the loader's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def forward_seconds(the_plan) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of the forward pass alone over the plan's images, through the same loader."""
    model = the_plan.loaded.model
    loader = make_loader(the_plan.dataset, batch_size=the_plan.settings.effective_batch_size(), device="cpu")
    start, cpu = time.perf_counter(), _cpu_seconds()
    with torch.inference_mode():
        for batch, _labels in loader:
            model(batch)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def analysis_seconds(the_plan) -> tuple[float, float, object]:
    """``(wall, CPU)`` seconds of a whole analysis of the plan into a fresh cache folder (the cache write
    included), and its Result."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as cache_dir:
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = run_plan(the_plan, cache_dir=cache_dir)
        return time.perf_counter() - start, _cpu_seconds() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:vit_tiny_patch16_224")
    parser.add_argument("--dataset", default="fashion-mnist:test")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the measurement")
    parser.add_argument("--profile", default=None, help="write a cProfile of one extra default analysis here")
    parser.add_argument("--timings", action="store_true", help="print each analysis' stage timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    plans = {
        "default": plan(args.model, args.dataset, AnalysisSettings(samples=args.samples)),
        "no uncertainty": plan(args.model, args.dataset, AnalysisSettings(samples=args.samples, uncertainty=False)),
    }
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs: dict[str, list[float]] = {"forward": [], "default": [], "no uncertainty": []}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    loads: list[float] = []
    try:
        forward_seconds(plans["default"])  # warm-up: page cache, thread pools, first-call allocations
        for repeat in range(args.repeats):
            wall, used = forward_seconds(plans["default"])
            runs["forward"].append(wall)
            cpu["forward"].append(used)
            for label, the_plan in plans.items():
                wall, used, result = analysis_seconds(the_plan)
                runs[label].append(wall)
                cpu[label].append(used)
                if args.timings:
                    print(f"  {label}: {wall:.2f} s, timings {result.meta.timings}", file=sys.stderr, flush=True)
            loads.append(os.getloadavg()[0])
            print(f"  repeat {repeat + 1}: forward {runs['forward'][-1]:.2f} s, default {runs['default'][-1]:.2f} s, "
                  f"no uncertainty {runs['no uncertainty'][-1]:.2f} s (load average {loads[-1]:.1f})",
                  file=sys.stderr, flush=True)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            analysis_seconds(plans["default"])
            profiler.disable()
            profiler.dump_stats(args.profile)
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    load_end = os.getloadavg()
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}  "
          f"torch {torch.__version__}  threads {args.threads}  cores {os.cpu_count()}  busy processes {args.busy}  "
          f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"(after each repeat: {', '.join(f'{v:.1f}' for v in loads)})")
    print(f"{args.model} on {args.samples} images of {args.dataset}, median of {args.repeats} alternated runs")
    print("| run | wall s (median) | all runs | CPU s (median; process + loader workers) |")
    print("|---|---|---|---|")
    for label, values in runs.items():
        print(f"| {label} | {med[label]:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {med_cpu[label]:.1f} |")
    print(f"forward / analysis (defaults, uncertainty on): {med['forward'] / med['default']:.3f}  "
          f"(CPU time: {med_cpu['forward'] / med_cpu['default']:.3f})")
    print(f"uncertainty cost (default / no uncertainty): {med['default'] / med['no uncertainty']:.3f}  "
          f"(CPU time: {med_cpu['default'] / med_cpu['no uncertainty']:.3f})")


if __name__ == "__main__":
    main()
