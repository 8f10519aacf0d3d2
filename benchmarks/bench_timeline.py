"""Timeline of the zoo: training time and hardware per regime (from the manifest), and the time to analyse
every checkpoint of every regime's series.

    python benchmarks/bench_timeline.py [--samples N] [--threads T]

The timeline runs twice: cold (a fresh, empty cache folder: every distinct checkpoint is analysed) and warm
(the same call again: every row is a cache read). Prints a markdown table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERIES = ["zoo:vit-fmnist-supervised", "zoo:vit-fmnist-mae", "zoo:vit-fmnist-dino", "zoo:vit-fmnist-random"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=None, help="images per checkpoint (default: all 10k)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from analysis.models.zoo import read_manifest
    from analysis.timeline import timeline

    print("| regime | epochs | steps | train time | hardware |\n|---|---|---|---|---|")
    for name in SERIES:
        e = read_manifest()["models"][name.split(":", 1)[1]]
        print(f"| {e['regime']} | {e.get('epochs')} | {e.get('steps')} | {float(e.get('train_seconds') or 0) / 60:.1f} min "
              f"| {e.get('hardware')} |")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = timeline(SERIES, "fashion-mnist:test", samples=args.samples, cache_dir=cache)
        t1 = time.perf_counter()
        warm = timeline(SERIES, "fashion-mnist:test", samples=args.samples, cache_dir=cache)
        t2 = time.perf_counter()
    table = cold.table
    assert list(table["mlu"]) == list(warm.table["mlu"])
    distinct = table["model_id"].nunique()
    print(f"\ntimeline of {len(SERIES)} series: {len(table)} rows, {distinct} distinct checkpoints, "
          f"{int(table['images'].iloc[0])} images each; cold {t1 - t0:.1f} s, warm {t2 - t1:.2f} s; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(table[["series", "checkpoint", "step", "linear_probe_top1", "mlu", "status"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
