"""Pure-torch second moment: the CPU path, the fallback when Triton is missing, and the tests' reference.

Maths (same contract as :func:`kernels.second_moment`)::

    x      : n x d, bfloat16 / float16 / float32 (row stride free, unit column stride)
    acc    : d x d running sum,   acc    += X^T X      (X = x converted to float32)
    colsum : d running sum,       colsum += X^T 1      (the column sums)

The product ``X^T X`` is formed in float32 (``torch.addmm`` into ``acc``), after an exact up-cast of 16-bit
inputs, so each product of two bf16/fp16 values is exact and the only rounding is float32 accumulation
inside the GEMM. This path fills the FULL matrix (both triangles); callers may rely only on the lower
triangle and diagonal, as with the Triton path.

float64 accumulators: ``acc`` and ``colsum`` may also be float64. Then the batch product is still formed in
float32 (the same GEMM as above) and added into the float64 running sum, so rounding error does not grow
with the number of batches: each batch contributes float32 rounding relative to that batch only. The CPU
statistics engine uses this for long runs (millions of tokens). The Triton path accepts float32 only.

On CUDA, ``torch.addmm`` on float32 honours ``torch.backends.cuda.matmul.allow_tf32``; leave it off (the
default) for float32 accuracy.
"""

from __future__ import annotations

import torch

from ._validation import check_inputs


def second_moment_torch(
    x: torch.Tensor,
    acc: torch.Tensor | None = None,
    colsum: torch.Tensor | None = None,
) -> torch.Tensor:
    """``acc += X^T X`` (full matrix) and ``colsum += X^T 1`` with torch ops; returns ``acc``.

    ``acc``/``colsum`` may be float32 or float64 (see the module docstring). ``n == 0`` leaves both
    untouched. Raises :class:`ValueError` for inputs outside the contract.
    """
    x, acc, colsum = check_inputs(x, acc, colsum, allow_float64=True)
    if x.shape[0] == 0:
        return acc
    xf = x.to(torch.float32)
    if acc.dtype == torch.float32:
        acc.addmm_(xf.T, xf)
    else:
        acc.add_(torch.mm(xf.T, xf))
    if colsum is not None:
        colsum.add_(xf.sum(dim=0))
    return acc


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
