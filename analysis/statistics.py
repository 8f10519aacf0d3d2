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

Which vectors count (``token_set``, :mod:`analysis.tokens`): each call's vectors are grouped by image
(:func:`analysis.tokens.arrange`, using the batch's image ids given to :meth:`MomentCollector.begin_batch`)
and the token set keeps its subset before anything is accumulated.

Split halves (``halves``, :mod:`analysis.uncertainty`): the running sums have a leading axis of two, one per
half of the images (fixed by each image's index); the whole run's statistics are their sum.

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
from .tokens import TokenLayout, TokenSelector, TokenSet, Vectors, arrange
from .uncertainty import half_of

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
        token_set: TokenSet | str = "all",
        layout: TokenLayout | None = None,
        halves: bool = False,
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self.specs = [s for s in specs if s.applicable]
        self.interrupt = interrupt
        """Called before each layer's input is added; it may raise to abandon the forward (a cancel that does
        not wait for the end of a long batch). The running sums then hold part of the batch: discard them."""
        self.device = torch.device(device)
        self.tokens_per_image = tokens_per_image
        self.seed = seed
        self.backend = backend
        self.selector = TokenSelector(token_set, layout)
        self.n_halves = 2 if halves else 1
        acc_dtype = torch.float64 if self.device.type == "cpu" else torch.float32
        h = self.n_halves
        self._acc = {s.name: torch.zeros(h, s.d_in, s.d_in, dtype=acc_dtype, device=self.device) for s in self.specs}
        self._sum = {s.name: torch.zeros(h, s.d_in, dtype=acc_dtype, device=self.device) for s in self.specs}
        self._count = {s.name: [0] * h for s in self.specs}
        self._capture: LayerCapture | None = None
        self._batch = 0
        self._image_ids: torch.Tensor | None = None
        self._halves_of_batch: torch.Tensor | None = None
        self._halves_sorted = False
        self.half_problems: dict[str, str] = {}
        """Layers whose vectors could not be attributed to images: their half statistics are not valid."""

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
        sums = [colsum.reshape(-1) for colsum in self._sum.values()]
        if bool(torch.isfinite(torch.cat(sums)).all()):
            return
        name = next(n for n, colsum in self._sum.items() if not torch.isfinite(colsum).all())
        raise NumericalError(
            f"layer {name!r} received NaN or inf activations (batch {self._batch}); "
            "the model is numerically broken on this data or precision"
        )

    def begin_batch(self, image_ids: torch.Tensor) -> None:
        """Call before each forward with the indices (in the analysed selection) of the batch's images:
        token sets and the split halves (:mod:`analysis.uncertainty`) attribute vectors to images by them.
        A batch ordered by :func:`analysis.uncertainty.half_order` has each half's vectors added as one slice
        (no copy); any other order is gathered per half, with the same sums up to float32 rounding."""
        self._image_ids = image_ids.to(torch.int64).cpu()
        halves = half_of(self._image_ids)
        self._halves_of_batch = halves if self.n_halves == 2 else None
        # half-0 images first (analysis.uncertainty.half_order): each half is a slice, nothing is gathered
        self._halves_sorted = bool((halves[1:] >= halves[:-1]).all())

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
        if self.interrupt is not None:
            self.interrupt()
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            if geometry is not None and x.dim() == 3:
                x = x.unsqueeze(0)  # an unbatched convolution input
            images = None if self._image_ids is None else len(self._image_ids)
            if geometry is None or images is None or x.shape[0] != images:
                self._add(name, x, rows_per_image(x, geometry), geometry, images, 0)
                return
            images_per_chunk = max(1, MAX_ROWS_PER_CHUNK // vectors_per_image(x, geometry))
            for start in range(0, x.shape[0], images_per_chunk):
                part = x[start : start + images_per_chunk]
                self._add(name, part, rows_per_image(part, geometry), geometry, part.shape[0], start)

    def _add(self, name: str, x: torch.Tensor, rows: torch.Tensor, geometry: ConvGeometry | None,
             images: int | None, first_image: int) -> None:
        """Select (token set), sub-sample and add the vectors of images ``first_image ...`` of the batch."""
        if images is None:  # no image ids (a caller outside the engine): the first axis is taken as images
            images = rows.shape[0]
        vectors = arrange(x, rows, geometry, images, self.selector.layout)
        if vectors is None:
            if self.selector.token_set.kind != "all":
                self.selector.problems.setdefault(name, "this layer's input vectors cannot be attributed to images")
                return
            vectors = Vectors(rows, "grouped")
            self._flag_halves(name, "its input vectors cannot be attributed to images")
        kept = self.selector.select(name, vectors)
        if kept is None:
            return
        kept = self._sample_tokens(kept, name)
        if self.n_halves == 1:
            self._add_rows(name, 0, kept.reshape(-1, kept.shape[-1]))
            return
        halves = self._halves_of_batch
        if halves is None or images is None or kept.shape[0] != images:
            self._flag_halves(name, "it was called without image ids")
            self._add_rows(name, 0, kept.reshape(-1, kept.shape[-1]))
            return
        halves = halves[first_image : first_image + images]  # on the CPU: no device synchronisation
        if self._halves_sorted:
            first_of_half_1 = int((halves == 0).sum())
            parts = (kept[:first_of_half_1], kept[first_of_half_1:])
        else:
            parts = (kept[(halves == 0).to(kept.device)], kept[(halves == 1).to(kept.device)])
        for half, rows_of_half in enumerate(parts):
            self._add_rows(name, half, rows_of_half.reshape(-1, kept.shape[-1]))

    def _add_rows(self, name: str, half: int, rows: torch.Tensor) -> None:
        if rows.shape[0] == 0:
            return
        kernels.second_moment(rows, self._acc[name][half], self._sum[name][half], backend=self.backend)
        self._count[name][half] += rows.shape[0]

    def _flag_halves(self, name: str, reason: str) -> None:
        if self.n_halves == 2:
            self.half_problems.setdefault(name, f"no split-half error bars: {reason}")

    def moments(self) -> dict[str, LayerMoments]:
        """Symmetrized float64 CPU statistics of every hooked layer (both halves together)."""
        out = {}
        for spec in self.specs:
            full = kernels.symmetrize(self._acc[spec.name].sum(0)).to("cpu", torch.float64)
            out[spec.name] = LayerMoments(
                name=spec.name,
                second_moment=full,
                column_sum=self._sum[spec.name].sum(0).to("cpu", torch.float64),
                count=sum(self._count[spec.name]),
            )
        return out

    def half_moments(self) -> list[dict[str, LayerMoments]]:
        """The two halves' statistics (like :meth:`moments`), or ``[]`` without halves. Layers in
        :attr:`half_problems` are left out."""
        if self.n_halves != 2:
            return []
        halves: list[dict[str, LayerMoments]] = [{}, {}]
        for spec in self.specs:
            if spec.name in self.half_problems:
                continue
            for half in (0, 1):
                halves[half][spec.name] = LayerMoments(
                    name=spec.name,
                    second_moment=kernels.symmetrize(self._acc[spec.name][half].clone()).to("cpu", torch.float64),
                    column_sum=self._sum[spec.name][half].to("cpu", torch.float64),
                    count=self._count[spec.name][half],
                )
        return halves

    def snapshot_sums(self, reduce_sum: Callable[[list[torch.Tensor]], None] | None = None) -> dict[str, LayerMoments]:
        """A copy of the whole-run statistics so far (summed over processes with ``reduce_sum``)."""
        names = list(self._acc)
        acc = [self._acc[n].sum(0) for n in names]
        sums = [self._sum[n].sum(0) for n in names]
        counts = torch.tensor([sum(self._count[n]) for n in names], dtype=torch.int64, device=self.device)
        if reduce_sum is not None:
            reduce_sum(acc + sums + [counts])
        return {
            n: LayerMoments(n, kernels.symmetrize(a).to("cpu", torch.float64), c.to("cpu", torch.float64), int(k))
            for n, a, c, k in zip(names, acc, sums, counts.tolist())
        }

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
        counts = torch.tensor([self._count[n] for n in names], dtype=torch.int64, device=self.device)  # (layers, halves)
        findings = self.findings()
        failed = torch.tensor([int(n in findings and (findings[n].problem is not None or
                                                     (findings[n].check is not None and not findings[n].check.passed)))
                               for n in names], dtype=torch.int64, device=self.device)
        reduce_sum([self._acc[n] for n in names] + [self._sum[n] for n in names] + [counts, failed])
        for name, count, fails in zip(names, counts.tolist(), failed.tolist()):
            self._count[name] = [int(c) for c in count]
            if fails and name in findings:
                findings[name].note("the self-check failed in another process of this run")

    def load_state(self, state: dict[str, torch.Tensor], batches_done: int | None = None) -> None:
        """Restore running sums saved by :meth:`state` (and the token-sampling stream's batch position)."""
        if batches_done is not None:
            self._batch = batches_done
        for name in self._acc:
            self._acc[name].copy_(state[f"{name}|acc"])
            self._sum[name].copy_(state[f"{name}|sum"])
            count = state[f"{name}|count"].reshape(-1)
            if count.numel() != self.n_halves:
                raise RuntimeError(f"checkpoint of {count.numel()} halves, expected {self.n_halves}")
            self._count[name] = [int(c) for c in count]
