r"""Triton kernel: lower-triangle ``acc += X^T X`` (and optionally ``colsum += X^T 1``), split over tokens.

Maths
-----
``x`` is ``n x d`` (tokens x features), bfloat16 / float16 / float32, row stride ``s >= d`` allowed, unit
column stride. With ``X`` the matrix of ``x``'s values (float32 values optionally rounded first, see
*Precision*), the kernel adds

    C = X^T X,   C[a, b] = sum_t X[t, a] X[t, b]          (d x d, symmetric)
    s = X^T 1,   s[a]    = sum_t X[t, a]                   (length d, only when ``colsum`` is given)

into the float32 running sums ``acc`` (``d x d``, any strides) and ``colsum``. Only the lower triangle and
the diagonal of ``acc`` are defined afterwards; the strict upper triangle is unspecified (the diagonal
tiles also touch the upper half of their own tile, other upper tiles are never touched).

Tiling and grid
---------------
``d`` is cut into ``T = ceil(d / BLOCK_D)`` column blocks. Only tiles ``(i, j)`` with ``i >= j`` are
computed, ``P = T (T + 1) / 2`` of them instead of ``T^2``; program ``p`` on grid axis 0 owns tile
``(i, j)`` with ``p = i (i + 1) / 2 + j`` (row-major over the lower triangle, so neighbouring programs
share the ``i`` block of ``x`` in L2). Grid axis 1 splits the ``n`` tokens into ``S`` contiguous ranges,
each a whole number of ``BLOCK_N`` row blocks. Program ``(p, k)`` loops over the row blocks of its range::

    tile += dot(trans(X[rows, I]), X[rows, J])          # BLOCK_D x BLOCK_D, float32 accumulator

and then adds ``tile`` into ``acc[I, J]``: a plain load + add + store when ``S == 1`` (one writer per
tile, deterministic), ``tl.atomic_add`` (relaxed) when ``S > 1``. Ragged ``n`` and ``d`` are masked (loads
read 0 outside, stores are masked).

Column sum: only the diagonal programs (``i == j``) compute it, so every column is summed exactly once
per token split, and they do it on the matrix units: ``cs += dot(trans(X[rows, I]), E)`` with ``E`` the
``BLOCK_N x 16`` matrix whose first column is ones and the rest zeros (products with 1 and 0 are exact,
accumulation float32), reduced over its 16 columns once after the loop (adding exact zeros). This replaces
a cross-warp ``sum`` over rows in every iteration, which made the diagonal programs the tail of the grid;
the extra dot is ``16 / BLOCK_D`` of the main one, on ``1 / T`` of the programs.

Splits that fill whole waves (:func:`choose_splits`): with ``R`` programs resident per SM (from the
compiled kernel's registers and shared memory once it has run, estimated from the tile before that) a
grid of ``P S`` programs runs in ``ceil(P S / (R * SMs))`` waves of ``ceil(row_blocks / S)`` row blocks
each; ``S`` minimises ``waves * (row blocks per split + E)`` (``E`` =
:data:`EPILOGUE_ROW_BLOCKS` charges each split's pipeline fill and atomic epilogue), keeping at least :data:`MIN_ROW_BLOCKS_PER_SPLIT` row blocks per split. (ViT-B, d = 768,
BLOCK_D = 128 with one program per SM on an H200: ``P = 21``; the old rule "2 programs per SM" chose
``S = 13``, 273 programs = 2.07 waves; this one picks ``S = 6``, 126 programs in one wave.) In the
interpreter ``S`` is at most :data:`INTERPRETER_SPLITS`. Each program keeps one scalar pointer to its
current row block, advanced in 64-bit arithmetic (``n * s`` may exceed 2^31), plus loop-invariant 32-bit
offsets inside the block; offsets inside ``acc`` are 32-bit too (the wrapper checks both fit).

Precision and tolerances
------------------------
* bfloat16 / float16 inputs: tensor-core ``tl.dot`` with float32 accumulation. The product of two bf16
  (8-bit significand) or fp16 (11-bit) values is exact in float32, so relative to the float64 product of
  the SAME rounded inputs the only error is float32 accumulation: about ``sqrt(n) * 2^-24`` relative in
  the Frobenius norm for random data, bounded by ``n * 2^-24``. The tests use 2e-5 for n <= 1000.
* float32 inputs, ``round_to=torch.bfloat16`` (or ``float16``): each value is rounded to that dtype in
  registers right after the load (round to nearest even, as ``torch.Tensor.to`` does) and then takes the
  16-bit tensor-core path above. Under an autocast to that dtype this is exactly what the layer itself
  multiplies (autocast rounds a Linear's or Conv's float32 input the same way), so the statistic is that
  of the layer's real input; :func:`kernels.second_moment` chooses it by default when such an autocast
  is active (``fp32_inputs="autocast"``). Why it matters: under bf16 autocast LayerNorm outputs float32,
  so qkv, fc1, patch embedding and head inputs (26 of ViT-B's 50 layers) arrive in float32, and without
  rounding they compile to FMA loops off the tensor cores.
* float32 inputs kept exact (``round_to=None``, ``fp32_inputs="exact"``): ``input_precision`` is a
  compile-time choice, :data:`DEFAULT_FP32_PRECISION`. ``"ieee"`` (FMA on CUDA cores) gives exact-rounded
  float32 products: error as above plus one float32 rounding per product, ~1e-7 .. 1e-6 relative.
  ``"tf32x3"`` (three TF32 tensor-core products ``hi*hi + hi*lo + lo*hi``) drops the ``lo*lo`` term and
  the bits below the second TF32 piece, about 2^-21 relative per product. A CPU emulation measured,
  relative Frobenius error of the lower triangle vs float64: n=1000, d=256: ieee 1.04e-7, tf32x3 1.09e-7,
  plain tf32 4.2e-5; n=50000, d=256: 2.42e-7 / 2.41e-7 / 6.6e-6; n=400000, d=128: 6.6e-7 / 6.9e-7 /
  2.2e-6. So tf32x3 is as accurate as ieee for this reduction while plain ``"tf32"`` is not and is never
  used. The default stays ``"ieee"`` until ``benchmarks/bench_kernels.py --fp32`` confirms on the GPU.

The float32 accumulator itself is the per-call limit: for a whole run, sum many calls into ``acc`` (the
error then grows with the total token count like any float32 running sum).

Autotuning and compilation
--------------------------
``@triton.autotune`` over ``BLOCK_D in {32, 64, 128}``, ``BLOCK_N in {32, 64, 128}``, ``num_warps``,
``num_stages``, keyed on ``d``, a coarse class of ``n`` (:func:`n_class`),
every compile-time switch (column sum on/off, float32 precision, rounding) and the dtypes (Triton adds
those); the class of ``n`` is 0 below 4096 rows, 1 from there on. ``n`` itself is not specialised (``do_not_specialize``), so a ragged last batch neither
recompiles nor re-tunes unless it drops into a smaller class; :func:`prepare` tunes and compiles a shape
ahead of the data loop. Configs that cannot help (``BLOCK_D`` far above ``d``, shared memory beyond an
H100's) are pruned first. ``acc`` and ``colsum`` are restored after every trial run, so tuning never
corrupts the running sums. The winner is also cached on disk (Triton's cache folder), so worker
processes do not re-tune the same shapes. Under ``TRITON_INTERPRET=1`` (read when this module is
imported) a single small config is used so CPU tests stay fast.

Offline ``sm_90a`` compiles (Triton 3.8, its ``ptxas -v``; no GPU timing yet): with 16-divisible pointers
and row stride the loop is software-pipelined (``cp.async``) and the bf16 dot is an async ``wgmma``. bf16
``BLOCK_D=128, BLOCK_N=64``, 8 warps, 3 stages: 255 registers and no spills with the column sum on the
matrix units (the former per-iteration cross-warp sum spilled 36 bytes in the same build; without any
column sum, 254), 98 KiB of shared memory: one program per SM. float32 rounded to bf16: 255 registers, a
4-byte spill, 146 KiB (the float32 tiles are staged). ``BLOCK_D=64``, 4 warps: 163 registers, three
programs per SM. A row stride that is not a multiple of 16 elements (e.g. ``d = 769``) compiles to plain
loads: correct, slower.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from typing import Any

import torch
import triton
import triton.language as tl

from ._validation import check_inputs

#: True when this module's kernel was defined under ``TRITON_INTERPRET=1`` (runs on CPU tensors).
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

#: ``tl.dot`` input precision for float32 inputs kept exact ("ieee" exact products; "tf32x3" faster, ~fp32).
DEFAULT_FP32_PRECISION: str = "ieee"
FP32_PRECISIONS: tuple[str, ...] = ("ieee", "tf32x3")
#: ``round_to`` values: float32 inputs rounded to this dtype on load (``None``: kept exact).
ROUNDINGS: dict[torch.dtype | None, str] = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}

#: Token splits per tile in the interpreter (exercises the atomic path without slowing tests).
INTERPRETER_SPLITS: int = 2
#: Fewest BLOCK_N row blocks a token split should own on a GPU.
MIN_ROW_BLOCKS_PER_SPLIT: int = 8
#: Row blocks' worth of time charged per split: its pipeline fill (``num_stages`` loads in flight before the
#: first dot) and its atomic epilogue (a BLOCK_D^2 float32 tile). An estimate until timed on the GPU.
EPILOGUE_ROW_BLOCKS: float = 4.0
#: Most waves the split search considers (more splits only add atomics).
MAX_WAVES: int = 4
#: Shared memory budget for the pipelined operand buffers (H100: 227 KiB per block, keep headroom).
SMEM_BUDGET_BYTES: int = 200 * 1024
#: Width of the column-sum selector ``E`` (the smallest N ``tl.dot`` accepts).
COLSUM_WIDTH: int = 16
_MAX_GRID_Y: int = 65535
_MAX_BLOCK_N: int = 128
_INT32_LIMIT: int = 2**31
#: Defaults when the device does not report them (Hopper: 64 Ki registers, 228 KiB shared memory per SM).
_REGS_PER_SM: int = 65536
_SMEM_PER_SM: int = 228 * 1024
_THREADS_PER_SM: int = 2048


#: Environment variable: ``quick`` restricts autotuning to three configs (the GPU tests use it, to compile
#: in seconds rather than minutes); anything else, or unset, tunes over the full set. Read at import.
CONFIGS_ENV: str = "ANALYSIS_TRITON_CONFIGS"


def _gpu_configs() -> list[triton.Config]:
    if os.environ.get(CONFIGS_ENV, "").strip().lower() == "quick":
        return [triton.Config({"BLOCK_D": bd, "BLOCK_N": bn}, num_warps=w, num_stages=3)
                for bd, bn, w in ((128, 64, 8), (64, 64, 4), (32, 32, 4))]
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


def n_class(n: int) -> int:
    """Autotune key for the token count: 0 below 4096 rows (classifier heads, small last batches), else 1.

    Coarse on purpose: the best tile hardly depends on ``n`` once ``n`` fills the GPU, and a ragged last
    batch of a run (ViT-B: 21 images or more) stays in its class, so it reuses the tuned, compiled kernel.
    """
    return 0 if n < 4096 else 1


def n_bucket(n: int) -> int:
    """The former autotune key (next power of two clamped to [2^10, 2^24]); kept for scripts that log it."""
    return 1 << min(24, max(10, (max(n, 1) - 1).bit_length()))


_AUTOTUNE_KWARGS: dict[str, Any] = {}
if "cache_results" in inspect.signature(triton.autotune).parameters:  # Triton >= 3.2 (the device has 3.6)
    _AUTOTUNE_KWARGS["cache_results"] = True


@triton.jit
def _dot(a, b, acc, IS_FP32: tl.constexpr, UPCAST_OPERANDS: tl.constexpr, FP32_PRECISION: tl.constexpr):
    """``acc + trans(a) @ b`` in the operands' own precision (see the module docstring)."""
    if UPCAST_OPERANDS:
        # Interpreter only: it stores bf16 as raw uint16 and its dot would multiply the bit patterns.
        # bf16 -> fp32 is exact and so are the products, so the numerics match the GPU contract.
        return tl.dot(tl.trans(a.to(tl.float32)), b.to(tl.float32), acc, input_precision="ieee")
    elif IS_FP32:
        return tl.dot(tl.trans(a), b, acc, input_precision=FP32_PRECISION)
    else:
        return tl.dot(tl.trans(a), b, acc)


@triton.jit
def _round_to_bf16_as_fp32(v):
    """float32 -> nearest bfloat16 (ties to even), returned as float32, with integer operations: the
    interpreter's own float32 -> bf16 conversion does not round to nearest (the GPU's ``cvt.rn`` does)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.autotune(
    configs=_interpreter_configs() if INTERPRETED else _gpu_configs(),
    key=["d", "n_class", "HAS_COLSUM", "FP32_PRECISION", "ROUND_TO"],
    prune_configs_by={"early_config_prune": _prune_configs},
    restore_value=["acc_ptr", "colsum_ptr"],
    **_AUTOTUNE_KWARGS,
)
@triton.jit(do_not_specialize=["n", "n_class"])
def _second_moment_kernel(
    x_ptr,
    acc_ptr,
    colsum_ptr,
    n,
    d,
    n_class,
    stride_xn,
    stride_am,
    stride_an,
    stride_c,
    HAS_COLSUM: tl.constexpr,
    IS_FP32: tl.constexpr,  # the dots' operands are float32 (x is float32 and not rounded)
    ROUND_TO: tl.constexpr,
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
    on_diagonal = ti == tj
    if HAS_COLSUM:
        cs_tile = tl.zeros((BLOCK_D, 16), dtype=tl.float32)
        selector = (tl.arange(0, 16) == 0)[None, :] & (offs_n >= 0)[:, None]  # E: BLOCK_N x 16, ones in column 0
        if UPCAST_OPERANDS or IS_FP32:
            selector = selector.to(tl.float32)
        elif ROUND_TO == "bf16":
            selector = selector.to(tl.bfloat16)
        elif ROUND_TO == "fp16":
            selector = selector.to(tl.float16)
        else:
            selector = selector.to(x_ptr.dtype.element_ty)

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
        if ROUND_TO == "bf16":
            if UPCAST_OPERANDS:
                a = _round_to_bf16_as_fp32(a)
                b = _round_to_bf16_as_fp32(b)
            else:
                a = a.to(tl.bfloat16)
                b = b.to(tl.bfloat16)
        elif ROUND_TO == "fp16":
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        tile = _dot(a, b, tile, IS_FP32, UPCAST_OPERANDS, FP32_PRECISION)
        if HAS_COLSUM:
            if on_diagonal:
                cs_tile = _dot(a, selector, cs_tile, IS_FP32, UPCAST_OPERANDS, FP32_PRECISION)

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
            col_sum = tl.sum(cs_tile, axis=1)  # columns 1..15 are exact zeros
            colsum_ptrs = colsum_ptr + offs_i * stride_c
            if num_splits == 1:
                previous_sum = tl.load(colsum_ptrs, mask=mask_i, other=0.0)
                tl.store(colsum_ptrs, previous_sum + col_sum, mask=mask_i)
            else:
                tl.atomic_add(colsum_ptrs, col_sum, mask=mask_i, sem="relaxed")


# ------------------------------------------------------------------------------------------ the grid


@functools.cache
def _sm_resources(device_index: int) -> tuple[int, int, int, int]:
    """``(SMs, registers, shared-memory bytes, threads)`` per SM of a CUDA device."""
    props = torch.cuda.get_device_properties(device_index)
    return (
        int(props.multi_processor_count),
        int(getattr(props, "regs_per_multiprocessor", 0) or _REGS_PER_SM),
        int(getattr(props, "shared_memory_per_multiprocessor", 0) or _SMEM_PER_SM),
        int(getattr(props, "max_threads_per_multi_processor", 0) or _THREADS_PER_SM),
    )


#: Programs per SM measured from compiled kernels, by ``(BLOCK_D, BLOCK_N, x dtype, rounding)``.
_RESIDENCY: dict[tuple[int, int, str, str], int] = {}


def residency(regs_per_thread: int, shared_bytes: int, warps: int,
              resources: tuple[int, int, int, int] = (0, _REGS_PER_SM, _SMEM_PER_SM, _THREADS_PER_SM)) -> int:
    """Programs of one kernel that fit on one SM at once (registers allocated per warp in units of 256,
    1 KiB of shared memory reserved per block), at least 1."""
    _, regs_sm, smem_sm, threads_sm = resources
    regs_per_warp = max(1, math.ceil(max(regs_per_thread, 1) * 32 / 256) * 256)
    by_regs = regs_sm // (regs_per_warp * warps)
    by_smem = smem_sm // (shared_bytes + 1024)
    by_threads = threads_sm // (32 * warps)
    return int(max(1, min(by_regs, by_smem, by_threads, 32)))


def estimated_residency(block_d: int, block_n: int, elem: int, resources: tuple[int, int, int, int] | None = None) -> int:
    """Programs per SM before the kernel was compiled: float32 accumulator tile per thread plus ~110
    registers of addressing and operands (the bf16 128 x 64 config measured 174 = 64 + 110), and 4
    pipeline stages of both operands in shared memory."""
    warps = 4 if block_d <= 64 else 8
    regs = min(255, block_d * block_d // (32 * warps) + 110)
    shared = 4 * 2 * block_n * block_d * elem
    return residency(regs, shared, warps, resources or (0, _REGS_PER_SM, _SMEM_PER_SM, _THREADS_PER_SM))


@functools.lru_cache(maxsize=4096)
def wave_splits(pairs: int, row_blocks: int, slots: int) -> int:
    """``S`` minimising ``ceil(pairs * S / slots) * (ceil(row_blocks / S) + EPILOGUE_ROW_BLOCKS)``.

    ``slots`` programs run at once (SMs x programs per SM). Each split keeps at least
    :data:`MIN_ROW_BLOCKS_PER_SPLIT` row blocks; ``S`` never exceeds what :data:`MAX_WAVES` waves hold.
    Ties go to the smaller ``S`` (fewer atomic epilogues).
    """
    most = max(1, min(row_blocks // MIN_ROW_BLOCKS_PER_SPLIT, MAX_WAVES * slots // max(pairs, 1), _MAX_GRID_Y))
    best, best_cost = 1, math.inf
    for s in range(1, most + 1):
        waves = -(-pairs * s // slots)
        cost = waves * (-(-row_blocks // s) + EPILOGUE_ROW_BLOCKS)
        if cost < best_cost - 1e-9:
            best, best_cost = s, cost
    return best


def choose_splits(n: int, pairs: int, block_n: int, device: torch.device, programs_per_sm: int | None = None) -> int:
    """Number of token splits ``S`` (grid axis 1) for ``pairs`` lower-triangle tiles over ``n`` rows.

    GPU: :func:`wave_splits` with ``programs_per_sm`` resident programs per SM (1 if not given).
    Interpreter / CPU: at most :data:`INTERPRETER_SPLITS`. Always ``1 <= S <= ceil(n / block_n)``.
    """
    row_blocks = max(1, triton.cdiv(n, block_n))
    if device.type == "cuda" and not INTERPRETED:
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms = _sm_resources(index)[0]
        splits = wave_splits(pairs, row_blocks, sms * max(1, programs_per_sm or 1))
    else:
        splits = INTERPRETER_SPLITS
    return int(max(1, min(splits, row_blocks, _MAX_GRID_Y)))


def _record_residency(kernel: Any, key: tuple[int, int, str, str], device: torch.device) -> None:
    """Remember how many programs of the kernel just launched fit on one SM (no-op in the interpreter)."""
    regs, metadata = getattr(kernel, "n_regs", None), getattr(kernel, "metadata", None)
    if device.type != "cuda" or not regs or metadata is None:
        return
    shared, warps = int(getattr(metadata, "shared", 0) or 0), int(getattr(metadata, "num_warps", 4) or 4)
    index = device.index if device.index is not None else torch.cuda.current_device()
    _RESIDENCY[key] = residency(int(regs), shared, warps, _sm_resources(index))


# --------------------------------------------------------------------------------------- the wrapper


def second_moment_triton(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    splits: int | None = None,
    fp32_precision: str = DEFAULT_FP32_PRECISION,
    round_to: torch.dtype | None = None,
) -> torch.Tensor:
    """Lower-triangle ``acc += X^T X`` (and ``colsum += X^T 1``) with the Triton kernel; returns ``acc``.

    ``acc`` and ``colsum`` must be float32 (``acc`` is allocated zeroed when ``None``). ``splits`` forces
    the number of token splits (tests use it to cover the store and the atomic epilogue);
    ``fp32_precision`` is the ``tl.dot`` input precision for float32 ``x`` kept exact; ``round_to``
    (``torch.bfloat16``/``torch.float16``) rounds float32 ``x`` to that dtype on load instead (ignored for
    16-bit ``x``). ``x`` must be on CUDA, or anywhere when this module was imported with ``TRITON_INTERPRET=1``.
    """
    x, acc, colsum = check_inputs(x, acc, colsum, allow_float64=False)
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
    if round_to not in ROUNDINGS:
        raise ValueError(f"round_to must be None, torch.bfloat16 or torch.float16, got {round_to!r}")
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
    rounding = ROUNDINGS[round_to] if x.dtype == torch.float32 else "none"
    is_fp32 = x.dtype == torch.float32 and rounding == "none"  # the dots multiply float32 operands
    dtype_name = str(x.dtype).removeprefix("torch.")

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        tiles = triton.cdiv(d, meta["BLOCK_D"])
        pairs = tiles * (tiles + 1) // 2
        if splits is not None:
            return pairs, int(min(splits, _MAX_GRID_Y))
        key = (meta["BLOCK_D"], meta["BLOCK_N"], dtype_name, rounding)
        per_sm = _RESIDENCY.get(key)
        if per_sm is None and x.device.type == "cuda" and not INTERPRETED:
            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            per_sm = estimated_residency(meta["BLOCK_D"], meta["BLOCK_N"], x.element_size(), _sm_resources(index))
        return pairs, choose_splits(n, pairs, meta["BLOCK_N"], x.device, per_sm)

    colsum_arg = colsum if colsum is not None else acc
    stride_c = colsum.stride(0) if colsum is not None else 0
    with _device_guard(x.device):
        kernel = _second_moment_kernel[grid](
            x,
            acc,
            colsum_arg,
            n,
            d,
            n_class(n),
            x.stride(0),
            acc.stride(0),
            acc.stride(1),
            stride_c,
            HAS_COLSUM=colsum is not None,
            IS_FP32=is_fp32,
            ROUND_TO=rounding,
            UPCAST_OPERANDS=INTERPRETED and (x.dtype == torch.bfloat16 or rounding == "bf16"),
            FP32_PRECISION=fp32_precision,
        )
    best = getattr(_second_moment_kernel, "best_config", None)
    if best is not None and splits is None:
        _record_residency(kernel, (best.kwargs["BLOCK_D"], best.kwargs["BLOCK_N"], dtype_name, rounding), x.device)
    return acc


def prepare(d: int, dtype: torch.dtype, n: int, *, device: torch.device | str = "cuda", colsum: bool = True,
            fp32_precision: str = DEFAULT_FP32_PRECISION, round_to: torch.dtype | None = None) -> None:
    """Tune and compile the kernel for one shape before the data loop (on scratch tensors).

    Later calls with the same ``d``, dtype, switches and :func:`n_class` of ``n`` reuse the tuned,
    compiled kernel, so no batch of the run pays for compilation or tuning.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(d)
    x = torch.randn(max(n, 1), d, generator=g, device=device).to(dtype)
    acc = torch.zeros(d, d, dtype=torch.float32, device=device)
    sums = torch.zeros(d, dtype=torch.float32, device=device) if colsum else None
    second_moment_triton(x, acc, sums, fp32_precision=fp32_precision, round_to=round_to)
    second_moment_triton(x, acc, sums, fp32_precision=fp32_precision, round_to=round_to)  # residency known


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Launch on x's GPU (Triton launches on the current device), a no-op elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


__all__ = [
    "DEFAULT_FP32_PRECISION",
    "FP32_PRECISIONS",
    "INTERPRETED",
    "ROUNDINGS",
    "choose_splits",
    "estimated_residency",
    "n_bucket",
    "n_class",
    "prepare",
    "residency",
    "second_moment_triton",
    "wave_splits",
]
