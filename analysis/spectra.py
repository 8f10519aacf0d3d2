r"""Second moments to spectra: the analytic output moment and symmetric eigen-decompositions.

Output second moment of an affine layer ``y = W x + b`` over the same N inputs, exactly, with no hook:

    C_out = sum_x (W x + b)(W x + b)^T = W C_in W^T + W s b^T + b s^T W^T + N b b^T = M G M^T

with ``M = [W b]`` (``d_out x m``, ``m = d_in + 1``; without a bias ``M = W``, ``m = d_in``) and the
augmented input moment ``G = [[C_in, s], [s^T, N]] = sum_x [x; 1][x; 1]^T`` (``m x m``, positive
semi-definite).

Eigen-decomposition of one symmetric matrix (:func:`eigen_batched`): ``C`` is symmetrized
(``(C + C^T) / 2``), promoted to float64, given a tiny jitter ``j = 1e-12 * trace / d`` on the diagonal (so
exactly singular moments decompose stably; ``j = 0`` for a zero matrix) and decomposed with
``torch.linalg.eigh``. The eigenvalues of ``C + j I`` are those of ``C`` plus ``j``: ``j`` is subtracted
again, so the jitter never creates dimensions (a zero moment has all-zero eigenvalues, a rank-r one r
non-zero ones up to rounding). Eigenvalues are returned in descending order, clipped at 0 (a second moment
is positive semi-definite; negative values are rounding), with their eigenvectors as columns in the same
order.

Output moments through the smaller problem (:func:`output_eigen`): ``rank(C_out) <= m``, so when
``d_out > m`` the eigen-decomposition comes from ``m``-sized problems instead of the ``d_out``-sized one,
exactly (no approximation beyond float64 rounding):

1. ``G = Q diag(g) Q^T`` (eigh, ``g`` clipped at 0), ``F = Q diag(sqrt(g))``, so ``G = F F^T`` also for a
   singular ``G`` (few samples, constant features);
2. ``K = M F`` (``d_out x m``), so ``C_out = K K^T``; the non-zero eigenvalues of ``K K^T`` are those of
   ``H = K^T K`` (``m x m``): ``H v = lambda v`` gives ``C_out u = lambda u`` with ``u = K v / sqrt(lambda)``;
3. the ``u`` of the numerically non-zero ``lambda`` (``lambda > d_out * eps * lambda_max``) are
   re-orthonormalised, in descending order, by a reduced QR factorisation (``d_out x m``), whose columns for
   the zero ``lambda`` lie in the null space of ``C_out``; the ``d_out - m`` eigenvalues the small problem
   does not produce are 0 and are padded with zeros, their eigenvectors (the rest of the null space) are not
   formed.

The returned :class:`Eigen` holds all ``d_out`` eigenvalues (no jitter, like the direct route) and the
``d_out x m`` eigenvectors of the first ``m``: no ``d_out x d_out`` matrix is ever built (a 21,841-class head on
320 features needs 56 MB, not 3.8 GB). Every consumer takes the first ``k <= rank`` eigenvectors
(projection, factorization), never the null space. It is used when ``d_out > m`` (ViT-B: qkv 2304 and fc1 3072 from
769 instead of 2304 and 3072; about 32x fewer operations for fc1).

Devices: on a GPU every step runs in float64, matrices of one shape stacked into one batched call (one
host-to-device copy per group, not per matrix); if the device solver fails, the group is redone on the
CPU. On the CPU, LAPACK gains nothing from stacking, so each matrix is decomposed alone by single-threaded
LAPACK (:data:`CPU_EIGH_THREADS`), and independent matrices run side by side on :data:`CPU_WORKERS` threads
(:func:`cpu_map`): the bits of each result do not depend on the number of workers.

Weights are passed in explicitly (:class:`AffineLayer`): this module never reads a module's parameters,
so the caller decides which weight and bias the layer effectively uses (weight standardisation,
parametrizations).
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from kernels import cpu_pool, lapack
from kernels.reference import scipy_blas_controller

JITTER = 1e-12

#: LAPACK threads inside ONE CPU eigen-decomposition (``syevd`` through ``torch.linalg.eigh``). Fixed at 1:
#: LAPACK's last bits depend on it (1 against 2 threads: 1e-13 relative), so a killed job resumed on another
#: machine would not end bit-identical; and on shared cores a multi-threaded ``syevd`` collapses (ViT-Ti, all 50
#: layers, load 9-14: 5.6 s on 1 thread against 87.7 s on 2; see ``benchmarks/RESULTS.md``).
CPU_EIGH_THREADS: int = 1

#: Worker threads that decompose independent matrices side by side (:func:`cpu_map`), each on one LAPACK
#: thread: the machine's cores (at most 8), since every matrix's result is the same bits whichever worker
#: computes it and however many there are. Measured with ``benchmarks/bench_cpu_statistics.py``.
CPU_WORKERS: int = cpu_pool.WORKERS

#: ``progress(layers_done, layers_total, elapsed_s)``: called after each layer (CPU) or each batched group
#: that completes layers (GPU).
SpectraProgress = Callable[[int, int, float], None]


@dataclass
class Eigen:
    """Descending eigenvalues (float64, >= 0) and matching eigenvectors (columns): all of them, or, from the
    small problem, those of the first ``m`` values (every value after them is 0)."""

    values: torch.Tensor
    vectors: torch.Tensor


@dataclass
class AffineLayer:
    """What the output moment of ``y = W x + b`` needs: the EFFECTIVE weight ``d_out x d_in`` (convolutions
    flattened like unfold), the effective bias (or ``None``), and the input statistics ``C_in``, ``s``, ``N``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    c_in: torch.Tensor
    column_sum: torch.Tensor
    count: int

    @property
    def d_out(self) -> int:
        return int(self.weight.shape[0])

    @property
    def m(self) -> int:
        """Size of the augmented problem: ``d_in + 1`` with a bias, ``d_in`` without."""
        return int(self.weight.shape[1]) + (self.bias is not None)

    def uses_small_problem(self) -> bool:
        """``d_out > m``: the output moment's rank is at most ``m``, so decompose through the ``m`` problem."""
        return uses_small_problem(self.d_out, self.m)


def uses_small_problem(d_out: int, m: int) -> bool:
    """Whether the output spectrum comes from the ``m``-sized problem (``d_out > m``, ``m = d_in + 1`` with a
    bias, ``d_in`` without): on every device, and in the cost estimate (:mod:`analysis.cost`)."""
    return d_out > m


def output_second_moment(
    weight: torch.Tensor, c_in: torch.Tensor, column_sum: torch.Tensor, count: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``C_out = W C_in W^T + W s b^T + b s^T W^T + N b b^T`` in float64 (W is ``d_out x d_in``)."""
    w = weight.to(torch.float64)
    c_out = w @ c_in.to(torch.float64) @ w.T
    if bias is not None:
        b = bias.to(torch.float64)
        ws = w @ column_sum.to(torch.float64)
        cross = torch.outer(ws, b)
        c_out = c_out + cross + cross.T + count * torch.outer(b, b)
    return c_out


FLOAT32_TINY = torch.finfo(torch.float32).tiny
"""The smallest normal float32 number: an input whose mean squared entry is below it is zero."""

FLOAT32_UNIT = 2.0**-24


def energy_status(layer: AffineLayer, unit: float = FLOAT32_UNIT) -> tuple[str, str] | None:
    """``(status, reason)`` when the layer's input or output energy is zero, else None (:mod:`analysis.status`).

    - zero input: ``tr C_in <= N d_in * FLOAT32_TINY`` (every entry below float32's smallest normal number on
      average; exactly 0 included);
    - zero output: ``tr C_out = ||Y||_F^2 <= max(E^2, sqrt(d_in) u_32 T^2)`` with
      ``T^2 = sum_i ||W[:, i]||^2 C_in[i, i] + N ||b||^2`` (the energy the layer's products carry):
      ``E = (sqrt(2) + sqrt(d_in)) u T`` is the float rounding of the real outputs (the bound of
      :mod:`analysis.capture`'s self-check, ``u`` the run's unit roundoff), and ``sqrt(d_in) u_32 T^2`` the
      resolution of the analytic ``C_out`` itself, whose ``C_in`` sums products rounded to float32
      (``u_32 = 2^-24``). An output energy below both is rounding, not data (exactly 0 included): a gain-0
      ``ScaledStdConv2d``, a zeroed Linear, inputs orthogonal to every row of W.

    ``tr C_out = sum((M G) * M)`` with ``M = [W b]``, ``G = [[C_in, s], [s^T, N]]`` (no ``d_out x d_out``
    matrix)."""
    from . import status

    if layer.count <= 0:
        return None
    w, g = augmented(layer)
    d_in = int(layer.weight.shape[1])
    c_diag = torch.diagonal(g)[:d_in]
    energy_in = float(c_diag.sum())
    if energy_in <= layer.count * d_in * FLOAT32_TINY:
        size = "exactly zero" if energy_in == 0 else f"zero ({energy_in / layer.count:.3g} per vector)"
        return status.ZERO_INPUT, f"its input is {size}, so k_in, k_out and the utilization are undefined"
    energy_out = float(((w @ g) * w).sum().clamp_min(0.0))
    products = float((w.square() * torch.diagonal(g)).sum().clamp_min(0.0))  # T^2, with the bias column
    resolution = max(((math.sqrt(2.0) + math.sqrt(d_in)) * unit) ** 2, math.sqrt(d_in) * FLOAT32_UNIT) * products
    if energy_out <= resolution:
        size = ("exactly zero (its effective weight and bias are zero on its input)" if energy_out == 0 else
                f"zero: {energy_out / layer.count:.3g} per vector, below the float resolution of its products "
                f"({resolution / layer.count:.3g})")
        return status.ZERO_OUTPUT, f"its output is {size}, so k_out and the utilization are undefined"
    return None


def layer_output_second_moment(spec, c_in: torch.Tensor, column_sum: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`output_second_moment` of an analysed layer (a :class:`~analysis.models.layers.LayerSpec`): its
    weight as ``d_out x d_in`` (convolutions flattened like unfold) and its bias, if any, read on the CPU."""
    from .models.layers import weight_matrix

    bias = spec.module.bias.detach().cpu() if spec.has_bias else None
    return output_second_moment(weight_matrix(spec.module).detach().cpu(), c_in, column_sum, count, bias)


# ------------------------------------------------------------------------------------ one symmetric matrix


def jitter_of(matrix: torch.Tensor) -> torch.Tensor:
    """The diagonal jitter ``1e-12 * trace / d`` of a (stack of) symmetric matrices (0 where the trace is 0)."""
    trace = torch.diagonal(matrix, dim1=-2, dim2=-1).sum(-1).to(torch.float64).clamp_min(0.0)
    return JITTER * trace / matrix.shape[-1]


def symmetrized_with_jitter(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetrized float64 copy with the jitter :func:`jitter_of` on the diagonal (batched: ``... x d x d``)."""
    m = matrix.to(torch.float64)
    m = 0.5 * (m + m.transpose(-1, -2))
    return m + jitter_of(m)[..., None, None] * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)


@functools.cache
def _lapack_eigvalsh() -> Callable[[np.ndarray], np.ndarray] | None:
    """Ascending eigenvalues of a symmetric float64 numpy matrix (overwritten) by SciPy's own OpenBLAS/LAPACK
    (``dsyevr``) on one thread, or None when SciPy or threadpoolctl is missing or the library cannot be told
    apart (then torch's is used).

    Why: for the eigenvalue-only decompositions of the split halves and the snapshots it took 30 ms for a 768 x
    768 float64 matrix on one thread here against 48 ms for ``torch.linalg.eigvalsh`` (MKL), the eigenvalues
    agreeing to 5e-15 of the largest (ViT-Ti's fc2 inputs; the two thirds of the error bars' cost that are
    decompositions, issue 28). Called through :func:`kernels.lapack.syevr_eigenvalues`, which releases the GIL,
    so the workers of :mod:`kernels.cpu_pool` decompose side by side (SciPy's own wrapper holds the GIL: the
    workers took turns); SciPy's wrapper only where that entry point is missing. One thread, set once for the
    process (SciPy's BLAS only; numpy's and torch's are other libraries): the callers run it on the
    single-threaded workers, and setting and restoring a library-wide count around each call would race
    between those workers."""
    try:
        from scipy.linalg import eigvalsh
    except ImportError:
        return None
    controller = scipy_blas_controller()
    if controller is None:
        return None
    controller.set_num_threads(1)
    releasing = lapack.syevr_eigenvalues(controller.filepath)
    if releasing is not None:
        return releasing
    return lambda a: eigvalsh(a.T, lower=True, overwrite_a=True, check_finite=False, driver="evr")


def eigvalsh_without_jitter(matrix: torch.Tensor) -> torch.Tensor:
    """Descending eigenvalues of a (stack of) symmetric matrices, decomposed with the jitter and returned
    without it, clipped at 0 (float64). On the CPU with SciPy's LAPACK (:func:`_lapack_eigvalsh`), else torch's
    (also for a matrix LAPACK fails on)."""
    jittered = symmetrized_with_jitter(matrix)
    jitter = jitter_of(jittered)  # before the decomposition, which may overwrite ``jittered``
    lapack_values = _lapack_eigvalsh() if jittered.device.type == "cpu" else None
    if lapack_values is not None:
        flat = jittered.reshape(-1, *jittered.shape[-2:])
        values = torch.stack([_ascending(lapack_values, flat, i, matrix) for i in range(flat.shape[0])])
        values = values.reshape(jittered.shape[:-1])
    else:
        values = torch.linalg.eigvalsh(jittered)
    values = values.flip(-1) - jitter[..., None]
    return values.clamp_min(0.0)


def _ascending(lapack_values: Callable[[np.ndarray], np.ndarray], flat: torch.Tensor, i: int,
               original: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of ``flat[i]`` (contiguous float64, overwritten) by LAPACK; if LAPACK fails, by
    torch's solver on that matrix formed again from ``original`` (the caller's stack)."""
    try:
        return torch.from_numpy(lapack_values(flat[i].numpy()))
    except (lapack.LapackError, np.linalg.LinAlgError):
        again = symmetrized_with_jitter(original.reshape(-1, *original.shape[-2:])[i])
        return torch.linalg.eigvalsh(again)


def _eigh(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Descending, clipped ``eigh`` of a (stack of) symmetric matrices decomposed with the jitter, which is
    subtracted from the eigenvalues again; the CPU solver if the device's fails."""
    jittered = symmetrized_with_jitter(stack)
    try:
        values, vectors = torch.linalg.eigh(jittered)
    except RuntimeError:  # e.g. a GPU solver that fails to converge: fall back to the CPU
        jittered = jittered.cpu()
        values, vectors = torch.linalg.eigh(jittered)
    values = values - jitter_of(jittered)[..., None]
    return values.flip(-1).clamp_min(0.0), vectors.flip(-1)


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with torch (LAPACK) on ``count`` CPU threads, then restore the previous count. Every
    decomposition uses :data:`CPU_EIGH_THREADS`: LAPACK's last bits depend on the thread count. Nothing is set
    when the thread already runs on ``count`` (as :func:`cpu_map`'s workers do): setting a count also changes
    the one new threads start with (:mod:`kernels.cpu_pool`)."""
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def cpu_map(fn: Callable[[K], R], keys: Sequence[K], cost: Callable[[K], float] | None = None,
            workers: int | None = None) -> Iterator[tuple[K, R]]:
    """``(key, fn(key))`` for every key, computed on ``workers`` threads (default :data:`CPU_WORKERS`) with torch
    on :data:`CPU_EIGH_THREADS` thread(s) each, yielded in the calling thread as each completes.

    Keys are started largest ``cost`` first (longest-processing-time order balances the workers). Torch and
    LAPACK release the GIL, so the workers run in parallel; each call is single-threaded LAPACK, so its bits do
    not depend on ``workers``. The first exception raised by ``fn`` is re-raised after the workers stop (keys not
    yet started are dropped). The workers are :mod:`kernels.cpu_pool`'s (created once per process, one torch
    thread each: no OpenMP team of the caller's size inside each worker)."""
    def call(key: K) -> R:
        with cpu_threads(CPU_EIGH_THREADS):
            return fn(key)

    yield from cpu_pool.imap(call, keys, cost, workers if workers is not None else CPU_WORKERS)


def cpu_dict(fn: Callable[[K], R], keys: Sequence[K], cost: Callable[[K], float] | None = None) -> dict[K, R]:
    """``{key: fn(key)}`` in the order of ``keys``, computed by :func:`cpu_map`."""
    done = dict(cpu_map(fn, keys, cost))
    return {key: done[key] for key in keys}


def eigen_batched(matrices: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> tuple[dict[str, Eigen], float]:
    """Decompose every matrix, batched by shape. Returns the decompositions (on the CPU) and seconds spent."""
    start = time.perf_counter()
    device = torch.device(device)
    out: dict[str, Eigen] = {}
    if device.type == "cpu":
        out = cpu_dict(lambda n: _decompose_direct({n: matrices[n]}, device)[n], list(matrices),
                       cost=lambda n: matrices[n].shape[0] ** 3)
        return out, time.perf_counter() - start
    with cpu_threads(CPU_EIGH_THREADS):
        for names in _groups({n: m.shape[0] for n, m in matrices.items()}):
            out.update(_decompose_direct({n: matrices[n] for n in names}, device))
    return out, time.perf_counter() - start


def _groups(sizes: dict[str, object]) -> list[list[str]]:
    """Names grouped by shape key (one batched call each on a GPU)."""
    by_shape: dict[object, list[str]] = defaultdict(list)
    for name, key in sizes.items():
        by_shape[key].append(name)
    return list(by_shape.values())


def _decompose_direct(matrices: dict[str, torch.Tensor], device: torch.device) -> dict[str, Eigen]:
    """One batched ``eigh`` of same-shaped matrices (stacked on the host, one copy to ``device``)."""
    names = list(matrices)
    stack = torch.stack([matrices[n].to("cpu", torch.float64) for n in names]).to(device)
    values, vectors = _eigh(stack)
    values, vectors = values.cpu(), vectors.cpu()
    return {name: Eigen(values=values[i], vectors=vectors[i]) for i, name in enumerate(names)}


# ------------------------------------------------------------------ output moments through the m problem


def augmented(layer: AffineLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, G)`` in float64 on the CPU: ``M = [W b]`` (``d_out x m``), ``G = [[C_in, s], [s^T, N]]``."""
    w = layer.weight.detach().to("cpu", torch.float64)
    c = layer.c_in.detach().to("cpu", torch.float64)
    c = 0.5 * (c + c.T)
    if layer.bias is None:
        return w, c
    b = layer.bias.detach().to("cpu", torch.float64).reshape(-1, 1)
    s = layer.column_sum.detach().to("cpu", torch.float64).reshape(-1, 1)
    top = torch.cat([c, s], dim=1)
    bottom = torch.cat([s.T, torch.tensor([[float(layer.count)]], dtype=torch.float64)], dim=1)
    return torch.cat([w, b], dim=1), torch.cat([top, bottom], dim=0)


def gram_factor(g: torch.Tensor) -> torch.Tensor:
    """A factor ``F`` (``m x m``) with ``G = F F^T`` for one symmetric positive semi-definite ``G``: its Cholesky
    factor when ``G`` is positive definite (``m^3 / 3`` FLOPs), else the symmetric square root
    ``Q diag(sqrt(g))`` of ``G = Q diag(g) Q^T`` (eigh, ``g`` clipped at 0: a singular ``G`` from few samples or
    constant features). Used where only ``F F^T`` matters (eigenvalues, Frobenius norms), not its vectors."""
    g = 0.5 * (g + g.transpose(-1, -2))
    factor, info = torch.linalg.cholesky_ex(g)
    return factor if int(info) == 0 else symmetric_square_root(g)


def symmetric_square_root(g: torch.Tensor) -> torch.Tensor:
    """``F = Q diag(sqrt(g))`` from ``G = Q diag(g) Q^T`` (eigh of the symmetrized ``G``, batched; ``g``
    clipped at 0), so that ``F F^T = G`` also for a singular ``G``."""
    values, vectors = torch.linalg.eigh(0.5 * (g + g.transpose(-1, -2)))
    return vectors * values.clamp_min(0.0).sqrt()[..., None, :]


def output_factor(m_aug: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``K = M F`` (``d_out x m``, batched) with ``C_out = M G M^T = K K^T``, ``F`` the symmetric square root
    of ``G`` (:func:`symmetric_square_root`)."""
    return m_aug @ symmetric_square_root(g)


def _small_problem(m_stack: torch.Tensor, g_stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of ``C_out = M G M^T`` for a stack (``B x d_out x m``, ``B x m x m``), ``d_out > m``.

    Returns descending values (``B x d_out``, no jitter; those past ``m`` are 0) and orthonormal vectors for
    the first ``m`` of them (``B x d_out x m``). See the module docstring for the steps.
    """
    d_out, m = m_stack.shape[-2], m_stack.shape[-1]
    k = output_factor(m_stack, g_stack)
    h = k.transpose(-1, -2) @ k
    lam, v = torch.linalg.eigh(0.5 * (h + h.transpose(-1, -2)))
    lam, v = lam.flip(-1).clamp_min(0.0), v.flip(-1)
    top = lam[..., :1].clamp_min(torch.finfo(torch.float64).tiny)
    nonzero = lam > d_out * torch.finfo(torch.float64).eps * top
    # u_i = K v_i / sqrt(lambda_i) for the non-zero lambda_i; zero columns for the rest (their QR columns then
    # come out orthogonal to the u's, i.e. in C_out's null space).
    scale = torch.where(nonzero, lam.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(lam))
    u = (k @ v) * scale[..., None, :]
    q, r = torch.linalg.qr(u, mode="reduced")
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(nonzero & (signs != 0), signs, torch.ones_like(signs))
    q = q * signs[..., None, :]
    # With some lambda_i numerically zero, their u columns were zero: QR (Householder) still returns an
    # orthonormal column there, orthogonal to the earlier ones, in C_out's null space.
    values = torch.zeros(lam.shape[:-1] + (d_out,), dtype=torch.float64, device=lam.device)
    values[..., :m] = torch.where(nonzero, lam, torch.zeros_like(lam))
    return values, q


def _decompose_small(layers: dict[str, AffineLayer], device: torch.device) -> dict[str, Eigen]:
    """Batched small-problem decomposition of same-shaped layers (``d_out``, ``m`` equal)."""
    names = list(layers)
    pairs = [augmented(layers[n]) for n in names]
    m_stack = torch.stack([p[0] for p in pairs])
    g_stack = torch.stack([p[1] for p in pairs])
    try:
        values, vectors = _small_problem(m_stack.to(device), g_stack.to(device))
    except RuntimeError:  # a device solver failing: the CPU has the same arithmetic
        values, vectors = _small_problem(m_stack, g_stack)
    values, vectors = values.cpu(), vectors.cpu()
    return {name: Eigen(values=values[i], vectors=vectors[i]) for i, name in enumerate(names)}


def _output_matrix(layer: AffineLayer) -> torch.Tensor:
    return output_second_moment(layer.weight.detach().cpu(), layer.c_in, layer.column_sum, layer.count,
                                None if layer.bias is None else layer.bias.detach().cpu())


def output_eigen(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    c_in: torch.Tensor,
    column_sum: torch.Tensor,
    count: int,
    device: torch.device | str = "cpu",
) -> Eigen:
    """Eigen-decomposition of the output moment ``C_out`` of ``y = W x + b`` (``weight`` is ``d_out x d_in``,
    the EFFECTIVE weight), through the ``m = d_in + 1`` problem when ``d_out > m``, else directly."""
    layer = AffineLayer(weight, bias, c_in, column_sum, int(count))
    eig, _ = output_eigen_batched({"layer": layer}, device)
    return eig["layer"]


def output_eigen_batched(
    layers: dict[str, AffineLayer], device: torch.device | str = "cpu"
) -> tuple[dict[str, Eigen], float]:
    """:func:`output_eigen` of every layer, batched by shape on a GPU. Returns decompositions (CPU) and seconds."""
    start = time.perf_counter()
    device = torch.device(device)
    out: dict[str, Eigen] = {}
    if device.type == "cpu":
        out = cpu_dict(lambda n: _decompose_output({n: layers[n]}, device)[n], list(layers),
                       cost=lambda n: decomposition_cost(layers[n]))
        return out, time.perf_counter() - start
    with cpu_threads(CPU_EIGH_THREADS):
        for names in _groups({n: _output_key(layer) for n, layer in layers.items()}):
            out.update(_decompose_output({n: layers[n] for n in names}, device))
    return out, time.perf_counter() - start


def decomposition_cost(layer: AffineLayer) -> float:
    """Relative cost of a layer's C_in and C_out decompositions (cubes of the sizes actually decomposed), to
    balance :func:`cpu_map`'s workers."""
    out_size = layer.m if layer.uses_small_problem() else layer.d_out
    return float(layer.c_in.shape[0] ** 3 + out_size ** 3)


def _output_key(layer: AffineLayer) -> tuple[str, int, int]:
    return ("small", layer.d_out, layer.m) if layer.uses_small_problem() else ("direct", layer.d_out, 0)


def _decompose_output(layers: dict[str, AffineLayer], device: torch.device) -> dict[str, Eigen]:
    """Same-keyed layers (see :func:`_output_key`): the small problem, or the direct decomposition."""
    first = next(iter(layers.values()))
    if first.uses_small_problem():
        return _decompose_small(layers, device)
    return _decompose_direct({n: _output_matrix(layer) for n, layer in layers.items()}, device)


# ----------------------------------------------------------------------------- every layer, both moments


def layer_eigen(
    layers: dict[str, AffineLayer],
    device: torch.device | str = "cpu",
    progress: SpectraProgress | None = None,
) -> tuple[dict[str, Eigen], dict[str, Eigen], float]:
    """Eigen-decompositions of every layer's ``C_in`` and ``C_out``: ``(eig_in, eig_out, seconds)``.

    On the CPU, layer by layer (``C_in`` then ``C_out``) on :func:`cpu_map`'s workers, calling
    ``progress(i, n, elapsed_s)`` as each layer completes; on a GPU, batched by shape (all ``C_in`` groups, then
    the ``C_out`` groups), calling ``progress`` whenever a group completes layers. ``elapsed_s / i * (n - i)``
    estimates the time left. The returned dicts follow ``layers``' order.
    """
    start = time.perf_counter()
    device = torch.device(device)
    total = len(layers)
    eig_in: dict[str, Eigen] = {}
    eig_out: dict[str, Eigen] = {}
    reported = 0

    def report() -> None:
        nonlocal reported
        done = sum(1 for n in layers if n in eig_in and n in eig_out)
        if progress is not None and done > reported:
            reported = done
            progress(done, total, time.perf_counter() - start)

    if device.type == "cpu":
        def both(name: str) -> tuple[Eigen, Eigen]:
            layer = layers[name]
            return _decompose_direct({name: layer.c_in}, device)[name], _decompose_output({name: layer}, device)[name]

        for name, (e_in, e_out) in cpu_map(both, list(layers), cost=lambda n: decomposition_cost(layers[n])):
            eig_in[name], eig_out[name] = e_in, e_out
            report()
        return {n: eig_in[n] for n in layers}, {n: eig_out[n] for n in layers}, time.perf_counter() - start
    with cpu_threads(CPU_EIGH_THREADS):
        for names in _groups({n: layer.c_in.shape[0] for n, layer in layers.items()}):
            eig_in.update(_decompose_direct({n: layers[n].c_in for n in names}, device))
        for names in _groups({n: _output_key(layer) for n, layer in layers.items()}):
            eig_out.update(_decompose_output({n: layers[n] for n in names}, device))
            report()
    return eig_in, eig_out, time.perf_counter() - start
