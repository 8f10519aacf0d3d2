"""Forward-only against forward + statistics throughput on the CPU, side by side in one run.

Model ``random:vit_tiny_patch16_224`` (every Linear/Conv hooked, every token used), fixed random input
batches (no data loading, so only compute is compared), ``torch.inference_mode``. Each measurement
alternates the two modes ``--repeats`` times and reports the median images/s of each and the ratio of
medians. Then the eigen-decompositions of every layer's C_in and C_out (float64, batched by shape) are
timed on their own, as the engine runs them.

    .venv/bin/python benchmarks/bench_cpu_statistics.py [--batch-size 32] [--batches 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.models import describe_layers, load  # noqa: E402
from analysis.spectra import eigen_batched, layer_output_second_moment  # noqa: E402
from analysis.statistics import MomentCollector  # noqa: E402


def _throughput(model, batches, collector=None) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch)
            if collector is not None:
                collector.next_batch()
    return sum(b.shape[0] for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:vit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    loaded = load(args.model)
    model = loaded.model
    specs = [s for s in describe_layers(model) if s.applicable]
    size = loaded.data_config["input_size"]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *size, generator=gen) for _ in range(args.batches)]
    _throughput(model, batches[:1])  # warm-up

    forward, with_stats = [], []
    collector = MomentCollector(specs)
    for _ in range(args.repeats):
        forward.append(_throughput(model, batches))
        with collector:
            with_stats.append(_throughput(model, batches, collector))
    f, s = statistics.median(forward), statistics.median(with_stats)

    moments = collector.moments()
    c_out = {spec.name: layer_output_second_moment(spec, moments[spec.name].second_moment,
                                                   moments[spec.name].column_sum, moments[spec.name].count)
             for spec in specs}
    eig_times = []
    for _ in range(3):
        _, t_in = eigen_batched({n: m.second_moment for n, m in moments.items()})
        _, t_out = eigen_batched(c_out)
        eig_times.append(t_in + t_out)

    print(f"date {datetime.date.today()}  python {platform.python_version()}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}  cpu {platform.processor() or platform.machine()}  "
          f"cores {os.cpu_count()}  load {os.getloadavg()[0]:.2f}")
    print(f"model {args.model}: {len(specs)} layers hooked, batch {args.batch_size} x {args.batches} batches, "
          f"{args.repeats} repeats (median)")
    print("| mode | images/s |")
    print("|---|---|")
    print(f"| forward only | {f:.1f} |")
    print(f"| forward + statistics | {s:.1f} |")
    print(f"| ratio | {s / f:.3f} |")
    print(f"eigen-decompositions of all {2 * len(specs)} moments (float64, batched by shape): "
          f"median {statistics.median(eig_times):.3f} s over 3")


if __name__ == "__main__":
    main()
