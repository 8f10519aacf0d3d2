"""End-to-end statistics throughput on a GPU: forward only, forward + the naive hook, forward + ours.

Issue 4 (b) and (c). For each model (random init is fine for speed), bf16 autocast, one batch size, all
three modes are measured side by side in one run, alternating, ``--repeats`` times; the table gives the
median images/s of each and the ratios to forward-only:

- ``forward``: ``model(x)`` under ``torch.inference_mode`` and bf16 autocast;
- ``naive hook``: a forward hook on every analysed layer doing ``x.float().T @ x`` on its inputs and
  ``y.float().T @ y`` on its outputs (the 0.17 s baseline in benchmarks/RESULTS.md);
- ``ours``: :class:`analysis.statistics.MomentCollector` (inputs only, Triton second-moment kernel,
  analytic output moments later), every token used.

Then (c): the eigen-decompositions of every layer's C_in and C_out as the engine runs them (float64,
batched by shape on the GPU), median of 3.

    python benchmarks/bench_gpu_end_to_end.py [--models vit_base_patch16_224:256,vit_large_patch16_224:128]
    python benchmarks/bench_gpu_end_to_end.py --device cpu --models vit_tiny_patch16_224:8 --batches 2  # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.models import describe_layers  # noqa: E402
from analysis.models.sources import create_timm  # noqa: E402
from analysis.spectra import eigen_batched, layer_output_second_moment  # noqa: E402
from analysis.statistics import MomentCollector  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _naive_hooks(specs, store):
    def hook(module, args, output):
        x = args[0].reshape(-1, args[0].shape[-1]) if not isinstance(module, torch.nn.Conv2d) else args[0].flatten(2).transpose(1, 2).reshape(-1, args[0].shape[1])
        y = output.reshape(-1, output.shape[-1]) if not isinstance(module, torch.nn.Conv2d) else output.flatten(2).transpose(1, 2).reshape(-1, output.shape[1])
        store[id(module), 0] = store.get((id(module), 0), 0) + x.float().T @ x.float()
        store[id(module), 1] = store.get((id(module), 1), 0) + y.float().T @ y.float()

    return [s.module.register_forward_hook(hook) for s in specs]


def _timed(model, batches, device, on_batch=None) -> float:
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        model(batch)
        if on_batch is not None:
            on_batch()
    _sync(device)
    return sum(b.shape[0] for b in batches) / (time.perf_counter() - start)


def bench_model(arch: str, batch_size: int, device: torch.device, batches: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_timm(arch, pretrained=False).eval().to(device)
    specs = [s for s in describe_layers(model) if s.applicable]
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    data = [torch.randn(batch_size, *size, device=device) for _ in range(batches)]
    dtype = torch.bfloat16
    modes: dict[str, list[float]] = {"forward": [], "naive hook": [], "ours": []}
    collector = MomentCollector(specs, device)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype):
        _timed(model, data[:1], device)  # warm-up (and Triton autotuning below)
        with collector:
            _timed(model, data[:1], device)
        for _ in range(repeats):
            modes["forward"].append(_timed(model, data, device))
            store: dict = {}
            handles = _naive_hooks(specs, store)
            try:
                modes["naive hook"].append(_timed(model, data, device))
            finally:
                for h in handles:
                    h.remove()
            del store
            with collector:
                modes["ours"].append(_timed(model, data, device))
    moments = collector.moments()
    c_out = {spec.name: layer_output_second_moment(spec, moments[spec.name].second_moment,
                                                   moments[spec.name].column_sum, moments[spec.name].count)
             for spec in specs}
    eig = []
    for _ in range(3):
        _, t_in = eigen_batched({n: m.second_moment for n, m in moments.items()}, device)
        _, t_out = eigen_batched(c_out, device)
        eig.append(t_in + t_out)
    medians = {k: statistics.median(v) for k, v in modes.items()}
    return {
        "model": arch, "batch_size": batch_size, "layers": len(specs), **{f"{k} img/s": v for k, v in medians.items()},
        "naive/forward": medians["naive hook"] / medians["forward"], "ours/forward": medians["ours"] / medians["forward"],
        "eigen_s": statistics.median(eig),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base_patch16_224:256,vit_large_patch16_224:128")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_end_to_end.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    rows = []
    for item in args.models.split(","):
        arch, batch = item.split(":")
        rows.append(bench_model(arch, int(batch), device, args.batches, args.repeats))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"date {datetime.date.today()}  device {name}  torch {torch.__version__}  "
          f"triton {getattr(__import__('triton'), '__version__', '?')}")
    print("| model | batch | forward img/s | naive hook img/s | ours img/s | naive/fwd | ours/fwd | eigh all layers (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch_size']} | {r['forward img/s']:.0f} | {r['naive hook img/s']:.0f} | "
              f"{r['ours img/s']:.0f} | {r['naive/forward']:.3f} | {r['ours/forward']:.3f} | {r['eigen_s']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
