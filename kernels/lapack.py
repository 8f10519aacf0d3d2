"""Eigenvalues of a symmetric float64 matrix with LAPACK ``dsyevr``, called so that the GIL is released.

Maths: for a symmetric ``d x d`` float64 ``A``, ``dsyevr(jobz="N", range="A")`` returns all ``d`` eigenvalues in
ascending order (Householder tridiagonalisation ``dsytrd``, then the tridiagonal eigenvalues), ``A``'s lower
triangle read and overwritten. Cost ``~ 4/3 d^3`` flops, about 30 ms at ``d = 768`` on one core here.

Why not SciPy's wrapper: ``scipy.linalg.eigvalsh`` (f2py) holds the GIL for the whole decomposition, so the
single-threaded workers of :mod:`kernels.cpu_pool` that decompose the split halves' and snapshots' matrices side
by side ran one at a time (1.0x on two workers, against 1.65x for a call that releases the GIL; measured in
issue 28's fourth session). ``ctypes`` releases the GIL around every foreign call, so this module calls the
same routine of the same library (SciPy's own OpenBLAS, whose thread count the caller sets) through its
LAPACKE entry point. Same routine, same library, same workspace query: the same bits as SciPy's call.

:func:`syevr_eigenvalues` is ``None`` where the library or the symbol cannot be found (another SciPy build,
no SciPy): callers then use a slower path.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import numpy as np

_COLUMN_MAJOR = 102

#: LAPACKE names tried in order, with their integer width: SciPy's OpenBLAS prefixes its symbols with
#: ``scipy_`` (32-bit integers), and a 64-bit-integer build suffixes them with ``64_``.
_SYMBOLS: tuple[tuple[str, type], ...] = (
    ("scipy_LAPACKE_dsyevr", ctypes.c_int32), ("LAPACKE_dsyevr", ctypes.c_int32),
    ("scipy_LAPACKE_dsyevr64_", ctypes.c_int64), ("LAPACKE_dsyevr64_", ctypes.c_int64),
)


class LapackError(RuntimeError):
    """``dsyevr`` reported a failure (``info != 0``): an illegal argument or no convergence."""


def _bind(path: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The eigenvalue function over the library at ``path``, or None if it exports no LAPACKE ``dsyevr``."""
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for name, integer in _SYMBOLS:
        routine = getattr(library, name, None)
        if routine is not None:
            break
    else:
        return None
    pointer = ctypes.c_void_p
    routine.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char, integer, pointer, integer,
                        ctypes.c_double, ctypes.c_double, integer, integer, ctypes.c_double,
                        ctypes.POINTER(integer), pointer, pointer, integer, pointer]
    routine.restype = integer
    index_dtype = np.int32 if integer is ctypes.c_int32 else np.int64

    def eigenvalues(a: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of the symmetric float64 ``a`` (C- or Fortran-contiguous, square), which is
        overwritten. Raises :class:`LapackError` on failure."""
        if a.dtype != np.float64 or a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"expected a square float64 matrix, got {a.dtype} {a.shape}")
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            raise ValueError("expected a contiguous matrix")
        n = a.shape[0]
        if n == 0:
            return np.empty(0)
        # a symmetric C-contiguous matrix is the same matrix read column-major: no copy
        values, found = np.empty(n), integer(0)
        unused_vectors, support = np.empty(1), np.empty(2 * n, dtype=index_dtype)
        info = routine(_COLUMN_MAJOR, b"N", b"A", b"L", n, a.ctypes.data, n, 0.0, 0.0, 1, n, 0.0,
                       ctypes.byref(found), values.ctypes.data, unused_vectors.ctypes.data, 1, support.ctypes.data)
        if info != 0 or found.value != n:
            raise LapackError(f"dsyevr failed (info {info}, {found.value} of {n} eigenvalues)")
        return values

    return eigenvalues


@functools.cache
def syevr_eigenvalues(path: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """:func:`_bind` once per library path (``ctypes`` loads a library already in the process by handle)."""
    return _bind(path)
