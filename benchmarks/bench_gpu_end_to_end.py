"""End-to-end statistics throughput on a GPU: forward only, forward + the naive hook, forward + ours.

For each model (random init: pretrained weights are not reachable from the device, and speed does not
depend on them), bf16 autocast, one batch size, all three modes are measured side by side in one run,
alternating, ``--repeats`` times; the table gives the median images/s of each and the ratios to
forward-only:

- ``forward``: ``model(x)`` under ``torch.inference_mode`` and bf16 autocast;
- ``naive hook``: a forward hook on every analysed layer doing ``x.float().T @ x.float()`` on its inputs and
  ``y.float().T @ y.float()`` on its outputs in float32 (the 0.17 ratio baseline in benchmarks/RESULTS.md). The
  products run with autocast disabled: under the active bf16 autocast a bare ``@`` would multiply in bf16
  and return bf16, which is neither the baseline's arithmetic nor an acceptable statistic;
- ``ours``: :class:`analysis.statistics.MomentCollector` (inputs only, Triton second-moment kernel; float32
  inputs rounded to bf16 on load as the layers multiply them; analytic output moments later), every token
  used, ``collector.next_batch()`` after every batch as the engine does.

Warm-up: one batch of each mode first, which compiles and autotunes the kernel for every layer shape,
outside the timed loops. Then the eigen-decompositions of every layer's C_in and C_out, median of
``--eigen-repeats``:
"before" = every matrix decomposed directly (C_out formed explicitly), batched by shape;
"now" = :func:`analysis.spectra.layer_eigen` (output moments through the (d_in + 1) problem), on the
device, float64.

    python benchmarks/bench_gpu_end_to_end.py [--models vit_base_patch16_224:256,vit_large_patch16_224:128]
    python benchmarks/bench_gpu_end_to_end.py --device cpu --models vit_tiny_patch16_224:2 --batches 1 \\
        --repeats 1 --model-kwargs '{"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}'
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
from analysis.models.layers import weight_matrix  # noqa: E402
from analysis.models.sources import create_timm  # noqa: E402
from analysis.spectra import AffineLayer, eigen_batched, layer_eigen, output_second_moment  # noqa: E402
from analysis.statistics import MomentCollector  # noqa: E402
import kernels  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rows(module: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.Conv2d):
        return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


def _naive_hooks(specs, store, device: torch.device):
    def hook(module, args, output):
        x, y = _rows(module, args[0]), _rows(module, output)
        with torch.autocast(device_type=device.type, enabled=False):  # float32 products, as the baseline says
            xf, yf = x.float(), y.float()
            store[id(module), 0] = store.get((id(module), 0), 0) + xf.T @ xf
            store[id(module), 1] = store.get((id(module), 1), 0) + yf.T @ yf

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


def _eigen_before(layers: dict[str, AffineLayer], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    c_out = {n: output_second_moment(l.weight, l.c_in, l.column_sum, l.count, l.bias) for n, l in layers.items()}
    eigen_batched({n: l.c_in for n, l in layers.items()}, device)
    eigen_batched(c_out, device)
    _sync(device)
    return time.perf_counter() - start


def _eigen_now(layers: dict[str, AffineLayer], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    layer_eigen(layers, device)
    _sync(device)
    return time.perf_counter() - start


def bench_model(arch: str, batch_size: int, device: torch.device, batches: int, repeats: int,
                model_kwargs: dict, eigen_repeats: int = 3, eigen_before: bool = True) -> dict:
    torch.manual_seed(0)
    model = create_timm(arch, pretrained=False, **model_kwargs).eval().to(device)
    specs = [s for s in describe_layers(model) if s.applicable]
    size = (3, model_kwargs["img_size"], model_kwargs["img_size"]) if "img_size" in model_kwargs else \
        tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    data = [torch.randn(batch_size, *size, device=device) for _ in range(batches)]
    modes: dict[str, list[float]] = {"forward": [], "naive hook": [], "ours": []}
    collector = MomentCollector(specs, device)

    def naive_run() -> float:
        store: dict = {}
        handles = _naive_hooks(specs, store, device)
        try:
            return _timed(model, data, device)
        finally:
            for h in handles:
                h.remove()

    def ours_run(batch_list) -> float:
        with collector, kernels.layer_precision(torch.bfloat16):  # as the engine declares its precision
            return _timed(model, batch_list, device, collector.next_batch)

    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        _timed(model, data[:1], device)  # warm-up
        ours_run(data[:1])  # compiles and autotunes the kernel for every layer shape
        for _ in range(repeats):
            modes["forward"].append(_timed(model, data, device))
            modes["naive hook"].append(naive_run())
            modes["ours"].append(ours_run(data))
    moments = collector.moments()
    layers = {spec.name: AffineLayer(weight_matrix(spec.module).detach().float().cpu(),
                                     spec.module.bias.detach().float().cpu() if spec.has_bias else None,
                                     moments[spec.name].second_moment, moments[spec.name].column_sum,
                                     moments[spec.name].count)
              for spec in specs}
    eig_device = device if device.type == "cuda" else torch.device("cpu")
    _eigen_now(dict(list(layers.items())[:2]), eig_device)  # warm-up (solver handles, first batched calls)
    before, now = [], []
    for _ in range(eigen_repeats):
        if eigen_before:
            before.append(_eigen_before(layers, eig_device))
        now.append(_eigen_now(layers, eig_device))
    medians = {k: statistics.median(v) for k, v in modes.items()}
    return {
        "model": arch, "batch_size": batch_size, "layers": len(specs),
        **{f"{k} img/s": v for k, v in medians.items()},
        "naive/forward": medians["naive hook"] / medians["forward"], "ours/forward": medians["ours"] / medians["forward"],
        "eigen_before_s": statistics.median(before) if before else float("nan"), "eigen_s": statistics.median(now),
        "runs": modes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base_patch16_224:256,vit_large_patch16_224:128")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-kwargs", default="{}", help="JSON passed to timm.create_model (dry runs)")
    parser.add_argument("--eigen-repeats", type=int, default=3)
    parser.add_argument("--eigen-before-models", default=None,
                        help="comma list of models whose former (direct) eigen time is also measured (default: all)")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    model_kwargs = json.loads(args.model_kwargs)
    rows = []
    for item in args.models.split(","):
        arch, batch = item.split(":")
        before = args.eigen_before_models is None or arch in args.eigen_before_models.split(",")
        rows.append(bench_model(arch, int(batch), device, args.batches, args.repeats, model_kwargs,
                                args.eigen_repeats, before))
        r = rows[-1]
        print(f"  {arch} batch {batch}: forward {r['forward img/s']:.0f}, naive {r['naive hook img/s']:.0f}, "
              f"ours {r['ours img/s']:.0f} img/s; eigen {r['eigen_s']:.3f} s", file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    import triton

    lines = [
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  device {name}  torch {torch.__version__}  "
        f"triton {getattr(triton, '__version__', '?')}  bf16 autocast, random weights, {args.batches} batches x "
        f"{args.repeats} repeats (median)",
        "| model | batch | layers | forward img/s | naive hook img/s | ours img/s | naive/fwd | ours/fwd | "
        "eigh all layers before (s) | eigh all layers now (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['layers']} | {r['forward img/s']:.0f} | "
            f"{r['naive hook img/s']:.0f} | {r['ours img/s']:.0f} | {r['naive/forward']:.3f} | "
            f"{r['ours/forward']:.3f} | {r['eigen_before_s']:.3f} | {r['eigen_s']:.3f} |")
    print("\n".join(lines))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_end_to_end.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    (out / "gpu_end_to_end.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
