"""From a source's raw image to the tensor a model sees.

Every source hands out either a PIL image or a ``uint8`` numpy array (``H x W`` grey, ``H x W x 3`` RGB or
``H x W x 4`` RGBA). :func:`to_pil` turns either into a PIL image in the colour mode the model expects
(``RGB``, grey repeated to three channels; ``L`` only for a model whose data config says one channel), and
:class:`ImageTransform` applies the model's own evaluation transform, built by timm from its data config
(``timm.data.resolve_data_config``): resize, centre crop, to-tensor, normalize.

Without a data config the image is returned at its native size as a float32 tensor in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from ..errors import SettingsError

# The keys of a timm data config that describe evaluation preprocessing and that
# ``timm.data.create_transform`` (timm 1.0.x) accepts. Anything else in a config is ignored.
TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "crop_border_pixels")


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grey images (TIFF, 16-bit PNG) scaled to 8-bit grey.

    PIL's own ``convert`` clips these at 255 instead of scaling, which would turn most images white.
    Integer images are scaled by their type's range (16-bit when every value fits, else 32-bit); float
    images are taken as ``[0, 1]`` when their maximum is at most 1, else as ``[0, 255]``.
    """
    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        out = np.clip(arr * scale, 0, 255)
    else:
        arr = arr.astype(np.int64)
        top = 65535 if arr.max(initial=0) <= 65535 else 2**32 - 1
        out = np.clip(arr, 0, top) * (255.0 / top)
    return Image.fromarray(np.round(out).astype(np.uint8), mode="L")


def to_pil(image: Image.Image | np.ndarray, channels: int = 3) -> Image.Image:
    """Any raw image as PIL, in mode ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    Grey is repeated to three channels; alpha is dropped (RGBA, LA, palette with transparency); CMYK,
    YCbCr and other modes go through PIL's conversion; 1-bit images become 0/255.
    """
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise TypeError(f"raw image arrays must be uint8, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim == 2:
            image = Image.fromarray(np.ascontiguousarray(arr), mode="L")
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            image = Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")
        else:
            raise TypeError(f"raw image arrays must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    target = "RGB" if channels == 3 else "L"
    mode = image.mode
    if mode == target:
        return image
    if mode.startswith("I") or mode == "F":
        image = _high_depth_to_8bit(image)
    elif mode == "P":
        # palette images with a transparent colour warn unless they go through RGBA
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])  # drop alpha: keep the stored colour values
    return image if image.mode == target else image.convert(target)


def _check_config(data_config: Mapping[str, Any]) -> dict:
    """The create_transform arguments from a data config, validated."""
    if not isinstance(data_config, Mapping):
        raise SettingsError(f"data_config must be a dict (timm resolve_data_config), got {type(data_config).__name__}")
    kwargs = {k: data_config[k] for k in TRANSFORM_KEYS if k in data_config and data_config[k] is not None}
    size = kwargs.get("input_size")
    if size is None:
        raise SettingsError("data_config has no 'input_size' (expected (channels, height, width))")
    try:
        size = tuple(int(v) for v in size)
    except (TypeError, ValueError):
        raise SettingsError(f"data_config input_size {size!r} is not (channels, height, width)") from None
    if len(size) != 3 or size[0] not in (1, 3) or min(size[1:]) <= 0:
        raise SettingsError(f"data_config input_size {size!r} is not (1 or 3 channels, height > 0, width > 0)")
    kwargs["input_size"] = size
    for key in ("mean", "std"):
        if key in kwargs:
            values = tuple(float(v) for v in np.atleast_1d(kwargs[key]))
            if len(values) == 1:
                values = values * size[0]
            if len(values) != size[0]:
                raise SettingsError(f"data_config {key} {values} does not have {size[0]} channel values")
            kwargs[key] = values
    return kwargs


class ImageTransform:
    """Callable: raw image -> float32 tensor ``(C, H, W)``, the model's evaluation preprocessing.

    ``data_config=None`` gives the image at its native size, three channels, values in ``[0, 1]``.
    Picklable (DataLoader workers may receive it by pickling).
    """

    def __init__(self, data_config: Mapping[str, Any] | None = None):
        self.data_config = dict(data_config) if data_config is not None else None
        if data_config is None:
            self.channels = 3
            self._timm = None
        else:
            from timm.data import create_transform

            kwargs = _check_config(data_config)
            self.channels = kwargs["input_size"][0]
            self._timm = create_transform(**kwargs, is_training=False)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        pil = to_pil(image, self.channels)
        if self._timm is None:
            arr = np.asarray(pil, dtype=np.uint8)
            tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1)
            return tensor.to(torch.float32).div_(255.0)
        out = self._timm(pil)
        return out.to(torch.float32).contiguous()

    def __repr__(self) -> str:
        return f"ImageTransform({self._timm!r})" if self._timm is not None else "ImageTransform(native size, [0, 1])"
