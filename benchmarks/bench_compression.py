"""Compression of the zoo's supervised ViT: parameters kept and top-1 before/after fine-tuning.

Subspaces from ``fashion-mnist:train`` (``--samples`` images, seeded), top-1 on the whole Fashion-MNIST test
split (10k, never used for ranks or fine-tuning), fine-tuning on the whole train split (objective: labels,
recipe in ``analysis/compression/finetune.py``). Three measurements, all from one analysis:

1. the default energies ``e_in = e_out = 0.99``;
2. the budget ``--keep`` (largest energy whose factorized layers keep at most that fraction);
3. a control at ``e = 1`` (no layer factorized: the dense model fine-tuned with the same recipe, to separate
   recovery from the extra training an under-trained model gets from any fine-tuning);
4. the sweep over ``e = e_in = e_out`` in ``--energies``, each point fine-tuned from its own projection.

Prints a table and writes ``benchmarks/out/compression.json`` (with versions, date and timings).

    .venv/bin/python benchmarks/bench_compression.py [--samples 10000] [--steps 500] [--lr 1e-4] [--keep 0.6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.compression import CompressionRequest, FinetuneSettings, compress, sweep  # noqa: E402
from analysis.compression.pipeline import SWEEP_ENERGIES  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:vit-fmnist-supervised")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep", type=float, default=0.6)
    p.add_argument("--energies", default=",".join(str(e) for e in SWEEP_ENERGIES))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "compression.json")
    args = p.parse_args()
    ft = FinetuneSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size)
    base = dict(model=args.model, dataset="fashion-mnist:train", samples=args.samples, finetune=ft)
    started = time.perf_counter()

    runs = {}
    for label, request in (("default e=0.99", CompressionRequest(**base)),
                           (f"budget keep<={args.keep}", CompressionRequest(**base, keep=args.keep)),
                           ("control e=1 (nothing factorized)", CompressionRequest(**base, energy_in=1.0, energy_out=1.0))):
        t = time.perf_counter()
        summary = compress(request).summary
        summary.pop("layers")
        summary["wall_s"] = time.perf_counter() - t
        runs[label] = summary
        print(f"{label}: e={summary['energy_in']:g} kept {summary['kept_fraction']:.1%}  top-1 dense "
              f"{summary['acc_dense']:.2%}  factorized {summary['acc_projected']:.2%}  fine-tuned "
              f"{summary['acc_finetuned']:.2%}  ({summary['wall_s']:.0f} s)", flush=True)

    t = time.perf_counter()
    energies = tuple(float(e) for e in args.energies.split(","))
    table = sweep(CompressionRequest(**base), energies)
    sweep_s = time.perf_counter() - t
    table["drop_projected"] = table["acc_dense"] - table["acc_projected"]
    table["drop_finetuned"] = table["acc_dense"] - table["acc_finetuned"]
    print(table.to_string(index=False, float_format="{:.4f}".format))

    report = {
        "date": datetime.date.today().isoformat(),
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": vars(args) | {"out": str(args.out)},
        "runs": runs,
        "sweep": table.to_dict(orient="records"),
        "sweep_s": sweep_s,
        "total_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
