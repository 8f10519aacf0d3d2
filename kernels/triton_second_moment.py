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

Two copies of that loop are compiled, each a straight-line body: off-diagonal programs (``i != j``) load two
blocks; diagonal programs (``i == j``) load one block, use it as both operands, and (with ``colsum``) also
issue the column sum ``cs += dot(trans(X[rows, I]), E)``, ``E`` the ``BLOCK_N x 16`` matrix with ones in
its first column and zeros elsewhere (products with 1 and 0 are exact; the 16 columns are reduced once after
the loop). Every column is so summed exactly once per token split, on the tensor cores. The former single
loop issued the column-sum dot under a run-time ``if``, which compiled to a wait for every wgmma (PTX
``wgmma.wait_group 0``) on the diagonal programs, 36 of 126 at d = 768; both loops now keep a wgmma in
flight (``wait_group 2`` and ``1``; ``kernels/aot.py`` reads it from the PTX of every build).

Epilogue: one relaxed ``tl.atomic_add`` per element of ``acc`` (and of ``colsum`` on diagonal programs). With
``S == 1`` each element has one writer, so the sum is exact and deterministic; with ``S > 1`` the order of
the splits' adds is not fixed (last-bit differences from run to run; see *Deterministic mode*). The former
load + add + store epilogue for ``S == 1`` kept a 64-bit pointer per element live between its load and its
store, 128 registers per thread at ``BLOCK_D = 128``, and the build sat at the 255-register cap (216 now).
Ragged ``n`` and ``d`` are masked (loads read 0 outside, stores are masked).

Splits that fill whole waves (:func:`choose_splits`): with ``R`` programs resident per SM (from the
compiled kernel's registers and shared memory once it has run, estimated from the tile before that) a
grid of ``P S`` programs runs in ``ceil(P S / (R * SMs))`` waves of ``ceil(row_blocks / S)`` row blocks
each; ``S`` minimises ``waves * (row blocks per split + E)`` (``E`` = :data:`EPILOGUE_ROW_BLOCKS` charges each
split's pipeline fill and atomic epilogue), over splits of at least :data:`MIN_ROW_BLOCKS_PER_SPLIT` row
blocks and grids of at most :data:`MAX_WAVES` waves. ViT-B at batch 256 on an H100/H200 (132 SMs, one
program of ``BLOCK_D = 128`` each, 788 row blocks of 64): d = 768 (``P = 21``) takes ``S = 6``, 126 programs
in one wave; d = 3072 (``P = 300``) takes ``S = 3``, 900 programs in 7 waves (6.8 needed), where the former
cap (at most 4 waves) allowed only ``S = 1``, 3 waves for 2.27 waves of work (the model's time 1.27x). In the
interpreter ``S`` is at most :data:`INTERPRETER_SPLITS`. Each program keeps one scalar pointer to its
current row block, advanced in 64-bit arithmetic (``n * s`` may exceed 2^31), plus loop-invariant 32-bit
offsets inside the block; offsets inside ``acc`` are 32-bit too (the wrapper checks both fit).

Deterministic mode
------------------
``deterministic=True`` (or ``ANALYSIS_DETERMINISTIC=1``, or ``torch.use_deterministic_algorithms(True)``):
the tiling and ``S`` depend on ``n``, ``d`` and the operand class only (:func:`deterministic_plan`: the first
shipped tiling that fits, no autotuning, and :func:`wave_splits` for a reference of :data:`REFERENCE_SMS` SMs),
each split stores its partial tiles (and column sums) whole into a workspace of ``S P (BLOCK_D^2 +
BLOCK_D)`` floats, and a second small kernel adds them into ``acc`` in split order ``0 .. S-1``. The same input
then gives the same bits on every run and on every GPU of one architecture with the same Triton. Cost: the
workspace's write and read (ViT-B d = 3072, ``S = 3``: 59 MB each way, about 30 us at HBM speed) and one more
launch per call.

Precision and tolerances
------------------------
* bfloat16 / float16 inputs: tensor-core ``tl.dot`` with float32 accumulation. The product of two bf16
  (8-bit significand) or fp16 (11-bit) values is exact in float32, so relative to the float64 product of
  the SAME rounded inputs the only error is float32 accumulation: about ``sqrt(n) * 2^-24`` relative in
  the Frobenius norm for random data, bounded by ``n * 2^-24``. The tests use 2e-5 for n <= 1000.
* float32 inputs, ``round_to=torch.bfloat16`` (or ``float16``): each value is rounded to that dtype in
  registers right after the load (round to nearest even, as ``torch.Tensor.to`` does) and then takes the
  16-bit tensor-core path above; :func:`kernels.second_moment` chooses it by default when such an autocast
  is active (``fp32_inputs="autocast"``). The rounded operands go from registers through shared memory to
  the wgmma, and Triton (3.8) then waits for every wgmma before the next iteration may overwrite that
  staging buffer (``wait_group 0``; unrolling by two or loading the diagonal block once does not change it).
  The engine therefore does not use this path for the layers it hooks: under autocast the capture rounds a
  plain Linear's or Conv's float32 input once and hands that bf16 tensor both to the statistics (16-bit
  path, asynchronous) and to the layer, whose autocast then has nothing left to cast
  (:mod:`analysis.capture`). Either way the statistic is that of what the layer multiplies.
* float32 inputs kept exact (``round_to=None``, ``fp32_inputs="exact"``; the engine's default precision
  ``fp32``): ``input_precision`` is a compile-time choice, :data:`DEFAULT_FP32_PRECISION`. ``"ieee"`` (FMA on
  CUDA cores) gives exact-rounded float32 products: error as above plus one float32 rounding per product,
  ~1e-7 .. 1e-6 relative. ``"tf32x3"`` (three TF32 tensor-core products ``hi*hi + hi*lo + lo*hi``) drops the
  ``lo*lo`` term and the bits below the second TF32 piece, about 2^-21 relative per product. A CPU emulation
  measured, relative Frobenius error of the lower triangle vs float64: n=1000, d=256: ieee 1.04e-7, tf32x3
  1.09e-7, plain tf32 4.2e-5; n=50000, d=256: 2.42e-7 / 2.41e-7 / 6.6e-6; n=400000, d=128: 6.6e-7 / 6.9e-7 /
  2.2e-6. So tf32x3 is as accurate as ieee for this reduction while plain ``"tf32"`` is not and is never
  used. Its pieces are staged like the rounded operands (``wait_group 0``, six per iteration), so it is not
  the obvious winner either; the default stays ``"ieee"`` until ``benchmarks/bench_kernels.py --fp32``
  times both on the GPU.

The float32 accumulator itself is the per-call limit: for a whole run, sum many calls into ``acc`` (the
error then grows with the total token count like any float32 running sum).

Tilings, autotuning and compilation
-----------------------------------
Each operand class (:data:`OPERAND_MODES`: 16-bit, rounded, ieee, tf32x3) has its own short list of tilings,
:data:`SHIPPED`; the autotuner tries those of the call's class that suit ``d`` and fit one block's shared
memory (:func:`candidate_configs`, :func:`shared_memory_bytes`: the former rule kept a tf32x3 128 x 64 tiling
that needs 233,472 B on sm_90a, above the 232,448 B a block may use, and so failed at launch), keyed on ``d``,
a coarse class of ``n`` (:func:`n_class`), every compile-time switch and the dtypes (Triton adds those); the
class of ``n`` is 0 below 4096 rows, 1 from there on. ``n`` itself is not specialised
(``do_not_specialize``), so a ragged last batch neither recompiles nor re-tunes unless it drops into a
smaller class; :func:`prepare` tunes and compiles a shape ahead of the data loop. ViT-B's widths (768, 3072)
compile 4 16-bit tilings (the former set: 14 per class). ``acc`` and ``colsum`` are restored after every
trial run, so tuning never corrupts the running sums. The winner is also cached on disk (Triton's cache
folder), so worker processes do not re-tune the same shapes. Under ``TRITON_INTERPRET=1`` (read when this
module is imported) a single small config is used so CPU tests stay fast.

Offline builds (Triton 3.8, ``sm_90a``, 16-divisible pointers, ``d`` and strides; ``python -m kernels.aot``
prints the table for every shipped tiling, ``benchmarks/RESULTS.md`` quotes it): no tiling spills. 16-bit
``128 x 64``, 8 warps, 3 stages: 216 registers, 96 KiB of shared memory, wgmma with cp.async in both loops,
one program per SM; ``128 x 128``: 220 registers, 192 KiB; ``64 x 64``, 4 warps: 118 registers, 48 KiB, four
programs per SM. Rounded ``128 x 32``, 4 stages: 242 registers, 104 KiB. ieee ``128 x 32``, 8 warps: 255
registers, an FFMA loop (the former default tiling of this class, ``128 x 64``, had a 2,080 B stack: 579
spill loads and 400 stores around 4,609 FFMA). tf32x3 ``128 x 32``: 244 registers, 112 KiB. Before Hopper
(``sm_80``), four ieee/tf32x3 tilings spill and are left out there (:data:`SPILL_ON_AMPERE`). A row stride that
is not a multiple of 16 elements (e.g. ``d = 769``) compiles to plain loads: correct, slower.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from dataclasses import dataclass
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
#: The split search considers grids of at most this many full waves (``S <= MAX_WAVES * slots / pairs``, at
#: least 1); beyond that more splits only add epilogues. (The former cap of 4 waves allowed only ``S = 1`` at
#: d = 3072, where ``P = 300`` tiles already take 3 waves.)
MAX_WAVES: int = 8
#: Programs per SM the deterministic mode's split count assumes, with :data:`REFERENCE_SMS` SMs: a fixed
#: reference instead of the device's own, so the same input gives the same bits on any GPU of one architecture.
REFERENCE_SMS: int = 132
#: Width of the column-sum selector ``E`` (the smallest N ``tl.dot`` accepts).
COLSUM_WIDTH: int = 16
_MAX_GRID_Y: int = 65535
_MAX_BLOCK_N: int = 128
_INT32_LIMIT: int = 2**31
#: Defaults when the device does not report them (Hopper: 64 Ki registers, 228 KiB shared memory per SM,
#: 227 KiB = 232,448 B per block after opting in).
_REGS_PER_SM: int = 65536
_SMEM_PER_SM: int = 228 * 1024
_SMEM_PER_BLOCK: int = 232_448
_THREADS_PER_SM: int = 2048


#: Environment variable: ``quick`` tunes over one config per operand class and width (the GPU tests use it,
#: to compile in seconds); anything else, or unset, tunes over every shipped config that fits. Read at import.
CONFIGS_ENV: str = "ANALYSIS_TRITON_CONFIGS"


@dataclass(frozen=True)
class TileConfig:
    """One compile-time tiling: ``BLOCK_D`` x ``BLOCK_D`` tiles over ``BLOCK_N``-row blocks, warps, pipeline depth."""

    block_d: int
    block_n: int
    warps: int
    stages: int

    def triton(self) -> triton.Config:
        return triton.Config({"BLOCK_D": self.block_d, "BLOCK_N": self.block_n}, num_warps=self.warps,
                             num_stages=self.stages)

    def __str__(self) -> str:
        return f"{self.block_d}x{self.block_n} w{self.warps} s{self.stages}"


#: What the dots multiply: 16-bit inputs as they are (``"16bit"``), float32 rounded to 16 bits on load
#: (``"rounded"``), float32 kept exact with FMA products (``"ieee"``) or three TF32 products (``"tf32x3"``).
OPERAND_MODES: tuple[str, ...] = ("16bit", "rounded", "ieee", "tf32x3")

#: The shipped tilings per operand class, in order of preference (the deterministic mode takes the first that
#: fits). Each compiles for sm_90a with no spill, registers and shared memory within one block's limits and
#: tensor cores in the main loop (FMA for "ieee"): ``tests/test_kernel_aot.py`` checks every one of them and
#: ``benchmarks/bench_kernel_aot.py`` prints the table quoted in ``benchmarks/RESULTS.md``.
SHIPPED: dict[str, tuple[TileConfig, ...]] = {
    "16bit": (TileConfig(128, 64, 8, 3), TileConfig(128, 128, 8, 3), TileConfig(64, 64, 4, 3),
              TileConfig(64, 128, 4, 3), TileConfig(32, 64, 4, 3), TileConfig(32, 32, 4, 3)),
    "rounded": (TileConfig(128, 32, 8, 4), TileConfig(128, 64, 8, 3), TileConfig(64, 64, 4, 3),
                TileConfig(64, 32, 4, 3), TileConfig(32, 64, 4, 3), TileConfig(32, 32, 4, 3)),
    "ieee": (TileConfig(128, 32, 8, 3), TileConfig(64, 64, 8, 3), TileConfig(64, 32, 4, 3), TileConfig(32, 64, 4, 3),
             TileConfig(32, 32, 4, 3)),
    "tf32x3": (TileConfig(128, 32, 8, 3), TileConfig(64, 64, 4, 3), TileConfig(64, 32, 4, 3), TileConfig(32, 32, 4, 3)),
}


#: Tilings that spill on Ampere (``sm_80``, Triton 3.8: 144 to 1,144 B of stack): not candidates there.
SPILL_ON_AMPERE: frozenset[tuple[str, TileConfig]] = frozenset({
    ("ieee", TileConfig(128, 32, 8, 3)), ("tf32x3", TileConfig(128, 32, 8, 3)), ("tf32x3", TileConfig(64, 64, 4, 3)),
    ("tf32x3", TileConfig(64, 32, 4, 3)),
})


def operand_mode(dtype: torch.dtype, rounding: str = "none", fp32_precision: str = DEFAULT_FP32_PRECISION) -> str:
    """The operand class (:data:`OPERAND_MODES`) of ``x`` with this dtype, rounding and float32 precision."""
    if dtype != torch.float32:
        return "16bit"
    if rounding != "none":
        return "rounded"
    return fp32_precision


#: Bytes added to every shared-memory estimate for what Triton allocates beside the operand buffers (barriers,
#: small staging): the former build of this kernel used 2 KiB (16-bit) and 4 KiB (tf32x3) more than the buffers.
SMEM_MARGIN_BYTES: int = 4096


def shared_memory_bytes(mode: str, config: TileConfig, elem: int) -> int:
    """Upper estimate of the kernel's shared memory (bytes) for one tiling: ``stages`` buffers of both operand
    blocks (``2 BLOCK_N BLOCK_D`` elements of ``elem`` bytes), plus the operands the tensor cores read after a
    conversion in registers (one 16-bit block for rounded inputs, the TF32 pieces for tf32x3), plus
    :data:`SMEM_MARGIN_BYTES`.

    Triton 3.8's sm_90a builds use exactly the buffers for the 16-bit and tf32x3 tilings and less for the others
    (rounded and ieee keep ``stages - 1`` buffers); ``tests/test_kernel_aot.py`` checks the estimate against the
    compiled figure of every shipped tiling, so the prune never keeps a tiling that cannot launch."""
    operands = 2 * config.block_n * config.block_d
    staged = {"16bit": 0, "rounded": operands, "ieee": 0, "tf32x3": 2 * operands}[mode]
    return config.stages * operands * elem + staged + SMEM_MARGIN_BYTES


def candidate_configs(mode: str, d: int, elem: int, smem_limit: int = _SMEM_PER_BLOCK,
                      capability: int = 90) -> list[TileConfig]:
    """The shipped tilings (:data:`SHIPPED`) worth trying for width ``d`` on a GPU of compute ``capability``
    (major * 10 + minor): tiles no wider than ``d`` needs (``BLOCK_D`` between half and all of
    ``min(128, next_pow2(d))``, at least 32) whose shared memory (:func:`shared_memory_bytes`) fits one block
    (``smem_limit``: the device's opt-in limit; 232,448 B on Hopper, where the former rule let a 233,472 B
    tf32x3 tiling through to fail at launch), without the tilings that spill before Hopper
    (:data:`SPILL_ON_AMPERE`). Never empty: the smallest tiling is kept when nothing else fits."""
    widest = min(128, max(32, triton.next_power_of_2(max(1, d))))
    shipped = [c for c in SHIPPED[mode] if capability >= 90 or (mode, c) not in SPILL_ON_AMPERE]
    kept = [c for c in shipped if max(32, widest // 2) <= c.block_d <= widest
            and shared_memory_bytes(mode, c, elem) <= smem_limit]
    return kept or [min(shipped, key=lambda c: shared_memory_bytes(mode, c, elem))]


def _interpreter_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_D": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]


def _gpu_configs() -> list[triton.Config]:
    """Every shipped tiling once (the prune step keeps those of the call's operand class)."""
    unique = dict.fromkeys(c for configs in SHIPPED.values() for c in configs)
    return [c.triton() for c in unique]


def _tile_config(config: triton.Config) -> TileConfig:
    return TileConfig(config.kwargs["BLOCK_D"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


@functools.cache
def _device_limits(device_index: int) -> tuple[int, int]:
    """``(shared memory per block after opting in, compute capability as major * 10 + minor)`` of a device."""
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or _SMEM_PER_BLOCK), props.major * 10 + props.minor


def _prune_configs(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
    """Keep the configs of the call's operand class that suit ``d`` and fit shared memory
    (:func:`candidate_configs`)."""
    if INTERPRETED:
        return configs
    x = named_args["x_ptr"]
    mode = operand_mode(x.dtype, kwargs.get("ROUND_TO", "none"), kwargs.get("FP32_PRECISION", DEFAULT_FP32_PRECISION))
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    wanted = candidate_configs(mode, int(named_args["d"]), x.element_size(), *_device_limits(index))
    if os.environ.get(CONFIGS_ENV, "").strip().lower() == "quick":
        wanted = wanted[:1]
    kept = [c for c in configs if _tile_config(c) in wanted]
    return kept or [wanted[0].triton()]


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


@triton.jit
def _rounded(v, ROUND_TO: tl.constexpr, UPCAST_OPERANDS: tl.constexpr):
    """The operand the dot multiplies: ``v`` itself, or float32 ``v`` rounded to bf16/fp16 (nearest even)."""
    if ROUND_TO == "bf16":
        if UPCAST_OPERANDS:
            return _round_to_bf16_as_fp32(v)
        else:
            return v.to(tl.bfloat16)
    elif ROUND_TO == "fp16":
        return v.to(tl.float16)
    else:
        return v


@triton.jit
def _tile_of(pid):
    """Lower-triangle tile ``(ti, tj)``, ``ti >= tj``, of program ``pid = ti (ti + 1) / 2 + tj``. The float
    square root gives ``ti`` to within one; the two integer corrections make it exact."""
    ti = ((tl.sqrt(8.0 * pid.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    ti = tl.where(ti * (ti + 1) // 2 > pid, ti - 1, ti)
    ti = tl.where((ti + 1) * (ti + 2) // 2 <= pid, ti + 1, ti)
    return ti, pid - ti * (ti + 1) // 2


@triton.jit
def _tile_sums(x_rows, step, offs_a, offs_b, col_mask_a, col_mask_b, offs_n, row_start, row_end, selector,
               DIAGONAL: tl.constexpr, WITH_COLSUM: tl.constexpr, IS_FP32: tl.constexpr, ROUND_TO: tl.constexpr,
               UPCAST_OPERANDS: tl.constexpr, FP32_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """``(sum_rows X[r, I]^T X[r, J], sum_rows X[r, I]^T E)`` over this split's row blocks.

    One straight-line loop body per variant: the diagonal variant (``I == J``) loads its block once and, with
    ``WITH_COLSUM``, issues the column-sum dot beside the main one, so both stay asynchronous tensor-core ops
    (a dot under a run-time ``if`` inside the loop was compiled with a wait after it)."""
    tile = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    cs_tile = tl.zeros((BLOCK_D, 16), dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_N):
        row_mask = (offs_n < row_end - r0)[:, None]
        a = _rounded(tl.load(x_rows + offs_a, mask=row_mask & col_mask_a, other=0.0), ROUND_TO, UPCAST_OPERANDS)
        if DIAGONAL:
            b = a
        else:
            b = _rounded(tl.load(x_rows + offs_b, mask=row_mask & col_mask_b, other=0.0), ROUND_TO, UPCAST_OPERANDS)
        x_rows += step
        tile = _dot(a, b, tile, IS_FP32, UPCAST_OPERANDS, FP32_PRECISION)
        if WITH_COLSUM:
            cs_tile = _dot(a, selector, cs_tile, IS_FP32, UPCAST_OPERANDS, FP32_PRECISION)
    return tile, cs_tile


@triton.jit(do_not_specialize=["n", "n_class"])
def _second_moment_body(
    x_ptr,
    acc_ptr,
    colsum_ptr,
    part_ptr,
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
    DETERMINISTIC: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    ti, tj = _tile_of(pid)

    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < d
    mask_j = offs_j < d
    offs_n = tl.arange(0, BLOCK_N)

    rows_per_split = tl.cdiv(tl.cdiv(n, BLOCK_N), num_splits) * BLOCK_N
    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n)

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
    step = stride_xn * BLOCK_N
    on_diagonal = ti == tj
    if on_diagonal:
        tile, cs_tile = _tile_sums(x_rows, step, offs_a, offs_a, mask_i[None, :], mask_i[None, :], offs_n, row_start,
                                   row_end, selector, True, HAS_COLSUM, IS_FP32, ROUND_TO, UPCAST_OPERANDS,
                                   FP32_PRECISION, BLOCK_D, BLOCK_N)
    else:
        tile, cs_tile = _tile_sums(x_rows, step, offs_a, offs_b, mask_i[None, :], mask_j[None, :], offs_n, row_start,
                                   row_end, selector, False, False, IS_FP32, ROUND_TO, UPCAST_OPERANDS,
                                   FP32_PRECISION, BLOCK_D, BLOCK_N)
    col_sum = tl.sum(cs_tile, axis=1)  # columns 1..15 of E are zeros: exact

    if DETERMINISTIC and num_splits > 1:
        # Each split stores its partial tile whole (no atomics); _reduce_partials_kernel adds them in split order.
        square = tl.arange(0, BLOCK_D)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        slot = (split * tl.num_programs(0) + pid).to(tl.int64)
        tl.store(part_ptr + slot * (BLOCK_D * BLOCK_D + BLOCK_D) + square, tile)
        if HAS_COLSUM:
            if on_diagonal:
                tl.store(part_ptr + slot * (BLOCK_D * BLOCK_D + BLOCK_D) + BLOCK_D * BLOCK_D + tl.arange(0, BLOCK_D),
                         col_sum)
    else:
        # One relaxed atomic add per element, also when S == 1: then each element has a single writer, so the
        # sum is exact and deterministic, and no 64-bit pointer tensor stays live between a load and a store
        # (the load + add + store epilogue held 128 pointer registers per thread and spilled at 255).
        # 32-bit offsets inside acc (the wrapper checks that every offset fits).
        acc_ptrs = acc_ptr + (offs_i[:, None] * stride_am + offs_j[None, :] * stride_an)
        tl.atomic_add(acc_ptrs, tile, mask=mask_i[:, None] & mask_j[None, :], sem="relaxed")
        if HAS_COLSUM:
            if on_diagonal:
                tl.atomic_add(colsum_ptr + offs_i * stride_c, col_sum, mask=mask_i, sem="relaxed")


#: The autotuned kernel: tunes over the call's candidate tilings, keyed on ``d``, the class of ``n``, every
#: compile-time switch and the dtypes (Triton adds those); ``acc``/``colsum`` restored after each trial.
_second_moment_kernel = triton.autotune(
    configs=_interpreter_configs() if INTERPRETED else _gpu_configs(),
    key=["d", "n_class", "HAS_COLSUM", "FP32_PRECISION", "ROUND_TO", "DETERMINISTIC"],
    prune_configs_by={"early_config_prune": _prune_configs},
    restore_value=["acc_ptr", "colsum_ptr"],
    **_AUTOTUNE_KWARGS,
)(_second_moment_body)


@triton.jit
def _reduce_partials_kernel(part_ptr, acc_ptr, colsum_ptr, d, splits, stride_am, stride_an, stride_c,
                            HAS_COLSUM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Deterministic mode: ``acc[I, J] += sum_s part[s, p]`` (and the diagonal tiles' column sums), ``s`` in
    order 0 .. S-1 whatever order the splits finished in. One program per lower-triangle tile ``p``."""
    pid = tl.program_id(0)
    pairs = tl.num_programs(0)
    ti, tj = _tile_of(pid)
    square = tl.arange(0, BLOCK_D)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    total = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    total_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s in range(0, splits):
        base = part_ptr + (s * pairs + pid).to(tl.int64) * (BLOCK_D * BLOCK_D + BLOCK_D)
        total += tl.load(base + square)
        if HAS_COLSUM:
            if ti == tj:
                total_sum += tl.load(base + BLOCK_D * BLOCK_D + tl.arange(0, BLOCK_D))
    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    out_mask = (offs_i < d)[:, None] & (offs_j < d)[None, :]
    acc_ptrs = acc_ptr + (offs_i[:, None] * stride_am + offs_j[None, :] * stride_an)
    tl.store(acc_ptrs, tl.load(acc_ptrs, mask=out_mask, other=0.0) + total, mask=out_mask)
    if HAS_COLSUM:
        if ti == tj:
            colsum_ptrs = colsum_ptr + offs_i * stride_c
            tl.store(colsum_ptrs, tl.load(colsum_ptrs, mask=offs_i < d, other=0.0) + total_sum, mask=offs_i < d)


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


def estimated_residency(config: TileConfig, mode: str, elem: int,
                        resources: tuple[int, int, int, int] | None = None) -> int:
    """Programs per SM before the kernel was compiled: the float32 accumulator tile per thread plus ~88
    registers of addressing and operands (sm_90a builds: 16-bit 64 x 64 with 4 warps 118 registers; 128-wide
    tiles hit the 8-warp cap either way), and :func:`shared_memory_bytes`."""
    regs = min(255, config.block_d * config.block_d // (32 * config.warps) + 88)
    return residency(regs, shared_memory_bytes(mode, config, elem), config.warps,
                     resources or (0, _REGS_PER_SM, _SMEM_PER_SM, _THREADS_PER_SM))


@functools.lru_cache(maxsize=4096)
def wave_splits(pairs: int, row_blocks: int, slots: int) -> int:
    """``S`` minimising ``ceil(pairs * S / slots) * (ceil(row_blocks / S) + EPILOGUE_ROW_BLOCKS)``.

    ``slots`` programs run at once (SMs x programs per SM). Each split keeps at least
    :data:`MIN_ROW_BLOCKS_PER_SPLIT` row blocks, and the grid holds at most :data:`MAX_WAVES` waves (at least
    one split). Ties go to the smaller ``S`` (fewer atomic epilogues). ViT-B on 132 SMs, one program each,
    batch 256 (788 row blocks of 64): d = 768 (21 tiles of 128) gives ``S = 6``, one full wave; d = 3072 (300
    tiles) gives ``S = 3``, 900 programs in 7 waves (6.8 needed, 97 % full) instead of ``S = 1`` in 3 waves
    (2.27 needed, 76 % full).
    """
    most = max(1, min(row_blocks // MIN_ROW_BLOCKS_PER_SPLIT, MAX_WAVES * slots // max(pairs, 1), _MAX_GRID_Y))
    best, best_cost = 1, math.inf
    for s in range(1, most + 1):
        cost = split_cost(pairs, row_blocks, slots, s)
        if cost < best_cost - 1e-9:
            best, best_cost = s, cost
    return best


def split_cost(pairs: int, row_blocks: int, slots: int, splits: int) -> float:
    """The cost model's time, in row blocks of one program: ``waves * (row blocks per split + epilogue)``."""
    waves = -(-pairs * splits // slots)
    return waves * (-(-row_blocks // splits) + EPILOGUE_ROW_BLOCKS)


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


DETERMINISTIC_ENV: str = "ANALYSIS_DETERMINISTIC"


def deterministic_requested() -> bool:
    """The deterministic mode's default: ``ANALYSIS_DETERMINISTIC`` (``1`` on, ``0`` off; read at each call),
    else whether ``torch.use_deterministic_algorithms(True)`` is in effect."""
    value = os.environ.get(DETERMINISTIC_ENV, "").strip().lower()
    if not value:
        return torch.are_deterministic_algorithms_enabled()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{DETERMINISTIC_ENV} must be 1 or 0, got {os.environ[DETERMINISTIC_ENV]!r}")


def deterministic_plan(n: int, d: int, mode: str, elem: int, smem_limit: int = _SMEM_PER_BLOCK,
                       capability: int = 90) -> tuple[TileConfig, int]:
    """The deterministic mode's tiling and split count: the first shipped candidate (no autotuning), and
    :func:`wave_splits` on :data:`REFERENCE_SMS` SMs with the estimated residency, so both depend on ``n``,
    ``d`` and the operand class only, never on the device or on timing."""
    config = candidate_configs(mode, d, elem, smem_limit, capability)[0]
    tiles = -(-d // config.block_d)
    row_blocks = max(1, -(-n // config.block_n))
    slots = REFERENCE_SMS * estimated_residency(config, mode, elem)
    return config, int(max(1, min(wave_splits(tiles * (tiles + 1) // 2, row_blocks, slots), row_blocks)))


def second_moment_triton(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
    *,
    splits: int | None = None,
    fp32_precision: str = DEFAULT_FP32_PRECISION,
    round_to: torch.dtype | None = None,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Lower-triangle ``acc += X^T X`` (and ``colsum += X^T 1``) with the Triton kernel; returns ``acc``.

    ``acc`` and ``colsum`` must be float32 (``acc`` is allocated zeroed when ``None``). ``splits`` forces
    the number of token splits (tests use it to cover the store and the atomic epilogue);
    ``fp32_precision`` is the ``tl.dot`` input precision for float32 ``x`` kept exact; ``round_to``
    (``torch.bfloat16``/``torch.float16``) rounds float32 ``x`` to that dtype on load instead (ignored for
    16-bit ``x``). ``deterministic`` (``None``: :func:`deterministic_requested`) makes the result the same
    bits for the same inputs: a fixed tiling and split count (:func:`deterministic_plan`), and partial tiles
    summed in split order by a second small kernel instead of atomics. ``x`` must be on CUDA, or anywhere
    when this module was imported with ``TRITON_INTERPRET=1``.
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
    if deterministic is None:
        deterministic = deterministic_requested()
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
    flags = dict(HAS_COLSUM=colsum is not None,
                 IS_FP32=x.dtype == torch.float32 and rounding == "none",  # the dots multiply float32 operands
                 ROUND_TO=rounding,
                 UPCAST_OPERANDS=INTERPRETED and (x.dtype == torch.bfloat16 or rounding == "bf16"),
                 FP32_PRECISION=fp32_precision)
    colsum_arg = colsum if colsum is not None else acc
    stride_c = colsum.stride(0) if colsum is not None else 0
    args = (x, acc, colsum_arg)
    sizes = (n, d, n_class(n), x.stride(0), acc.stride(0), acc.stride(1), stride_c)
    if deterministic:
        mode = operand_mode(x.dtype, rounding, fp32_precision)
        _deterministic_launch(x, acc, colsum, args, sizes, flags, splits, mode)
        return acc
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
            config = TileConfig(meta["BLOCK_D"], meta["BLOCK_N"], 4 if meta["BLOCK_D"] <= 64 else 8, 3)
            per_sm = estimated_residency(config, operand_mode(x.dtype, rounding, fp32_precision), x.element_size(),
                                         _sm_resources(index))
        return pairs, choose_splits(n, pairs, meta["BLOCK_N"], x.device, per_sm)

    with _device_guard(x.device):
        kernel = _second_moment_kernel[grid](*args, acc, *sizes, **flags, DETERMINISTIC=False)  # no partials
    best = getattr(_second_moment_kernel, "best_config", None)
    if best is not None and splits is None:
        _record_residency(kernel, (best.kwargs["BLOCK_D"], best.kwargs["BLOCK_N"], dtype_name, rounding), x.device)
    return acc


def _deterministic_launch(x: torch.Tensor, acc: torch.Tensor, colsum: torch.Tensor | None, args: tuple,
                          sizes: tuple, flags: dict[str, Any], splits: int | None, mode: str) -> None:
    """The deterministic mode: the fixed tiling and split count of :func:`deterministic_plan` (``splits`` forces
    the count), each split's partial tiles stored whole, then added into ``acc`` in split order."""
    n, d = x.shape
    if INTERPRETED:
        config, planned = TileConfig(64, 64, 4, 1), min(INTERPRETER_SPLITS, max(1, -(-n // 64)))
    else:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config, planned = deterministic_plan(n, d, mode, x.element_size(), *_device_limits(index))
    count = int(min(splits if splits is not None else planned, _MAX_GRID_Y))
    tiles = -(-d // config.block_d)
    pairs = tiles * (tiles + 1) // 2
    tile_floats = config.block_d * config.block_d + config.block_d  # the tile, then its column sums
    parts = torch.empty(count * pairs * tile_floats if count > 1 else 1, dtype=torch.float32, device=x.device)
    meta = dict(BLOCK_D=config.block_d, BLOCK_N=config.block_n, num_warps=config.warps, num_stages=config.stages)
    with _device_guard(x.device):
        _second_moment_body[(pairs, count)](args[0], args[1], args[2], parts, *sizes, **flags, DETERMINISTIC=True,
                                            **meta)
        if count > 1:
            _reduce_partials_kernel[(pairs,)](parts, acc, args[2], d, count, acc.stride(0), acc.stride(1), sizes[-1],
                                              HAS_COLSUM=colsum is not None, BLOCK_D=config.block_d,
                                              num_warps=config.warps)


def prepare(d: int, dtype: torch.dtype, n: int, *, device: torch.device | str = "cuda", colsum: bool = True,
            fp32_precision: str = DEFAULT_FP32_PRECISION, round_to: torch.dtype | None = None,
            deterministic: bool | None = None) -> None:
    """Tune and compile the kernel for one shape before the data loop (on scratch tensors).

    Later calls with the same ``d``, dtype, switches and :func:`n_class` of ``n`` reuse the tuned,
    compiled kernel, so no batch of the run pays for compilation or tuning.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(d)
    x = torch.randn(max(n, 1), d, generator=g, device=device).to(dtype)
    acc = torch.zeros(d, d, dtype=torch.float32, device=device)
    sums = torch.zeros(d, dtype=torch.float32, device=device) if colsum else None
    for _ in range(2):  # the second call runs with the compiled kernel's measured residency
        second_moment_triton(x, acc, sums, fp32_precision=fp32_precision, round_to=round_to,
                             deterministic=deterministic)


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Launch on x's GPU (Triton launches on the current device), a no-op elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


__all__ = [
    "DEFAULT_FP32_PRECISION",
    "FP32_PRECISIONS",
    "INTERPRETED",
    "ROUNDINGS",
    "DETERMINISTIC_ENV",
    "OPERAND_MODES",
    "SHIPPED",
    "SPILL_ON_AMPERE",
    "TileConfig",
    "candidate_configs",
    "choose_splits",
    "deterministic_plan",
    "deterministic_requested",
    "estimated_residency",
    "n_bucket",
    "n_class",
    "prepare",
    "residency",
    "operand_mode",
    "second_moment_triton",
    "shared_memory_bytes",
    "split_cost",
    "wave_splits",
]
