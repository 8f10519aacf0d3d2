"""Image files on disk: which names count as images, and reading one with a clear error.

Image extensions (case-insensitive): ``.jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm``. Hidden files and
folders (name starting with ``.``) are never images. Multi-frame files (GIF, TIFF) give their first frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from ..errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """True for a visible file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image_file(path: Path | str, what: str | None = None) -> Image.Image:
    """Open and fully decode an image file (first frame).

    Raises :class:`DatasetError` naming ``what`` (default: the path) when the file is missing, truncated,
    corrupt or not an image; decoding happens here, so a broken file never reaches the model.
    """
    what = what or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img.copy()
    except FileNotFoundError:
        raise DatasetError(f"image file {what} no longer exists") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image file {what}: {exc}") from None
