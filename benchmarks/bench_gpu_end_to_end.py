"""End-to-end statistics throughput on a GPU: forward only against forward + statistics, steady state only.

For each model (random init: pretrained weights are not reachable from the device, and speed does not depend
on them) and batch size, under bf16 autocast (``--precision``), the modes below are measured side by side in
one process, alternating, ``--repeats`` times over ``--batches`` batches; the table gives the median images/s of
each and its ratio to forward-only:

- ``forward``: the engine's data path without statistics: pinned host batches moved by
  :func:`analysis.data.device_batches` (copy of the next batch on a side stream), ``model(x)`` under
  ``torch.inference_mode`` and autocast;
- ``engine``: the same plus the engine's default statistics (``uncertainty`` on: split halves, each batch's
  half-0 images first as the loader delivers them, :class:`analysis.statistics.MomentCollector` with the
  Triton kernel, finite check read one batch late), i.e. what :func:`analysis.engine.stream_statistics` does
  per batch;
- ``no halves``: the statistics with one running sum per layer (``uncertainty=False``);
- ``naive hook`` (``--naive``): a forward hook doing ``x.float().T @ x.float()`` on inputs and outputs (the 0.17
  baseline of the design).

Only steady-state batches are timed: each mode's collector is entered once, and its first batch (the capture's
discovery and float64 self-check, the kernels' compilation and tuning) runs before the clock starts; the
timed repeats then continue in the same collector. Every layer's self-check must pass and the finite checks
must hold, else the script exits with status 1. Then the eigen-decompositions of every layer's C_in and C_out
(:func:`analysis.spectra.layer_eigen` on the device, float64), median of ``--eigen-repeats`` after one warm-up.
Each result line is printed as soon as it is measured.

    python benchmarks/bench_gpu_end_to_end.py [--models vit_base_patch16_224:128,vit_large_patch16_224:128]
    python benchmarks/bench_gpu_end_to_end.py --device cpu --models vit_tiny_patch16_224:2 --batches 1 \\
        --repeats 1 --model-kwargs '{"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}'
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from analysis.data import device_batches  # noqa: E402
from analysis.models import describe_layers  # noqa: E402
from analysis.models.sources import create_timm  # noqa: E402
from analysis.settings import PRECISIONS  # noqa: E402
from analysis.spectra import AffineLayer, layer_eigen  # noqa: E402
from analysis.statistics import MomentCollector  # noqa: E402
from analysis.uncertainty import half_order  # noqa: E402


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


class Mode:
    """One way of running the batches on its own copy of the model (hooks are per module, so the modes never
    see each other's); its collector (if any) stays entered between timed runs."""

    def __init__(self, name: str, model, device, halves: bool | None, naive: bool = False) -> None:
        if halves is not None or naive:
            model = copy.deepcopy(model)
        specs = [s for s in describe_layers(model) if s.applicable]
        self.name, self.model, self.device, self.specs = name, model, device, specs
        self.collector = MomentCollector(specs, device, halves=halves) if halves is not None else None
        self.stack = contextlib.ExitStack()
        self.naive_store: dict = {}
        if self.collector is not None:
            self.stack.enter_context(self.collector)
        if naive:
            handles = _naive_hooks(specs, self.naive_store, device)
            self.stack.callback(lambda: [h.remove() for h in handles])
        self.images = 0

    def run(self, host_batches: list[torch.Tensor]) -> float:
        """Images/s over the batches (copies included), from the first copy to the last result."""
        _sync(self.device)
        start = time.perf_counter()
        for batch, _ in device_batches(((b, None) for b in host_batches), self.device):
            if self.collector is not None:
                ids = torch.arange(self.images, self.images + batch.shape[0])
                if self.collector.n_halves == 2:
                    ids = ids[half_order(ids)]  # the loader delivers each batch in this order (same images)
                self.collector.begin_batch(ids)
            self.model(batch)
            if self.collector is not None:
                self.collector.next_batch()
            self.images += batch.shape[0]
        if self.collector is not None:
            self.collector.finish()
        _sync(self.device)
        return sum(b.shape[0] for b in host_batches) / (time.perf_counter() - start)

    def close(self) -> None:
        self.stack.close()


def bench_model(arch: str, batch_size: int, device: torch.device, batches: int, repeats: int, model_kwargs: dict,
                precision: str, eigen_repeats: int, naive: bool, emit) -> dict:
    torch.manual_seed(0)
    model = create_timm(arch, pretrained=False, **model_kwargs).eval().to(device)
    size = (3, model_kwargs["img_size"], model_kwargs["img_size"]) if "img_size" in model_kwargs else \
        tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    pin = device.type == "cuda"
    host = [torch.randn(batch_size, *size).pin_memory() if pin else torch.randn(batch_size, *size)
            for _ in range(batches)]
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    runs: dict[str, list[float]] = {}
    with torch.inference_mode(), autocast, kernels.layer_precision(dtype):
        modes = [Mode("forward", model, device, None), Mode("engine", model, device, True),
                 Mode("no halves", model, device, False)]
        if naive:
            modes.append(Mode("naive hook", model, device, None, naive=True))
        try:
            start = time.perf_counter()
            for mode in modes:  # discovery, self-check, compilation and tuning: outside the clock
                mode.run(host[:1])
            emit(f"  {arch} batch {batch_size}: warm-up (discovery, self-check, compile, tune) "
                 f"{time.perf_counter() - start:.1f} s")
            for repeat in range(repeats):
                for mode in modes:
                    runs.setdefault(mode.name, []).append(mode.run(host))
                emit(f"  {arch} batch {batch_size} repeat {repeat + 1}: " +
                     ", ".join(f"{m} {v[-1]:.0f} img/s" for m, v in runs.items()))
        finally:
            for mode in modes:
                mode.close()
    engine, specs = modes[1].collector, modes[1].specs
    findings = engine.findings()
    failed = sorted(n for n, f in findings.items() if f.check is None or not f.check.passed)
    moments = engine.moments()
    layers = {s.name: AffineLayer(findings[s.name].weight, findings[s.name].bias, moments[s.name].second_moment,
                                  moments[s.name].column_sum, moments[s.name].count)
              for s in specs if s.name in findings}
    eig_device = device if device.type == "cuda" else torch.device("cpu")
    layer_eigen(dict(list(layers.items())[:2]), eig_device)  # warm-up (solver handles, first batched calls)
    eigen = []
    for _ in range(eigen_repeats):
        _sync(device)
        start = time.perf_counter()
        layer_eigen(layers, eig_device)
        _sync(device)
        eigen.append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    row = {"model": arch, "batch_size": batch_size, "precision": precision, "layers": len(specs),
           **{f"{k} img/s": v for k, v in medians.items()},
           **{f"{k}/forward": v / medians["forward"] for k, v in medians.items() if k != "forward"},
           "eigen_s": statistics.median(eigen), "self_check_failed": failed, "runs": runs}
    emit(f"  {arch} batch {batch_size} {precision}: engine/forward {row['engine/forward']:.3f}, no halves/forward "
         f"{row['no halves/forward']:.3f}, eigen {row['eigen_s']:.3f} s, self-check failures {len(failed)}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base_patch16_224:128,vit_large_patch16_224:128")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=sorted(PRECISIONS))
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time the naive float32 hook")
    parser.add_argument("--model-kwargs", default="{}", help="JSON passed to timm.create_model (dry runs)")
    parser.add_argument("--eigen-repeats", type=int, default=2)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)", file=sys.stderr)
        return 2

    def emit(line: str) -> None:
        print(line, flush=True)

    model_kwargs = json.loads(args.model_kwargs)
    rows = []
    for item in args.models.split(","):
        arch, batch = item.split(":")
        rows.append(bench_model(arch, int(batch), device, args.batches, args.repeats, model_kwargs, args.precision,
                                args.eigen_repeats, args.naive, emit))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    import triton

    modes = [k.removesuffix(" img/s") for k in rows[0] if k.endswith(" img/s")]
    lines = [
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  device {name}  torch {torch.__version__}  "
        f"triton {getattr(triton, '__version__', '?')}  {args.precision} autocast, random weights, {args.batches} "
        f"batches x {args.repeats} repeats (median), steady state",
        "| model | batch | layers | " + " | ".join(f"{m} img/s" for m in modes) + " | " +
        " | ".join(f"{m}/fwd" for m in modes if m != "forward") + " | eigh all layers (s) | self-check failures |",
        "|---|---|---|" + "---|" * (2 * len(modes) - 1) + "---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['layers']} | " +
                     " | ".join(f"{r[m + ' img/s']:.0f}" for m in modes) + " | " +
                     " | ".join(f"{r[m + '/forward']:.3f}" for m in modes if m != "forward") +
                     f" | {r['eigen_s']:.3f} | {len(r['self_check_failed'])} |")
    print("\n".join(lines), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_end_to_end.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    (out / "gpu_end_to_end.md").write_text("\n".join(lines) + "\n")
    return 1 if any(r["self_check_failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
