r"""Triton kernel: lower-triangle ``acc += X^T X`` (and optionally ``colsum += X^T 1``), split over tokens.

Maths
-----
``x`` is ``n x d`` (tokens x features), bfloat16 / float16 / float32, row stride ``s >= d`` allowed, unit
column stride. With ``X`` the matrix of ``x``'s values, the kernel adds

    C = X^T X,   C[a, b] = sum_t X[t, a] X[t, b]          (d x d, symmetric)
    s = X^T 1,   s[a]    = sum_t X[t, a]                   (length d, only when ``colsum`` is given)

into the float32 running sums ``acc`` (``d x d``, any strides) and ``colsum``. Only the lower triangle and
the diagonal of ``acc`` are defined afterwards; the strict upper triangle is unspecified (the diagonal
tiles also touch the upper half of their own tile, other upper tiles are never touched).

Tiling and grid
---------------
``d`` is cut into ``T = ceil(d / BLOCK_D)`` column blocks. Only tiles ``(i, j)`` with ``i >= j`` are
computed, ``T (T + 1) / 2`` of them instead of ``T^2``; program ``p`` on grid axis 0 owns tile
``(i, j)`` with ``p = i (i + 1) / 2 + j`` (row-major over the lower triangle, so neighbouring programs
share the ``i`` block of ``x`` in L2). Grid axis 1 splits the ``n`` tokens into ``S`` contiguous ranges,
each a whole number of ``BLOCK_N`` row blocks. Program ``(p, k)`` loops over the row blocks of its range::

    tile += dot(trans(X[rows, I]), X[rows, J])          # BLOCK_D x BLOCK_D, float32 accumulator

and then adds ``tile`` into ``acc[I, J]``: a plain load + add + store when ``S == 1`` (one writer per
tile, deterministic), ``tl.atomic_add`` (relaxed) when ``S > 1``. Ragged ``n`` and ``d`` are masked (loads
read 0 outside, stores are masked). When ``colsum`` is given, only the diagonal programs (``i == j``) sum
their ``X[rows, I]`` block over rows, so every column is summed exactly once per token split.

``S`` is chosen so that ``pairs * S`` is about ``2 x`` the number of SMs (each split keeping at least
:data:`MIN_ROW_BLOCKS_PER_SPLIT` row blocks so the atomic epilogue stays cheap); in the interpreter it is
at most :data:`INTERPRETER_SPLITS`. Each program keeps one scalar pointer to its current row block,
advanced in 64-bit arithmetic (``n * s`` may exceed 2^31), plus loop-invariant 32-bit offsets inside the
block; offsets inside ``acc`` are 32-bit too (the wrapper checks both fit).

Performance notes (offline ``sm_90a`` compiles with Triton 3.8's ``ptxas``; no GPU timing yet): with
16-divisible pointers and row stride (Triton specializes such arguments) the loop is software-pipelined
(``cp.async`` into ``num_stages`` shared-memory buffers) and the dot is an async ``wgmma``; bf16
``BLOCK_D=128, BLOCK_N=64, 8 warps`` uses 174 registers and no spills. A row stride that is not a
multiple of 16 elements (e.g. ``d = 769``) compiles to plain loads without pipelining: correct, slower.

Precision and tolerances
------------------------
* bfloat16 / float16 inputs: tensor-core ``tl.dot`` with float32 accumulation. The product of two bf16
  (8-bit significand) or fp16 (11-bit) values is exact in float32, so relative to the float64 product of
  the SAME rounded inputs the only error is float32 accumulation: about ``sqrt(n) * 2^-24`` relative in
  the Frobenius norm for random data, bounded by ``n * 2^-24``. The tests use 1e-5 for n <= 1000.
* float32 inputs: ``input_precision`` is a compile-time choice, :data:`DEFAULT_FP32_PRECISION`.
  ``"ieee"`` (FMA on CUDA cores) gives exact-rounded float32 products: error as above plus one float32
  rounding per product, ~1e-7 .. 1e-6 relative. ``"tf32x3"`` (three TF32 tensor-core products
  ``hi*hi + hi*lo + lo*hi``) drops the ``lo*lo`` term and the bits below the second TF32 piece, about
  2^-21 relative per product. A CPU emulation (``cvt.rna`` split, truncated ``lo``, float32 sums) measured,
  relative Frobenius error of the lower triangle vs float64: n=1000, d=256: ieee 1.04e-7, tf32x3 1.09e-7,
  plain tf32 4.2e-5; n=50000, d=256: 2.42e-7 / 2.41e-7 / 6.6e-6; n=400000, d=128: 6.6e-7 / 6.9e-7 /
  2.2e-6. So tf32x3 is as accurate as ieee for this reduction while plain ``"tf32"`` (10-bit significand)
  is not and is never used. The default stays ``"ieee"`` until ``benchmarks/bench_kernels.py`` (which
  times and measures both on the GPU) confirms the hardware agrees with the emulation; tensor-core
  tf32x3 should be several times faster for float32 activations.

The float32 accumulator itself is the per-call limit: for a whole run, sum many calls into ``acc`` (the
error then grows with the total token count like any float32 running sum).

Autotuning
----------
``@triton.autotune`` over ``BLOCK_D in {32, 64, 128}``, ``BLOCK_N in {32, 64, 128}``, ``num_warps``,
``num_stages``, keyed on ``d``, a power-of-two bucket of ``n`` and the dtypes; configs that cannot help
(``BLOCK_D`` far above ``d``, shared memory beyond an H100's) are pruned first. ``acc`` and ``colsum``
are restored after every trial run, so tuning never corrupts the running sums. The winner is also
cached on disk (Triton's cache folder), so worker processes do not re-tune the same shapes. Under
``TRITON_INTERPRET=1`` (read when this module is imported) a single small config is used so CPU tests stay
fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

from ._validation import check_inputs

#: True when this module's kernel was defined under ``TRITON_INTERPRET=1`` (runs on CPU tensors).
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

#: ``tl.dot`` input precision for float32 inputs ("ieee" exact products; "tf32x3" faster, ~fp32).
DEFAULT_FP32_PRECISION: str = "ieee"
FP32_PRECISIONS: tuple[str, ...] = ("ieee", "tf32x3")

#: Token splits per tile in the interpreter (exercises the atomic path without slowing tests).
INTERPRETER_SPLITS: int = 2
#: Fewest BLOCK_N row blocks a token split should own on a GPU.
MIN_ROW_BLOCKS_PER_SPLIT: int = 8
#: Programs per SM the split heuristic aims for.
PROGRAMS_PER_SM: int = 2
#: Shared memory budget for the pipelined operand buffers (H100: 227 KiB per block, keep headroom).
SMEM_BUDGET_BYTES: int = 200 * 1024
_MAX_GRID_Y: int = 65535
_MAX_BLOCK_N: int = 128
_INT32_LIMIT: int = 2**31


def _gpu_configs() -> list[triton.Config]:
    configs = []
    for block_d in (32, 64, 128):
        for block_n in (32, 64, 128):
            warps = 4 if block_d <= 64 else 8
            for stages in (3, 4):
                configs.append(
                    triton.Config({"BLOCK_D": block_d, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
                )
    return configs


def _interpreter_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_D": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]


def _prune_configs(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
    """Drop configs whose tile is much wider than ``d`` or whose operand pipeline overflows shared memory."""
    d = int(named_args["d"])
    elem = named_args["x_ptr"].element_size()
    widest = max(32, triton.next_power_of_2(d))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_D"] <= widest
        and 2 * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_D"] * elem * max(c.num_stages, 1) <= SMEM_BUDGET_BYTES
    ]
    return kept or configs[:1]


def n_bucket(n: int) -> int:
    """Autotune key for the token count: the next power of two, clamped to [2^10, 2^24]."""
    return 1 << min(24, max(10, (max(n, 1) - 1).bit_length()))


@triton.autotune(
    configs=_interpreter_configs() if INTERPRETED else _gpu_configs(),
    key=["d", "n_bucket"],
    prune_configs_by={"early_config_prune": _prune_configs},
    restore_value=["acc_ptr", "colsum_ptr"],
    cache_results=True,
)
@triton.jit
def _second_moment_kernel(
    x_ptr,
    acc_ptr,
    colsum_ptr,
    n,
    d,
    n_bucket,
    stride_xn,
    stride_am,
    stride_an,
    stride_c,
    HAS_COLSUM: tl.constexpr,
    IS_FP32: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    FP32_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)

    # Lower-triangle tile (ti, tj), ti >= tj, from pid = ti (ti + 1) / 2 + tj. The float square root gives
    # ti to within one; the two integer corrections make it exact.
    ti = ((tl.sqrt(8.0 * pid.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    ti = tl.where(ti * (ti + 1) // 2 > pid, ti - 1, ti)
    ti = tl.where((ti + 1) * (ti + 2) // 2 <= pid, ti + 1, ti)
    tj = pid - ti * (ti + 1) // 2

    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < d
    mask_j = offs_j < d
    offs_n = tl.arange(0, BLOCK_N)

    rows_per_split = tl.cdiv(tl.cdiv(n, BLOCK_N), num_splits) * BLOCK_N
    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n)

    tile = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    col_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    on_diagonal = ti == tj

    # A scalar pointer to this split's current row block (64-bit arithmetic, advanced by whole row
    # blocks) plus loop-invariant 32-bit offsets inside the block: far fewer live registers than
    # carrying BLOCK_N x BLOCK_D tensors of 64-bit pointers through the loop.
    x_rows = x_ptr + row_start.to(tl.int64) * stride_xn
    offs_a = offs_n[:, None] * stride_xn + offs_i[None, :]
    offs_b = offs_n[:, None] * stride_xn + offs_j[None, :]
    col_mask_i = mask_i[None, :]
    col_mask_j = mask_j[None, :]
    step = stride_xn * BLOCK_N

    for r0 in range(row_start, row_end, BLOCK_N):
        row_mask = (offs_n < row_end - r0)[:, None]
        a = tl.load(x_rows + offs_a, mask=row_mask & col_mask_i, other=0.0)
        b = tl.load(x_rows + offs_b, mask=row_mask & col_mask_j, other=0.0)
        x_rows += step
        if UPCAST_OPERANDS:
            # Interpreter only: it stores bf16 as raw uint16 and its dot would multiply the bit patterns.
            # bf16 -> fp32 is exact and so are the products, so the numerics match the GPU contract.
            tile = tl.dot(tl.trans(a.to(tl.float32)), b.to(tl.float32), tile, input_precision="ieee")
        elif IS_FP32:
            tile = tl.dot(tl.trans(a), b, tile, input_precision=FP32_PRECISION)
        else:
            tile = tl.dot(tl.trans(a), b, tile)
        if HAS_COLSUM:
            if on_diagonal:
                col_sum += tl.sum(a.to(tl.float32), axis=0)

    # 32-bit offsets inside acc (the wrapper checks that every offset fits).
    acc_ptrs = acc_ptr + (offs_i[:, None] * stride_am + offs_j[None, :] * stride_an)
    out_mask = mask_i[:, None] & mask_j[None, :]
    if num_splits == 1:
        previous = tl.load(acc_ptrs, mask=out_mask, other=0.0)
        tl.store(acc_ptrs, previous + tile, mask=out_mask)
    else:
        tl.atomic_add(acc_ptrs, tile, mask=out_mask, sem="relaxed")

    if HAS_COLSUM:
        if on_diagonal:
            colsum_ptrs = colsum_ptr + offs_i * stride_c
            if num_splits == 1:
                previous_sum = tl.load(colsum_ptrs, mask=mask_i, other=0.0)
                tl.store(colsum_ptrs, previous_sum + col_sum, mask=mask_i)
            else:
                tl.atomic_add(colsum_ptrs, col_sum, mask=mask_i, sem="relaxed")


@functools.cache
def _sm_count(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def choose_splits(n: int, pairs: int, block_n: int, device: torch.device) -> int:
    """Number of token splits ``S`` (grid axis 1) for ``pairs`` lower-triangle tiles over ``n`` rows.

    GPU: enough programs to fill about :data:`PROGRAMS_PER_SM` per SM, but at least
    :data:`MIN_ROW_BLOCKS_PER_SPLIT` row blocks per split. Interpreter / CPU: at most
    :data:`INTERPRETER_SPLITS`. Always ``1 <= S <= ceil(n / block_n)`` (no empty split).
    """
    row_blocks = max(1, triton.cdiv(n, block_n))
    if device.type == "cuda" and not INTERPRETED:
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(index), pairs)
        splits = min(wanted, row_blocks // MIN_ROW_BLOCKS_PER_SPLIT)
    else:
        splits = INTERPRETER_SPLITS
    return int(max(1, min(splits, row_blocks, _MAX_GRID_Y)))


def second_moment_triton(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    splits: int | None = None,
    fp32_precision: str = DEFAULT_FP32_PRECISION,
) -> torch.Tensor:
    """Lower-triangle ``acc += X^T X`` (and ``colsum += X^T 1``) with the Triton kernel; returns ``acc``.

    ``acc`` and ``colsum`` must be float32 (``acc`` is allocated zeroed when ``None``). ``splits`` forces
    the number of token splits (tests use it to cover the store and the atomic epilogue);
    ``fp32_precision`` is the ``tl.dot`` input precision for float32 ``x`` (see the module docstring).
    ``x`` must be on CUDA, or on any device when this module was imported with ``TRITON_INTERPRET=1``.
    """
    x, acc, colsum = check_inputs(x, acc, colsum, allow_float64=False)
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if x.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"the Triton backend needs a CUDA tensor (x is on {x.device}); set TRITON_INTERPRET=1 before "
            "importing kernels.triton_second_moment to run it on the CPU interpreter"
        )
    n, d = x.shape
    if n == 0:
        return acc
    if _MAX_BLOCK_N * x.stride(0) + d >= _INT32_LIMIT:
        x = x.contiguous()  # in-block offsets are 32-bit; a contiguous copy has the smallest row stride
    if (d - 1) * (abs(acc.stride(0)) + abs(acc.stride(1))) >= _INT32_LIMIT:
        raise ValueError(
            f"acc with shape ({d}, {d}) and strides {tuple(acc.stride())} is too large for the Triton kernel's "
            "32-bit offsets; use backend='torch'"
        )

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        tiles = triton.cdiv(d, meta["BLOCK_D"])
        pairs = tiles * (tiles + 1) // 2
        s = splits if splits is not None else choose_splits(n, pairs, meta["BLOCK_N"], x.device)
        return pairs, int(min(s, _MAX_GRID_Y))

    colsum_arg = colsum if colsum is not None else acc
    stride_c = colsum.stride(0) if colsum is not None else 0
    with _device_guard(x.device):
        _second_moment_kernel[grid](
            x,
            acc,
            colsum_arg,
            n,
            d,
            n_bucket(n),
            x.stride(0),
            acc.stride(0),
            acc.stride(1),
            stride_c,
            HAS_COLSUM=colsum is not None,
            IS_FP32=x.dtype == torch.float32,
            UPCAST_OPERANDS=INTERPRETED and x.dtype == torch.bfloat16,
            FP32_PRECISION=fp32_precision,
        )
    return acc


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Launch on x's GPU (Triton launches on the current device), a no-op elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


__all__ = [
    "DEFAULT_FP32_PRECISION",
    "FP32_PRECISIONS",
    "INTERPRETED",
    "choose_splits",
    "n_bucket",
    "second_moment_triton",
]
