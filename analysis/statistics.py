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

Where the inputs come from: :mod:`analysis.capture` routes to each layer the tensor its weight really
multiplies (also when a model calls ``F.linear(x, layer.weight, ...)`` itself, or pads inside a
convolution's forward), unfolded with the geometry of the real call; it also records the effective weight
and bias and runs the first batch's self-check (:meth:`MomentCollector.findings`).

Finiteness: :meth:`MomentCollector.check_finite` (run by :meth:`~MomentCollector.next_batch`) checks every
layer's running column sum for NaN/inf with one fused reduction and one device synchronisation per batch.

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

import kernels

from .capture import ConvGeometry, LayerCapture, LayerFinding, rows_per_image, vectors_per_image
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


class MomentCollector:
    """Context manager that captures the given layers' real inputs and accumulates their statistics.

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
        self._capture: LayerCapture | None = None
        self._batch = 0

    def __enter__(self) -> "MomentCollector":
        self._capture = LayerCapture(self.specs, self._accumulate)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._capture is not None:
            self._capture.__exit__(*exc_info)

    def check_finite(self) -> None:
        """Raise :class:`NumericalError` if any layer's running sums hold NaN or inf.

        One fused reduction over every layer's column sum and one device synchronisation (a NaN or inf
        anywhere in an input vector reaches its column sum); the offending layer is located only on failure."""
        if not self._sum:
            return
        sums = list(self._sum.values())
        if bool(torch.isfinite(torch.cat(sums)).all()):
            return
        name = next(n for n, colsum in self._sum.items() if not torch.isfinite(colsum).all())
        raise NumericalError(
            f"layer {name!r} received NaN or inf activations (batch {self._batch}); "
            "the model is numerically broken on this data or precision"
        )

    def next_batch(self) -> None:
        """Call once after each batch: checks finiteness (:meth:`check_finite`), ends discovery and runs the
        self-check after the first batch (:mod:`analysis.capture`), and advances the token-sampling stream."""
        self.check_finite()
        if self._capture is not None and self._capture.discovering:
            self._capture.end_discovery()
        self._batch += 1

    def findings(self) -> dict[str, LayerFinding]:
        """What discovery learned about each layer the forward used (effective weight and bias, geometry,
        self-check); layers never reached are absent. Ends discovery if no batch was closed yet."""
        if self._capture is None:
            return {}
        self._capture.end_discovery()
        return {n: f for n, f in self._capture.findings.items() if f.calls > 0 or f.problem is not None}

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

    def _accumulate(self, name: str, x: torch.Tensor, geometry: ConvGeometry | None) -> None:
        """Add the input ``x`` one call of layer ``name`` multiplied (unfolded with ``geometry``).

        Autocast is switched off here: the forward may run under it, and the float32 products of the
        statistics must not be recast to 16 bits."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            if geometry is None and x.dim() <= 2:
                x = x.reshape(-1, 1, x.shape[-1])  # each row is one image's only vector
            elif geometry is not None and x.dim() == 3:
                x = x.unsqueeze(0)  # an unbatched convolution input
            images_per_chunk = max(1, MAX_ROWS_PER_CHUNK // vectors_per_image(x, geometry))
            for start in range(0, x.shape[0], images_per_chunk):
                rows = rows_per_image(x[start : start + images_per_chunk], geometry)
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
        findings = self.findings()
        failed = torch.tensor([int(n in findings and (findings[n].problem is not None or
                                                     (findings[n].check is not None and not findings[n].check.passed)))
                               for n in names], dtype=torch.int64, device=self.device)
        reduce_sum([self._acc[n] for n in names] + [self._sum[n] for n in names] + [counts, failed])
        for name, count, fails in zip(names, counts.tolist(), failed.tolist()):
            self._count[name] = int(count)
            if fails and name in findings:
                findings[name].note("the self-check failed in another process of this run")

    def load_state(self, state: dict[str, torch.Tensor], batches_done: int | None = None) -> None:
        """Restore running sums saved by :meth:`state` (and the token-sampling stream's batch position)."""
        if batches_done is not None:
            self._batch = batches_done
        for name in self._acc:
            self._acc[name].copy_(state[f"{name}|acc"])
            self._sum[name].copy_(state[f"{name}|sum"])
            self._count[name] = int(state[f"{name}|count"])
