"""Reader for the IDX format of (Fashion-)MNIST (``*-idx3-ubyte[.gz]`` images, ``*-idx1-ubyte[.gz]`` labels).

Layout: a big-endian header ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the raw array. Only the unsigned-byte code (0x08) occurs in these data sets.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DatasetError


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array of its declared shape."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read IDX file {str(path)!r}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path.name!r} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DatasetError(f"{path.name!r} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DatasetError(f"{path.name!r} is truncated: {len(raw) - header} bytes of data, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
