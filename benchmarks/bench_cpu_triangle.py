"""One batch's ``X^T X`` on the CPU, every way of forming it, side by side on the same inputs.

The statistics' inner product at the shapes of ``random:vit_tiny_patch16_224`` with batch 32 (``n`` = 6304
rows = 32 images x 197 tokens, and 3152 = one split half; ``d`` = 192 for qkv/proj/fc1 inputs, 768 for fc2
and the patch embedding), float32 inputs, ``--threads`` torch threads; each method in turn runs a block
of ``--repeats`` timed calls (after a pause and an untimed call), ``--rounds`` times; medians:

- ``gemm``: the full ``X^T X`` (``torch.mm``, MKL, torch's threads): ``2 n d^2`` FLOPs;
- ``blocked``: :mod:`kernels.reference`'s default, block rows of the lower triangle (one torch GEMM each,
  :func:`kernels.reference.block_columns`), added into a float64 accumulator as the statistics do;
- ``openblas ssyrk, k threads``: SciPy's OpenBLAS symmetric rank-k update, ``n d (d + 1)`` FLOPs;
- ``mkl ssyrk (reference)``: MKL's own rank-k update, reached through the internal symbol
  ``mkl_blas_ssyrk`` of torch's statically linked MKL when that build exports it. It is called here only
  to measure what a vendor triangle update reaches on this machine; the library never calls it (the
  symbol is undocumented and may change between torch builds).

    .venv/bin/python benchmarks/bench_cpu_triangle.py [--rounds 3] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import reference  # noqa: E402


def _mkl_ssyrk() -> Callable[[torch.Tensor, torch.Tensor], None] | None:
    """``acc (d x d, float32) += X^T X`` (lower triangle, row-major) via torch's internal MKL ssyrk, or None."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        fn = lib.mkl_blas_ssyrk
    except (OSError, AttributeError):
        return None
    # 64-bit integers serve both MKL interfaces on a little-endian machine: ILP64 reads all 8 bytes, LP64 the low 4
    integer = ctypes.c_longlong

    def syrk(x: torch.Tensor, acc: torch.Tensor) -> None:
        n, d = x.shape  # row-major n x d is Fortran d x n: C (Fortran upper) = A A^T is row-major lower X^T X
        args = [ctypes.c_char(b"U"), ctypes.c_char(b"N"), integer(d), integer(n), ctypes.c_float(1.0)]
        fn(*(ctypes.byref(a) for a in args), ctypes.c_void_p(x.data_ptr()), ctypes.byref(integer(d)),
           ctypes.byref(ctypes.c_float(1.0)), ctypes.c_void_p(acc.data_ptr()), ctypes.byref(integer(d)))

    return syrk


def _lower_error(acc: torch.Tensor, ref: torch.Tensor) -> float:
    return float((torch.tril(acc.double()) - torch.tril(ref)).norm() / torch.tril(ref).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per method, methods in turn")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    mkl = _mkl_ssyrk()
    syrk = reference._scipy_syrk()

    def through(method: str, syrk_threads: int = reference.SYRK_THREADS) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """The library's own CPU path with ``CPU_METHOD = method`` (and ``SYRK_THREADS``) for the call."""
        def run(x: torch.Tensor, acc: torch.Tensor) -> None:
            previous = reference.CPU_METHOD, reference.SYRK_THREADS
            reference.CPU_METHOD, reference.SYRK_THREADS = method, syrk_threads
            try:
                reference.second_moment_torch(x, acc)
            finally:
                reference.CPU_METHOD, reference.SYRK_THREADS = previous
        return run

    methods: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], None], torch.dtype]] = {
        "gemm (MKL, full X^T X)": (through("gemm"), torch.float64),
        "blocked (MKL, lower block rows; the default)": (through("blocked"), torch.float64),
    }
    if syrk is not None:
        methods["openblas ssyrk, 1 thread"] = (through("syrk", 1), torch.float64)
        methods["openblas ssyrk, 2 threads"] = (through("syrk", 2), torch.float64)
    if mkl is not None:
        methods["mkl ssyrk (reference, float32 accumulator)"] = (mkl, torch.float32)

    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  cores {os.cpu_count()}  "
          f"load average {load_start:.2f} at start")
    print("| n x d | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    generator = torch.Generator().manual_seed(0)
    for n, d in ((6304, 192), (6304, 768), (3152, 768)):
        x = torch.randn(n, d, generator=generator)
        ref = x.double().T @ x.double()
        times: dict[str, list[float]] = {name: [] for name in methods}
        errors: dict[str, float] = {}
        for name, (fn, dtype) in methods.items():
            acc = torch.zeros(d, d, dtype=dtype)
            fn(x, acc)  # warm-up, and the check that it computes X^T X
            errors[name] = _lower_error(acc, ref)
        for _ in range(args.rounds):
            for name, (fn, dtype) in methods.items():
                # a block per method, after a pause and an untimed call: OpenBLAS's worker threads keep
                # spinning for a while after a multi-threaded call and would slow whichever method came next
                time.sleep(0.5)
                acc = torch.zeros(d, d, dtype=dtype)
                fn(x, acc)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    fn(x, acc)
                    times[name].append(time.perf_counter() - start)
        cells = [f"{statistics.median(times[name]) * 1e3:.1f} ms ({errors[name]:.0e})" for name in methods]
        print(f"| {n} x {d} | " + " | ".join(cells) + " |", flush=True)
    print(f"median of {args.rounds} rounds x {args.repeats} calls; in brackets the relative error of the lower triangle against float64")


if __name__ == "__main__":
    main()
