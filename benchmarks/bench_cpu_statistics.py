"""Forward-only against forward + statistics throughput on the CPU, and the eigen-decompositions, side by side.

Model ``random:vit_tiny_patch16_224`` (every Linear/Conv hooked, every token used), fixed random input
batches (no data loading, so only compute is compared), ``torch.inference_mode``, ``--threads`` torch
threads. Each repeat runs, alternating: forward only; then forward + statistics with each CPU method of
:mod:`kernels.reference` (``CPU_METHOD``): the full float32 GEMM (``"gemm"``, the first CPU path), the
symmetric rank-k update through SciPy's OpenBLAS (``"syrk"``) and the block rows of the lower triangle in
torch's own pool (``"blocked"``, the default). The collector keeps split halves as the engine's default
(``uncertainty=True``) does, unless ``--no-halves``. Each statistics timing follows one untimed batch in the
same collector, which carries the first-batch discovery and self-check (:mod:`analysis.capture`, once per
analysis), so the timed batches are the steady state. The table gives the median images/s of each and the
ratios of medians to forward-only.

Then the eigen-decompositions of every layer's C_in and C_out (float64), alternating, median of
``--eig-repeats``: "before" = every C_in and the explicitly formed C_out decomposed directly, one after the
other on one thread (the former engine); "now, k workers" = :func:`analysis.spectra.layer_eigen` (output
moments through the (d_in + 1) problem when d_out > d_in + 1) with k worker threads
(:data:`analysis.spectra.CPU_WORKERS`, each matrix on one LAPACK thread), for k in ``--eig-workers``. With
``--busy`` a CPU-bound process (a Python busy loop, started and stopped by this script) runs beside the
eigen timings, as on a machine shared with other work.

    .venv/bin/python benchmarks/bench_cpu_statistics.py [--batch-size 32] [--batches 4] [--repeats 5] [--busy]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import spectra  # noqa: E402
from analysis.models import describe_layers, load  # noqa: E402
from analysis.models.layers import weight_matrix  # noqa: E402
from analysis.spectra import AffineLayer, eigen_batched, layer_eigen, layer_output_second_moment  # noqa: E402
from analysis.statistics import MomentCollector  # noqa: E402
from analysis.uncertainty import half_order  # noqa: E402
from kernels import reference  # noqa: E402


def _throughput(model, batches, collector=None) -> float:
    start = time.perf_counter()
    first = 0
    with torch.inference_mode():
        for batch in batches:
            if collector is not None:  # as the engine does: image ids, each half's images together
                ids = torch.arange(first, first + batch.shape[0])
                if collector.n_halves == 2:
                    order = half_order(ids)
                    batch, ids = batch[order], ids[order]
                collector.begin_batch(ids)
            first += batch.shape[0]
            model(batch)
            if collector is not None:
                collector.next_batch()
    return sum(b.shape[0] for b in batches) / (time.perf_counter() - start)


def _eigen_before(moments, specs) -> float:
    """The former engine: C_out formed explicitly, every matrix decomposed directly, one thread."""
    start = time.perf_counter()
    c_out = {spec.name: layer_output_second_moment(spec, moments[spec.name].second_moment,
                                                   moments[spec.name].column_sum, moments[spec.name].count)
             for spec in specs}
    previous = spectra.CPU_WORKERS
    spectra.CPU_WORKERS = 1
    try:
        eigen_batched({n: m.second_moment for n, m in moments.items()})
        eigen_batched(c_out)
    finally:
        spectra.CPU_WORKERS = previous
    return time.perf_counter() - start


def _eigen_now(layers, workers: int) -> float:
    previous = spectra.CPU_WORKERS
    spectra.CPU_WORKERS = workers
    try:
        start = time.perf_counter()
        layer_eigen(layers, "cpu")
        return time.perf_counter() - start
    finally:
        spectra.CPU_WORKERS = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:vit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eig-repeats", type=int, default=3)
    parser.add_argument("--eig-workers", default="1,2")
    parser.add_argument("--no-halves", action="store_true", help="one running sum per layer (uncertainty off)")
    parser.add_argument("--busy", action="store_true", help="run a CPU-bound process beside the eigen timings")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    loaded = load(args.model)
    model = loaded.model
    specs = [s for s in describe_layers(model) if s.applicable]
    size = loaded.data_config["input_size"]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *size, generator=gen) for _ in range(args.batches)]
    _throughput(model, batches[:1])  # warm-up

    labels = {"gemm": "forward + statistics, full GEMM (MKL, torch's threads)",
              "syrk": f"forward + statistics, ssyrk (OpenBLAS, {reference.SYRK_THREADS} thread)",
              "blocked": "forward + statistics, lower block rows (MKL, torch's threads; the default)"}
    modes: dict[str, list[float]] = {"forward only": [], **{label: [] for label in labels.values()}}
    collector = MomentCollector(specs, halves=not args.no_halves)
    repeats = 0 if args.skip_throughput else args.repeats
    with collector:
        _throughput(model, batches[:1], collector)  # warm-up of the hooks (and SciPy's import)
    for _ in range(repeats):
        print("  repeat", file=sys.stderr, flush=True)
        modes["forward only"].append(_throughput(model, batches))
        for method, label in labels.items():
            reference.CPU_METHOD = method
            with collector:
                # entering the collector starts a new discovery + self-check on its first batch (once per
                # analysis in the engine): run it untimed, so the timed batches are the steady state
                _throughput(model, batches[:1], collector)
                modes[label].append(_throughput(model, batches, collector))
    reference.CPU_METHOD = "blocked"
    if not repeats:  # statistics for the eigen timings only
        with collector:
            _throughput(model, batches, collector)

    moments = collector.moments()
    layers = {spec.name: AffineLayer(weight_matrix(spec.module).detach(),
                                     spec.module.bias.detach() if spec.has_bias else None,
                                     moments[spec.name].second_moment, moments[spec.name].column_sum,
                                     moments[spec.name].count)
              for spec in specs}
    threads = [int(t) for t in args.eig_workers.split(",") if t.strip()]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        eig: dict[str, list[float]] = {"before (direct, 1 thread)": []}
        eig_labels = {k: f"now ({k} worker{'s' if k > 1 else ''}, 1 LAPACK thread each)" for k in threads}
        eig.update({eig_labels[k]: [] for k in threads})
        for _ in range(args.eig_repeats):
            eig["before (direct, 1 thread)"].append(_eigen_before(moments, specs))
            print(f"  eigen before: {eig['before (direct, 1 thread)'][-1]:.2f} s", file=sys.stderr, flush=True)
            for k in threads:
                eig[eig_labels[k]].append(_eigen_now(layers, k))
                print(f"  eigen {eig_labels[k]}: {eig[eig_labels[k]][-1]:.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()

    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  cpu {platform.processor() or platform.machine()}  "
          f"cores {os.cpu_count()}  load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"model {args.model}: {len(specs)} layers hooked, batch {args.batch_size} x {args.batches} batches, "
          f"{args.repeats} repeats (median), split halves {'off' if args.no_halves else 'on (the default)'}")
    if repeats:
        forward = statistics.median(modes["forward only"])
        print("| mode | images/s | ratio to forward only |")
        print("|---|---|---|")
        for label, values in modes.items():
            m = statistics.median(values)
            print(f"| {label} | {m:.1f} | {m / forward:.3f} |")
    if not args.eig_repeats:
        return
    print(f"eigen-decompositions of every layer's C_in and C_out ({len(specs)} layers, float64), median of "
          f"{args.eig_repeats}{', a CPU-bound process beside them' if args.busy else ''}:")
    print("| method | seconds | all runs |")
    print("|---|---|---|")
    for label, values in eig.items():
        print(f"| {label} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
