"""Second-moment kernel against the torch baselines on one GPU (issue item (a)).

For every ``d`` in ``--dims`` and ``n`` in ``--tokens`` (defaults: d in {384, 768, 1024, 3072, 4096},
n in {25 216, 50 432, 400 000}: ViT-B/16 batches of 128 and 256 images, and a long one) it draws fresh bf16
activations (random per-column means and scales) and times:

- ``triton``: :func:`kernels.triton_second_moment.second_moment_triton`, lower triangle, float32
  accumulation into a running ``acc`` (compiled and autotuned by the error call, before timing);
- ``triton det``: the same in its deterministic mode (fixed tiling and splits, partial tiles summed in order);
- ``torch fp32``: ``xf = x.float(); xf.T @ xf`` (the up-cast is part of the cost, as in the naive hook
  the product exists to replace; ``allow_tf32`` is off, so this is a true float32 GEMM);
- ``torch bf16``: ``x.T @ x`` in bfloat16 (float32 accumulation inside cuBLAS, output rounded to bf16):
  the speed ceiling of a plain tensor-core GEMM, not an acceptable statistic (16-bit output).

With ``--fp32`` it adds float32-input rows for the kernel's two full-precision modes (``"ieee"`` and
``"tf32x3"``) and for float32 rounded to bf16 on load (``round-bf16``, what the engine does under bf16
autocast, where LayerNorm hands float32 to qkv and fc1) beside ``torch fp32``.

``--device cpu`` is a dry run (the Triton interpreter, wall-clock timing, tiny sizes such as
``--dims 64 --tokens 300``): it checks that the script and the kernel still run, and times nothing real.

Reported per row (printed as soon as it is measured): median time over ``--repeats``
(``triton.testing.do_bench``, CUDA events, L2 flushed), useful TFLOP/s and its share of the bf16 dense peak,
relative error of the lower triangle against float64, and the roofline numbers. A Triton row whose error
exceeds :data:`TRITON_TOLERANCE` makes the script exit with status 1.

FLOP convention: the useful work is the symmetric half of ``X^T X``, counted as ``n * d * d`` FLOPs
(``2 n d^2`` for the full product, halved). Every method is credited with the same ``n d^2``, so the
TFLOP/s column compares time directly; a full-matrix GEMM really executes ``2 n d^2`` FLOPs, twice its
credit. Bytes: the least HBM traffic, reading ``x`` once and reading + writing the float32 triangle.

Output: a markdown table on stdout (and the largest error of each method) and, in ``--out-dir``
(default ``benchmarks/out``, git-ignored), ``bench_kernels-<date>.json`` and ``.md`` with device, versions
and date, for ``benchmarks/RESULTS.md``.

    python benchmarks/bench_kernels.py [--dims 768,4096] [--tokens 50000] [--repeats 50] [--fp32] [--out-dir DIR]
    python benchmarks/bench_kernels.py --device cpu --dims 64 --tokens 300 --repeats 1   # dry run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT_DIR = ROOT / "benchmarks" / "out"

#: Largest relative error (lower triangle vs float64 of what is multiplied) a Triton row may show; any row above
#: it makes the script exit with status 1. float32 accumulation of up to 400k rows: typical sqrt(n) 2^-24 =
#: 4e-5, and each tile accumulates only its split's rows.
TRITON_TOLERANCE: float = 2e-4

#: Dense peaks used for the roofline when the device name matches (bf16 tensor-core TFLOP/s, HBM GB/s).
KNOWN_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 4800.0),
    "H100": (989.0, 3350.0),
    "A100": (312.0, 2039.0),
}


# ---------------------------------------------------------------------------------------------- roofline


def useful_flops(n: int, d: int) -> float:
    """FLOPs credited to one call: the symmetric half of ``X^T X``, ``n * d * d``."""
    return float(n) * d * d


def min_bytes(n: int, d: int, elem_size: int) -> float:
    """Least HBM traffic of one call: ``x`` read once, the float32 lower triangle read and written."""
    return float(n) * d * elem_size + 2.0 * 4.0 * d * (d + 1) / 2.0


def intensity(n: int, d: int, elem_size: int) -> float:
    """Arithmetic intensity in FLOP/byte; about ``d / elem_size`` for ``n >> d``."""
    return useful_flops(n, d) / min_bytes(n, d, elem_size)


def roofline_ms(n: int, d: int, elem_size: int, peak_tflops: float, peak_gbps: float) -> float:
    """Lower bound on the time of one call: the slower of compute at peak and traffic at peak bandwidth.

    Computed on the useful FLOPs at the bf16 dense peak; a kernel that skips the upper triangle can reach
    it, a full GEMM cannot do better than twice this compute time.
    """
    compute_s = useful_flops(n, d) / (peak_tflops * 1e12)
    memory_s = min_bytes(n, d, elem_size) / (peak_gbps * 1e9)
    return 1e3 * max(compute_s, memory_s)


# ------------------------------------------------------------------------------------------ measurement


@dataclass
class Row:
    method: str
    dtype: str
    d: int
    n: int
    median_ms: float
    tflops: float
    rel_err: float
    roofline_ms: float
    pct_roofline: float


def activations(n: int, d: int, dtype: torch.dtype, seed: int, device: torch.device) -> torch.Tensor:
    """Fresh ``n x d`` activations: per-column random mean and scale, generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    mean = torch.randn(d, generator=g, device=device) * 0.5
    scale = torch.exp(torch.randn(d, generator=g, device=device) * 0.5)
    x = torch.randn(n, d, generator=g, device=device)
    x.mul_(scale).add_(mean)
    return x.to(dtype)


def reference_float64(x: torch.Tensor, chunk_rows: int = 1 << 16) -> torch.Tensor:
    """``X^T X`` in float64, summed over row chunks so the float64 copy of ``x`` never exists whole."""
    d = x.shape[1]
    ref = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk_rows):
        part = x[start : start + chunk_rows].double()
        ref.addmm_(part.T, part)
    return ref


def lower_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of the lower triangle (diagonal included)."""
    mask = torch.ones_like(ref, dtype=torch.bool).tril_()
    return float((got.double() - ref)[mask].norm() / ref[mask].norm())


def time_ms(fn: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median milliseconds of ``fn`` over about ``repeats`` runs (CUDA events, L2 flushed between runs;
    on the CPU dry run, wall clock)."""
    import triton.testing

    if device is not None and device.type != "cuda":
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return sorted(times)[len(times) // 2]
    fn()
    torch.cuda.synchronize()
    single = triton.testing.do_bench(fn, warmup=1, rep=1, return_mode="median")
    rep_ms = max(25.0, single * repeats)
    return float(triton.testing.do_bench(fn, warmup=max(5.0, 2 * single), rep=rep_ms, return_mode="median"))


def methods_for(x: torch.Tensor, fp32_modes: bool) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    """``name -> (timed call, one fresh call for the error)`` for input ``x``."""
    from kernels.triton_second_moment import second_moment_triton

    d = x.shape[1]
    running = torch.zeros(d, d, dtype=torch.float32, device=x.device)

    def triton_call(precision: str, round_to: torch.dtype | None = None
                    ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
        def timed() -> torch.Tensor:
            return second_moment_triton(x, running, fp32_precision=precision, round_to=round_to)

        def fresh() -> torch.Tensor:
            return second_moment_triton(x, torch.zeros_like(running), fp32_precision=precision, round_to=round_to)

        return timed, fresh

    def triton_deterministic() -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
        return (lambda: second_moment_triton(x, running, deterministic=True),
                lambda: second_moment_triton(x, torch.zeros_like(running), deterministic=True))

    def torch_fp32() -> torch.Tensor:
        xf = x.float()
        return xf.T @ xf

    def torch_bf16() -> torch.Tensor:
        return x.T @ x

    table: dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]] = {}
    if x.dtype == torch.float32:
        if fp32_modes:
            table["triton ieee"] = triton_call("ieee")
            table["triton tf32x3"] = triton_call("tf32x3")
            table["triton round-bf16"] = triton_call("ieee", torch.bfloat16)
        table["torch fp32"] = (torch_fp32, torch_fp32)
    else:
        table["triton"] = triton_call("ieee")
        table["triton det"] = triton_deterministic()
        table["torch fp32"] = (torch_fp32, torch_fp32)
        if x.dtype == torch.bfloat16:
            table["torch bf16"] = (torch_bf16, torch_bf16)
    return table


def bench_shape(
    n: int,
    d: int,
    dtype: torch.dtype,
    *,
    seed: int,
    repeats: int,
    peaks: tuple[float, float],
    fp32_modes: bool,
    device: torch.device,
) -> list[Row]:
    """All methods on one fresh ``n x d`` input: error first (one fresh call each), then the timing."""
    x = activations(n, d, dtype, seed, device)
    ref = reference_float64(x)
    bound = roofline_ms(n, d, x.element_size(), *peaks)
    rows = []
    for name, (timed, fresh) in methods_for(x, fp32_modes).items():
        # round-bf16 is measured against what it multiplies (the bf16 rounding of x), like a layer under autocast
        err = lower_rel_err(fresh(), reference_float64(x.to(torch.bfloat16)) if name.endswith("round-bf16") else ref)
        ms = time_ms(timed, repeats, device)
        rows.append(
            Row(
                method=name,
                dtype=str(dtype).removeprefix("torch."),
                d=d,
                n=n,
                median_ms=ms,
                tflops=useful_flops(n, d) / (ms * 1e-3) / 1e12,
                rel_err=err,
                roofline_ms=bound,
                pct_roofline=100.0 * bound / ms,
            )
        )
    del x, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------- report


def markdown(rows: list[Row]) -> str:
    head = "| method | dtype | d | n | median ms | useful TFLOP/s | % of roofline | rel. error vs fp64 |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.dtype} | {r.d} | {r.n} | {r.median_ms:.3f} | {r.tflops:.1f} | "
            f"{r.pct_roofline:.0f} % | {r.rel_err:.2e} |"
        )
    return "\n".join(lines)


def roofline_table(shapes: list[tuple[int, int, int]], peaks: tuple[float, float]) -> str:
    peak_tflops, peak_gbps = peaks
    ridge = peak_tflops * 1e12 / (peak_gbps * 1e9)
    lines = [
        f"Roofline: peak {peak_tflops:.0f} TFLOP/s (bf16 dense), {peak_gbps:.0f} GB/s, ridge {ridge:.0f} FLOP/B "
        "(float32 rows use the same bf16 peak: a loose bound for them).",
        "| d | n | elem B | useful GFLOP | min MB moved | FLOP/B | bound | roofline ms |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n, d, elem in shapes:
        ai = intensity(n, d, elem)
        lines.append(
            f"| {d} | {n} | {elem} | {useful_flops(n, d) / 1e9:.1f} | {min_bytes(n, d, elem) / 1e6:.1f} | "
            f"{ai:.0f} | {'compute' if ai >= ridge else 'memory'} | {roofline_ms(n, d, elem, *peaks):.3f} |"
        )
    return "\n".join(lines)


def device_peaks(name: str, tflops: float | None, gbps: float | None) -> tuple[float, float]:
    for key, (t, b) in KNOWN_PEAKS.items():
        if key in name:
            return (tflops or t, gbps or b)
    if tflops is None or gbps is None:
        raise SystemExit(f"unknown device {name!r}: pass --peak-tflops and --peak-gbps for the roofline")
    return tflops, gbps


def environment(device: torch.device) -> dict[str, str]:
    import triton

    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "device": props.name if cuda else f"cpu dry run ({platform.machine()}, Triton interpreter)",
        "sms": str(props.multi_processor_count) if cuda else "0",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def compiled_kernels() -> str:
    """Registers, spills and shared memory of every kernel variant this process compiled and ran (as the
    device's own Triton built them: the on-device counterpart of ``python -m kernels.aot``)."""
    from kernels.triton_second_moment import _second_moment_body

    lines = ["| variant | regs | spills | shared B | warps | stages |", "|---|---:|---:|---:|---:|---:|"]
    for entry in getattr(_second_moment_body, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        for kernel in getattr(cache, "values", lambda: [])():
            meta = getattr(kernel, "metadata", None)
            consts = getattr(kernel, "src", None)
            label = ", ".join(f"{k}={v}" for k, v in sorted(getattr(consts, "constants", {}).items())
                              if isinstance(k, str) and k.isupper()) if consts is not None else "?"
            lines.append(f"| {label or '?'} | {getattr(kernel, 'n_regs', '?')} | {getattr(kernel, 'n_spills', '?')} | "
                         f"{getattr(meta, 'shared', '?')} | {getattr(meta, 'num_warps', '?')} | "
                         f"{getattr(meta, 'num_stages', '?')} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=_ints, default=[384, 768, 1024, 3072, 4096])
    parser.add_argument("--tokens", type=_ints, default=[25_216, 50_432, 400_000])
    parser.add_argument("--repeats", type=int, default=30, help="about this many timed runs per method")
    parser.add_argument("--fp32", action="store_true", help="add float32-input rows (ieee vs tf32x3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--peak-gbps", type=float, default=None)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: dry run in the Triton interpreter (tiny sizes; times nothing real)")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; this benchmark times GPU kernels only (nothing was run).", file=sys.stderr)
        return 2
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel module is first imported (below)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_kernels: Triton is not importable; nothing to benchmark.", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False

    env = environment(device)
    peaks = device_peaks(env["device"], args.peak_tflops, args.peak_gbps) if device.type == "cuda" else (
        args.peak_tflops or 1.0, args.peak_gbps or 1.0)
    dtypes = [torch.bfloat16] + ([torch.float32] if args.fp32 else [])
    print(f"# Second-moment kernel benchmark\n\n{json.dumps(env)}\n")
    shapes = [(n, d, torch.tensor([], dtype=t).element_size()) for t in dtypes for n in args.tokens for d in args.dims]
    print(roofline_table(shapes, peaks) + "\n")

    rows: list[Row] = []
    case = 0
    for dtype in dtypes:
        for n in args.tokens:
            for d in args.dims:
                case += 1
                shape_rows = bench_shape(
                    n,
                    d,
                    dtype,
                    seed=args.seed + case,
                    repeats=args.repeats,
                    peaks=peaks,
                    fp32_modes=args.fp32,
                    device=device,
                )
                rows.extend(shape_rows)
                for r in shape_rows:
                    print(f"  {r.method:>17} {r.dtype:>8} d={d:<5} n={n:<7} {r.median_ms:9.3f} ms "
                          f"{r.tflops:7.1f} TFLOP/s ({100 * r.tflops / peaks[0]:4.1f} % of the bf16 peak)  "
                          f"err {r.rel_err:.2e}", flush=True)

    table = markdown(rows)
    worst: dict[str, float] = {}
    for r in rows:
        worst[f"{r.method} ({r.dtype})"] = max(worst.get(f"{r.method} ({r.dtype})", 0.0), r.rel_err)
    summary = "Largest relative error vs float64, per method: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
    speedups = []
    for r in rows:
        if r.method == "triton":
            for other in rows:
                if (other.d, other.n, other.dtype) == (r.d, r.n, r.dtype) and other.method.startswith("torch"):
                    speedups.append(f"d={r.d} n={r.n}: {other.median_ms / r.median_ms:.2f}x {other.method}")
    print(table)
    print("\n" + summary)
    if speedups:
        print("Kernel speed-up: " + "; ".join(speedups))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"bench_kernels-{stamp}.json"
    payload = {"environment": env, "peaks": {"tflops": peaks[0], "gbps": peaks[1]},
               "flop_convention": "useful = n*d*d (symmetric half of X^T X)", "rows": [asdict(r) for r in rows],
               "max_rel_err": worst}
    path.write_text(json.dumps(payload, indent=2))
    path.with_suffix(".md").write_text(f"{json.dumps(env)}\n\n{table}\n\n{summary}\n\n" + "\n".join(speedups) + "\n")
    if device.type == "cuda":
        print("\nCompiled kernel variants (this device's Triton):\n" + compiled_kernels())
    print(f"\nwrote {path}")
    bad = [r for r in rows if r.method.startswith("triton") and not r.rel_err <= TRITON_TOLERANCE]
    for r in bad:
        print(f"FAILED: {r.method} {r.dtype} d={r.d} n={r.n} relative error {r.rel_err:.2e} > {TRITON_TOLERANCE:.0e}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
