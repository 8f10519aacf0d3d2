"""Reading numpy-array pickles (the CIFAR "python version" batches) without letting them run code.

A pickle can name any importable callable (``os.system``, ``subprocess.Popen``, ...) and call it while
loading. :func:`load_plain_pickle` uses an Unpickler whose ``find_class`` only returns the handful of
objects needed to rebuild plain containers of numpy arrays and scalars; any other global is refused with
a :class:`DatasetError` before it is ever looked up, so nothing outside that list can be called.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

from ..errors import DatasetError


def _allowed_globals() -> dict[tuple[str, str], object]:
    from numpy._core import multiarray, numeric  # numpy >= 2; pickles written by numpy 1 say numpy.core

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles from Python 3 spell bytes
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, what: str):
        super().__init__(file, encoding="bytes")
        self._what = what
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise DatasetError(
                f"refused to load {self._what}: the pickle asks for {module}.{name}, which is not a plain "
                f"numpy array or builtin container (a pickle like this could run code)"
            )
        return found

    def persistent_load(self, pid):
        raise DatasetError(f"refused to load {self._what}: it uses persistent ids, which plain data never does")


def load_plain_pickle(data: bytes, what: str) -> object:
    """Unpickle ``data`` allowing only builtin containers, numbers, strings, bytes and numpy arrays/scalars.

    Object-dtype arrays are refused as well. Raises :class:`DatasetError` naming ``what`` on any problem.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), what).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {what}: not a valid pickle ({type(exc).__name__}: {exc})") from None
    _reject_object_arrays(obj, what)
    return obj


def _reject_object_arrays(obj: object, what: str, depth: int = 0) -> None:
    if depth > 20:
        raise DatasetError(f"refused to load {what}: nested more deeply than plain data is")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DatasetError(f"refused to load {what}: it holds an object array, not plain numbers")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _reject_object_arrays(key, what, depth + 1)
            _reject_object_arrays(value, what, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        if len(obj) and not all(isinstance(v, (int, float, str, bytes)) for v in obj):
            for value in obj:
                _reject_object_arrays(value, what, depth + 1)
