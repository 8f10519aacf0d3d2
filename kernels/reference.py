"""Pure-torch second moment: the CPU path, the fallback when Triton is missing, and the tests' reference.

Maths (same contract as :func:`kernels.second_moment`)::

    x      : n x d, bfloat16 / float16 / float32 (row stride free, unit column stride)
    acc    : d x d running sum,   acc    += X^T X      (X = x converted to float32)
    colsum : d running sum,       colsum += X^T 1      (the column sums)

The batch product ``X^T X`` is formed in float32 after an exact up-cast of 16-bit inputs, so each product
of two bf16/fp16 values is exact and the only rounding is float32 accumulation inside BLAS. Callers may rely
only on the lower triangle and diagonal, as with the Triton path (:func:`symmetrize` gives the full matrix):
the default CPU method leaves most of the strict upper triangle of ``acc`` untouched.

How the product is formed (:data:`CPU_METHOD` on the CPU)
    * ``"blocked"`` (the default on the CPU): block rows of the lower triangle, one torch GEMM each, in
      torch's own thread pool (the one that has just run the layer). With blocks of ``b`` columns
      (:func:`block_columns`), block row ``i`` is ``X[:, ib:(i+1)b]^T X[:, :(i+1)b]`` (``b x (i+1)b``), added
      in place into ``acc[ib:(i+1)b, :(i+1)b]``: ``(m + 1) / (2 m)`` of the full GEMM's ``2 n d^2`` FLOPs for
      ``m = ceil(d / b)`` blocks (58 % for ViT-Ti's d = 768 in 6 blocks of 128), the diagonal blocks
      computed whole.
    * ``"syrk"``: a symmetric rank-k update, BLAS ``ssyrk`` through :func:`scipy.linalg.blas.ssyrk` on the
      Fortran view ``X^T`` (no copy of a contiguous float32 ``x``): the lower triangle only, ``n d (d + 1)``
      FLOPs, on :data:`SYRK_THREADS` OpenBLAS threads (a second thread pool beside torch's).
    * ``"gemm"``, and on CUDA tensors (or when SciPy is missing for ``"syrk"``): one full GEMM,
      ``torch.addmm``/``torch.mm``.
    The methods were timed side by side (``benchmarks/bench_cpu_statistics.py``, ``benchmarks/RESULTS.md``).

    Both paths run with autocast DISABLED for x's device: under an active ``torch.autocast`` (the engine's
    ``--precision bf16``) a bare ``torch.mm`` would multiply in bfloat16 and silently turn this float32
    product into a bf16 one (relative error ~2e-3 instead of ~1e-7).

float64 accumulators: ``acc`` and ``colsum`` may also be float64. Then the batch product is still formed in
float32 (as above) and added into the float64 running sum, so rounding error does not grow with the number
of batches: each batch contributes float32 rounding relative to that batch only. The CPU statistics engine
uses this for long runs (millions of tokens). Partial sums are never rounded to 16 bits. The Triton path
accepts float32 only.

On CUDA, ``torch.addmm`` on float32 honours ``torch.backends.cuda.matmul.allow_tf32``; leave it off (the
default) for float32 accuracy.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch

from . import cpu_pool
from ._validation import check_inputs

#: OpenBLAS threads for the CPU ``ssyrk``. Measured on this project's 2-core VM (2026-11-29, load 4-12 from
#: other work, torch 2.14.1 MKL + SciPy's OpenBLAS 0.3.30, n = 6304 rows = a ViT-Ti batch of 32, methods
#: alternated, median of 7): on 2 threads OpenBLAS's syrk took 230-370 ms per d = 768 call against
#: 102-105 ms on 1 thread (MKL's full 2-thread GEMM: 124-239 ms), and 155-335 ms against 20-26 ms at d = 192. Its worker threads busy-wait against torch's OpenMP pool that has just run the
#: layer (both want both cores), so one thread is faster on two cores, and far faster when the cores are
#: shared with other work. See ``benchmarks/RESULTS.md`` for the end-to-end figures.
SYRK_THREADS: int = 1

#: ``"blocked"`` (the default), ``"syrk"`` or ``"gemm"``: how the CPU path forms ``X^T X`` (module docstring).
#: The benchmark switches it to time the methods side by side; nothing else should need to.
CPU_METHOD: str = "blocked"
CPU_METHODS: tuple[str, ...] = ("blocked", "syrk", "gemm")


def block_columns(d: int) -> int:
    """Column block ``b`` of the ``"blocked"`` method for width ``d``. Measured on the project's 2-core VM
    (torch 2.14.1 MKL, n = 3152 and 6304 rows, median of 9): 64 to 128 for d = 192, 128 to 192 for d = 768
    (within 5 % of each other), 256 to 384 for d = 3072; smaller blocks cut FLOPs but run less efficiently."""
    if d <= 256:
        return 64
    return 128 if d <= 1024 else 256


def _lower_block_tasks(xf: torch.Tensor, acc: torch.Tensor) -> list[tuple[Callable[[], None], float]]:
    """``acc[lower block rows] += X^T X`` for float32 ``xf`` (``n x d``) and a float32/float64 ``acc``, as one
    task per block row (each writes its own rows of ``acc``) with its relative cost."""
    d = xf.shape[1]
    b = block_columns(d)

    def block_row(start: int, stop: int) -> Callable[[], None]:
        def task() -> None:
            left = xf[:, start:stop].T
            if acc.dtype == torch.float32:
                acc[start:stop, :stop].addmm_(left, xf[:, :stop])
            else:
                acc[start:stop, :stop].add_(torch.mm(left, xf[:, :stop]))
        return task

    return [(block_row(start, min(start + b, d)), float((min(start + b, d) - start) * min(start + b, d)))
            for start in range(0, d, b)]


@functools.cache
def scipy_blas_controller() -> Any | None:
    """threadpoolctl's controller of SciPy's own BLAS/LAPACK library (not numpy's, not torch's), or None when
    threadpoolctl is missing, cannot inspect the process, or does not find exactly one such library."""
    try:
        from threadpoolctl import ThreadpoolController

        libs = [lib for lib in ThreadpoolController().lib_controllers
                if lib.user_api == "blas" and "scipy" in lib.filepath and "numpy" not in lib.filepath]
    except Exception:  # noqa: BLE001 - threadpoolctl missing or unable to inspect the process
        return None
    return libs[0] if len(libs) == 1 else None


@functools.cache
def _scipy_syrk() -> tuple[Any, Any] | None:
    """``(scipy.linalg.blas.ssyrk, OpenBLAS thread controller or None)``; ``None`` when SciPy is missing."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas.ssyrk, scipy_blas_controller()


def _syrk_lower(xf: torch.Tensor) -> torch.Tensor:
    """``X^T X`` of a CPU float32 ``n x d`` tensor as a FULL symmetric float32 matrix, via BLAS ``ssyrk``."""
    ssyrk, controller = _scipy_syrk()  # type: ignore[misc]
    a = xf.detach().numpy().T  # d x n, Fortran-contiguous when x is C-contiguous: passed to BLAS without a copy
    previous = controller.get_num_threads() if controller is not None else None
    if controller is not None and previous != SYRK_THREADS:
        controller.set_num_threads(SYRK_THREADS)
    try:
        lower = torch.from_numpy(ssyrk(1.0, a, trans=0, lower=1))  # strides (1, d): [i, j] is row i, col j
    finally:
        if controller is not None and previous != SYRK_THREADS:
            controller.set_num_threads(previous)
    lower = torch.tril(lower)  # the strict upper triangle of BLAS's output is not part of its contract
    return lower + torch.tril(lower, diagonal=-1).T


def second_moment_torch(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    round_to: torch.dtype | None = None,
) -> torch.Tensor:
    """``acc += X^T X`` (lower triangle and diagonal) and ``colsum += X^T 1`` in float32 products; returns ``acc``.

    ``acc``/``colsum`` may be float32 or float64 (see the module docstring). ``round_to``
    (``torch.bfloat16``/``torch.float16``) first rounds float32 ``x`` to that dtype, as the Triton kernel's
    option of the same name does (16-bit ``x`` is unaffected). ``n == 0`` leaves both untouched. Raises
    :class:`ValueError` for inputs outside the contract. Safe under an active autocast.
    """
    return second_moments_torch([(x, acc, colsum)], round_to=round_to)[0]


def second_moments_torch(parts: Sequence[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]], *,
                         round_to: torch.dtype | None = None) -> list[torch.Tensor]:
    """:func:`second_moment_torch` of every ``(x, acc, colsum)`` (distinct accumulators); returns their
    accumulators.

    With the CPU's ``"blocked"`` method the block rows and column sums of all parts are one set of tasks on
    :mod:`kernels.cpu_pool`'s single-threaded workers, waited for once (the split halves of one layer call
    are two parts: one wait instead of two, and twice the tasks to balance)."""
    if round_to not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"round_to must be None, torch.bfloat16 or torch.float16, got {round_to!r}")
    accs, tasks = [], []
    for x, acc, colsum in parts:
        x, acc, colsum = check_inputs(x, acc, colsum, allow_float64=True)
        accs.append(acc)
        if x.shape[0] == 0:
            continue
        with torch.autocast(device_type=x.device.type, enabled=False):
            if round_to is not None and x.dtype == torch.float32:
                x = x.to(round_to)
            xf = x.to(torch.float32)
            if x.device.type == "cpu" and CPU_METHOD == "blocked":
                tasks.extend(_lower_block_tasks(xf, acc))
                if colsum is not None:
                    tasks.append((functools.partial(_add_column_sums, xf, colsum), float(xf.shape[1])))
                continue
            if x.device.type == "cpu" and CPU_METHOD == "syrk" and _scipy_syrk() is not None:
                acc.add_(_syrk_lower(xf.contiguous()))
            elif acc.dtype == torch.float32:
                acc.addmm_(xf.T, xf)
            else:
                acc.add_(torch.mm(xf.T, xf))
            if colsum is not None:
                _add_column_sums(xf, colsum)
    if tasks:
        cpu_pool.run_all([task for task, _ in tasks], [cost for _, cost in tasks])
    return accs


def _add_column_sums(xf: torch.Tensor, colsum: torch.Tensor) -> None:
    colsum.add_(xf.sum(dim=0))


def symmetrize(acc: torch.Tensor) -> torch.Tensor:
    """A new ``d x d`` tensor equal to the lower triangle of ``acc`` mirrored onto the upper one.

    ``out[i, j] = acc[max(i, j), min(i, j)]``: the diagonal is kept and nothing from the strict upper
    triangle of ``acc`` is read (it may hold garbage or NaN after the Triton kernel). ``acc`` is unchanged.
    """
    if not isinstance(acc, torch.Tensor) or acc.dim() != 2 or acc.shape[0] != acc.shape[1]:
        shape = tuple(acc.shape) if isinstance(acc, torch.Tensor) else type(acc).__name__
        raise ValueError(f"symmetrize needs a square 2-D tensor, got {shape}")
    lower = torch.tril(acc)
    strict_lower = torch.tril(acc, diagonal=-1)
    return lower + strict_lower.T
