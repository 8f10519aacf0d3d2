"""kernels.lapack: LAPACK dsyevr through ctypes, so that decompositions on several threads run side by side."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

scipy_linalg = pytest.importorskip("scipy.linalg")
pytest.importorskip("threadpoolctl")

from kernels import lapack  # noqa: E402
from kernels.reference import scipy_blas_controller  # noqa: E402


@pytest.fixture(scope="module")
def eigenvalues():
    controller = scipy_blas_controller()
    assert controller is not None  # SciPy's OpenBLAS is loaded and told apart from numpy's
    found = lapack.syevr_eigenvalues(controller.filepath)
    assert found is not None  # the LAPACKE entry point of SciPy's OpenBLAS was found
    return found


@pytest.mark.parametrize("d", [1, 2, 5, 64, 191, 333])
def test_the_same_bits_as_scipys_own_call_of_the_same_routine(eigenvalues, d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((d, d + 3))
    a = a @ a.T
    ours = eigenvalues(a.copy())
    scipys = scipy_linalg.eigvalsh(a.copy().T, lower=True, overwrite_a=True, check_finite=False, driver="evr")
    assert np.array_equal(ours, scipys)
    assert np.all(np.diff(ours) >= 0)  # ascending
    assert np.allclose(ours, np.linalg.eigvalsh(a), rtol=0, atol=1e-12 * ours.max())


def test_known_spectrum_rank_and_fortran_order(eigenvalues):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    spectrum = np.concatenate([np.zeros(43), np.arange(1.0, 8.0)])  # rank 7
    a = np.asfortranarray((q * spectrum) @ q.T)
    a = 0.5 * (a + a.T)
    values = eigenvalues(np.asfortranarray(a))
    assert np.allclose(values, spectrum, atol=1e-12 * 7)


def test_bad_shapes_are_refused(eigenvalues):
    with pytest.raises(ValueError, match="square float64"):
        eigenvalues(np.ones((3, 4)))
    with pytest.raises(ValueError, match="square float64"):
        eigenvalues(np.ones((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        eigenvalues(np.ones((6, 6))[::2, ::2])
    assert eigenvalues(np.empty((0, 0))).shape == (0,)


def test_a_library_without_the_routine_gives_none(tmp_path):
    assert lapack._bind(str(tmp_path / "missing.so")) is None
    libc = __import__("ctypes").util.find_library("c")
    if libc:
        assert lapack._bind(libc) is None


def test_other_python_threads_run_during_a_decomposition(eigenvalues):
    """The call releases the GIL: a Python loop in this thread keeps counting while another thread is inside
    LAPACK. With a long switch interval a thread that holds the GIL through a call is not made to hand it over
    during it, so the count is not a timing: SciPy 1.17's own wrapper of the routine counted 0 in five tries
    here, this call 7-13 million. The matrix is copied before (numpy's copy releases the GIL itself)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((900, 900))
    a = a @ a.T
    for _ in range(2):
        overwritten = a.copy()
        assert _count_during(lambda: eigenvalues(overwritten)) > 1_000


def _count_during(call) -> int:
    """Iterations of a Python loop in this thread while another thread makes ``call``."""
    inside, done = threading.Event(), threading.Event()

    def work() -> None:
        inside.set()
        call()
        done.set()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    try:
        worker = threading.Thread(target=work)
        counted = 0
        worker.start()
        inside.wait()
        while not done.is_set():
            counted += 1
        worker.join()
    finally:
        sys.setswitchinterval(previous)
    return counted
