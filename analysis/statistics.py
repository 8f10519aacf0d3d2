"""Streaming input statistics of every analysed layer, gathered with forward pre-hooks.

For a layer ``y = W x + b`` the collector accumulates, over the N input vectors x it sees,

    C_in = sum_x x x^T      (d_in x d_in, uncentred)
    s    = sum_x x          (d_in)
    N    = number of vectors

batch by batch, never storing activations. "Input vectors" are every token of every image for a Linear
layer in a ViT, and every spatial position's unfolded patch (``F.unfold`` ordering: channel-major, then
kernel row, then kernel column, matching ``W.reshape(d_out, -1)``) for a convolution; 1x1 convolutions
use the channel vectors directly. Output statistics are never hooked: they follow exactly from these
(see :mod:`analysis.spectra`).

Precision: each batch's ``X^T X`` is formed in float32 (or better) and added into the running sum; on the
CPU the running sums are float64, on CUDA they are float32 accumulated by :mod:`kernels`. Partial sums are
never rounded to 16 bits.

Token sub-sampling (``tokens_per_image``): for very large runs each image contributes at most that many
vectors, drawn uniformly without replacement by a generator seeded from ``seed`` and the batch index, so a
run is reproducible. Statistics then estimate the same second moment scaled by the sampling fraction,
which changes no eigen-*fraction* used by the method.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .errors import NumericalError
from .models.layers import LayerSpec

MAX_ROWS_PER_CHUNK = 1 << 16
"""Unfolded convolution inputs are processed in chunks of at most this many rows to bound memory."""


@dataclass
class LayerMoments:
    """Running sums for one layer (see the module docstring). ``second_moment`` is full and symmetric
    once :meth:`MomentCollector.moments` returns it; float64 on the CPU."""

    name: str
    second_moment: torch.Tensor
    column_sum: torch.Tensor
    count: int


def _conv_rows(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfold a convolution's input into rows ``(B * L, C * kh * kw)``, one per output position."""
    kernel = tuple(module.kernel_size)
    stride = tuple(module.stride)
    dilation = tuple(module.dilation)
    if type(module).__name__.endswith("Conv2dSame"):
        from timm.layers import pad_same

        x = pad_same(x, kernel, stride, dilation)
    elif any(module._reversed_padding_repeated_twice):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if kernel == (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (B, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows_per_image(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Input vectors grouped by image: ``(B, T, d_in)``."""
    if isinstance(module, nn.Conv2d):
        rows = _conv_rows(module, x)
        return rows.reshape(x.shape[0], -1, rows.shape[-1])
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class MomentCollector:
    """Context manager that hooks the given layers and accumulates their input statistics.

    Hooks are registered on ``__enter__`` and always removed on ``__exit__``, even on error::

        with MomentCollector(specs, device) as collector:
            for images, _ in loader:
                model(images.to(device))
        moments = collector.moments()
    """

    def __init__(
        self,
        specs: list[LayerSpec],
        device: torch.device | str = "cpu",
        *,
        tokens_per_image: int | None = None,
        seed: int = 0,
        backend: str | None = None,
    ) -> None:
        self.specs = [s for s in specs if s.applicable]
        self.device = torch.device(device)
        self.tokens_per_image = tokens_per_image
        self.seed = seed
        self.backend = backend
        acc_dtype = torch.float64 if self.device.type == "cpu" else torch.float32
        self._acc = {s.name: torch.zeros(s.d_in, s.d_in, dtype=acc_dtype, device=self.device) for s in self.specs}
        self._sum = {s.name: torch.zeros(s.d_in, dtype=acc_dtype, device=self.device) for s in self.specs}
        self._count = {s.name: 0 for s in self.specs}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._batch = 0

    def __enter__(self) -> "MomentCollector":
        try:
            for spec in self.specs:
                self._handles.append(spec.module.register_forward_pre_hook(self._hook_for(spec.name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def next_batch(self) -> None:
        """Advance the token-sampling stream (call once per batch) and check for non-finite inputs."""
        for name, colsum in self._sum.items():
            if not torch.isfinite(colsum).all():
                raise NumericalError(
                    f"layer {name!r} received NaN or inf activations (batch {self._batch}); "
                    "the model is numerically broken on this data or precision"
                )
        self._batch += 1

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            with torch.no_grad():
                self._accumulate(name, module, x)

        return hook

    def _sample_tokens(self, rows: torch.Tensor, name: str) -> torch.Tensor:
        """``(B, T, d)`` -> ``(B, t, d)`` with ``t = tokens_per_image`` random tokens per image."""
        per_image = rows.shape[1]
        if self.tokens_per_image is None or per_image <= self.tokens_per_image:
            return rows
        stream = zlib.crc32(f"{self.seed}|{self._batch}|{name}".encode())  # stable across processes, unlike hash()
        generator = torch.Generator(device="cpu").manual_seed(stream)
        keys = torch.rand(rows.shape[0], per_image, generator=generator)
        index = keys.argsort(dim=1)[:, : self.tokens_per_image].to(rows.device)
        return torch.gather(rows, 1, index.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))

    def _accumulate(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        images_per_chunk = max(1, MAX_ROWS_PER_CHUNK // max(1, _rows_per_image_count(module, x)))
        for start in range(0, x.shape[0], images_per_chunk):
            rows = _rows_per_image(x[start : start + images_per_chunk], module)
            rows = self._sample_tokens(rows, name).reshape(-1, rows.shape[-1])
            kernels.second_moment(rows, self._acc[name], self._sum[name], backend=self.backend)
            self._count[name] += rows.shape[0]

    def moments(self) -> dict[str, LayerMoments]:
        """Symmetrized float64 CPU statistics of every hooked layer."""
        out = {}
        for spec in self.specs:
            full = kernels.symmetrize(self._acc[spec.name]).to("cpu", torch.float64)
            out[spec.name] = LayerMoments(
                name=spec.name,
                second_moment=full,
                column_sum=self._sum[spec.name].to("cpu", torch.float64),
                count=self._count[spec.name],
            )
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Raw running sums (for checkpointing partial statistics)."""
        state: dict[str, torch.Tensor] = {}
        for name in self._acc:
            state[f"{name}|acc"] = self._acc[name]
            state[f"{name}|sum"] = self._sum[name]
            state[f"{name}|count"] = torch.tensor(self._count[name], dtype=torch.int64)
        return state

    def merge_across(self, reduce_sum: Callable[[list[torch.Tensor]], None]) -> None:
        """Replace every running sum by its sum over processes (``reduce_sum`` sums tensors in place)."""
        names = list(self._acc)
        counts = torch.tensor([self._count[n] for n in names], dtype=torch.int64, device=self.device)
        reduce_sum([self._acc[n] for n in names] + [self._sum[n] for n in names] + [counts])
        for name, count in zip(names, counts.tolist()):
            self._count[name] = int(count)

    def load_state(self, state: dict[str, torch.Tensor], batches_done: int | None = None) -> None:
        """Restore running sums saved by :meth:`state` (and the token-sampling stream's batch position)."""
        if batches_done is not None:
            self._batch = batches_done
        for name in self._acc:
            self._acc[name].copy_(state[f"{name}|acc"])
            self._sum[name].copy_(state[f"{name}|sum"])
            self._count[name] = int(state[f"{name}|count"])


def _rows_per_image_count(module: nn.Module, x: torch.Tensor) -> int:
    """Number of input vectors one image gives this layer (without building them)."""
    if isinstance(module, nn.Conv2d):
        h, w = x.shape[-2:]
        sh, sw = module.stride
        return max(1, (h // sh) * (w // sw))
    return int(x[0].numel() // x.shape[-1]) if x.dim() > 1 else 1
