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

Verification beyond the first batch: one later batch (``verify_batch``, drawn by the engine from the run's
seed, :meth:`MomentCollector.verification_batch`) is re-verified: the layers captured by their forward
pre-hooks get the self-check again (:meth:`analysis.capture.LayerCapture.start_verification`), so an input
that the forward changes in place after discovery is caught (the layer becomes "not exact").

Finiteness: :meth:`MomentCollector.check_finite` (run by :meth:`~MomentCollector.next_batch`) checks every
layer's running column sums and the diagonal of its ``C`` for NaN/inf with one fused reduction per batch; on a
GPU its answer is read one batch later (no synchronisation per batch), and :meth:`MomentCollector.finish`
reads the last.

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
from typing import Callable, TypeVar

import torch

import kernels
from kernels import cpu_pool

from .capture import ConvGeometry, LayerCapture, LayerFinding, rows_per_image, vectors_per_image
from .errors import NumericalError
from .models.layers import LayerSpec
from .tokens import TokenLayout, TokenSelector, TokenSet, Vectors, arrange
from .uncertainty import half_of

R = TypeVar("R")

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
        verify_batch: int | None = None,
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
        self.verify_batch = verify_batch
        """The later batch (0-based) whose forward is re-verified (:meth:`LayerCapture.start_verification`)."""
        self._batch = 0
        self._image_ids: torch.Tensor | None = None
        self._halves_of_batch: torch.Tensor | None = None
        self._halves_sorted = False
        self._pending_check: tuple[torch.Tensor, object, int] | None = None
        self.half_problems: dict[str, str] = {}
        """Layers whose vectors could not be attributed to images: their half statistics are not valid."""
        self._sameness = {s.name: [0, 0] for s in self.specs}
        """Per layer: [calls whose images all had the same input vectors, calls where they differed]."""

    def __enter__(self) -> "MomentCollector":
        self._capture = LayerCapture(self.specs, self._accumulate)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._capture is not None:
            self._capture.__exit__(*exc_info)

    def check_finite(self) -> None:
        """Raise :class:`NumericalError` if any layer's running sums hold NaN or inf.

        One fused reduction over every layer's column sums and the diagonal of its ``C`` (a NaN or inf in an
        input vector reaches its column sum; a square that overflows reaches the diagonal, and an overflowing
        off-diagonal sum implies one on the diagonal: ``|C_ab| <= sqrt(C_aa C_bb)``, each diagonal sum only
        grows). On the CPU it is read at once. On a GPU the flag is copied to pinned host memory behind the
        batch's work and read at the next call, so the host never waits for the batch it has just queued and
        the GPU is never idle between batches; :meth:`finish` reads the last one. The offending layer is
        located only on failure."""
        if not self._sum:
            return
        finite = torch.isfinite(torch.cat([*self._sum.values(),
                                           *(acc.diagonal(dim1=-2, dim2=-1) for acc in self._acc.values())],
                                          dim=1)).all()
        if self.device.type != "cuda":
            if not bool(finite):
                self._raise_non_finite(self._batch)
            return
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(finite, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        pending, self._pending_check = self._pending_check, (host, done, self._batch)
        if pending is not None:
            self._read_check(pending)

    def _read_check(self, pending: tuple[torch.Tensor, object, int]) -> None:
        host, done, batch = pending
        done.synchronize()
        if not bool(host):
            self._raise_non_finite(batch)

    def finish(self) -> None:
        """Check finiteness now and wait for the answer: before the running sums are read (snapshots,
        checkpoints, the end of the data pass), so a NaN is reported as such, never decomposed or stored."""
        self.check_finite()
        pending, self._pending_check = self._pending_check, None
        if pending is not None:
            self._read_check(pending)

    def _raise_non_finite(self, batch: int) -> None:
        name = next((n for n in self._sum if not (torch.isfinite(self._sum[n]).all()
                                                   and torch.isfinite(self._acc[n].diagonal(dim1=-2, dim2=-1)).all())),
                    next(iter(self._sum)))
        raise NumericalError(
            f"layer {name!r} received NaN or inf activations, or their squares overflow (batch {batch}); "
            "the model is numerically broken on this data or precision"
        )

    def begin_batch(self, image_ids: torch.Tensor) -> None:
        """Call before each forward with the indices (in the analysed selection) of the batch's images:
        token sets and the split halves (:mod:`analysis.uncertainty`) attribute vectors to images by them.
        A batch ordered by :func:`analysis.uncertainty.half_order` has each half's vectors added as one slice
        (no copy); any other order is gathered per half, with the same sums up to float32 rounding."""
        if self._capture is not None and self._batch == self.verify_batch:
            self._capture.start_verification(self._batch)
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
        elif self._capture is not None:
            self._capture.end_verification()
        self._batch += 1

    def findings(self) -> dict[str, LayerFinding]:
        """What discovery learned about each layer the forward used (effective weight and bias, geometry,
        self-check); layers never reached are absent. Ends discovery if no batch was closed yet."""
        if self._capture is None:
            return {}
        self._capture.end_discovery()
        return {n: f for n, f in self._capture.findings.items() if f.calls > 0 or f.problem is not None}

    @staticmethod
    def verification_batch(n_batches: int, seed: int) -> int | None:
        """The later batch to re-verify, drawn from ``1 .. n_batches - 1`` by the run's seed (None with one
        batch: discovery checked it)."""
        return 1 + zlib.crc32(f"verify|{seed}".encode()) % (n_batches - 1) if n_batches > 1 else None

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
        if vectors is not None and vectors.rows.shape[0] == images:
            self._check_sameness(name, vectors.rows)
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
            self._add_rows(name, kept.reshape(-1, kept.shape[-1]))
            return
        halves = self._halves_of_batch
        if halves is None or images is None or kept.shape[0] != images:
            self._flag_halves(name, "it was called without image ids")
            self._add_rows(name, kept.reshape(-1, kept.shape[-1]))
            return
        halves = halves[first_image : first_image + images]  # on the CPU: no device synchronisation
        if self._halves_sorted:
            first_of_half_1 = int((halves == 0).sum())
            parts = (kept[:first_of_half_1], kept[first_of_half_1:])
        else:
            parts = (kept[(halves == 0).to(kept.device)], kept[(halves == 1).to(kept.device)])
        self._add_rows(name, [rows_of_half.reshape(-1, kept.shape[-1]) for rows_of_half in parts])

    def _check_sameness(self, name: str, rows: torch.Tensor) -> None:
        """Count whether every image of this call gave the same input vectors as its first (``rows``:
        ``images x T x d``); once they differed, the layer is not checked again."""
        counts = self._sameness[name]
        if counts[1] or rows.shape[0] < 2:
            return
        counts[0 if bool((rows == rows[:1]).all()) else 1] += 1

    def fixed_inputs(self) -> set[str]:
        """Layers whose input was the same for every image of every batch checked (at least one batch of two
        or more images): their input does not depend on the image (:data:`analysis.status.FIXED_INPUT`)."""
        return {name for name, (same, differed) in self._sameness.items() if same and not differed}

    def _add_rows(self, name: str, rows: torch.Tensor | list[torch.Tensor]) -> None:
        """Add ``rows`` (one tensor for half 0, or one per half) into the layer's running sums, in one call."""
        parts = [(half, r) for half, r in enumerate(rows if isinstance(rows, list) else [rows]) if r.shape[0]]
        kernels.second_moments([(r, self._acc[name][half], self._sum[name][half]) for half, r in parts],
                               backend=self.backend)
        for half, r in parts:
            self._count[name][half] += r.shape[0]

    def _flag_halves(self, name: str, reason: str) -> None:
        if self.n_halves == 2:
            self.half_problems.setdefault(name, f"no split-half error bars: {reason}")

    def _per_layer(self, build: Callable[[str], R], names: list[str]) -> dict[str, R]:
        """``{name: build(name)}``: on the CPU on :mod:`kernels.cpu_pool`'s single-threaded workers (many small
        float64 ops; on shared cores a 2-thread team makes each wait for a time slice), elsewhere in a loop."""
        if self.device.type != "cpu":
            return {name: build(name) for name in names}
        done = dict(cpu_pool.imap(build, names, cost=lambda name: float(self._acc[name].shape[-1]) ** 2))
        return {name: done[name] for name in names}

    def moments(self) -> dict[str, LayerMoments]:
        """Symmetrized float64 CPU statistics of every hooked layer (both halves together)."""
        def build(name: str) -> LayerMoments:
            full = kernels.symmetrize(self._acc[name].sum(0)).to("cpu", torch.float64)
            return LayerMoments(name=name, second_moment=full,
                                column_sum=self._sum[name].sum(0).to("cpu", torch.float64),
                                count=sum(self._count[name]))

        return self._per_layer(build, [spec.name for spec in self.specs])

    def half_moments(self) -> list[dict[str, LayerMoments]]:
        """The two halves' statistics (like :meth:`moments`), or ``[]`` without halves. Layers in
        :attr:`half_problems` are left out."""
        if self.n_halves != 2:
            return []
        names = [spec.name for spec in self.specs if spec.name not in self.half_problems]

        def build(name: str) -> tuple[LayerMoments, LayerMoments]:
            return tuple(LayerMoments(
                name=name,
                second_moment=kernels.symmetrize(self._acc[name][half].clone()).to("cpu", torch.float64),
                column_sum=self._sum[name][half].to("cpu", torch.float64),
                count=self._count[name][half],
            ) for half in (0, 1))

        both = self._per_layer(build, names)
        return [{name: pair[half] for name, pair in both.items()} for half in (0, 1)]

    def snapshot_sums(self, reduce_sum: Callable[[list[torch.Tensor]], None] | None = None) -> dict[str, LayerMoments]:
        """A copy of the whole-run statistics so far (summed over processes with ``reduce_sum``)."""
        names = list(self._acc)
        totals = [sum(self._count[n]) for n in names]
        if reduce_sum is None:
            def build(name: str) -> LayerMoments:
                return LayerMoments(name, kernels.symmetrize(self._acc[name].sum(0)).to("cpu", torch.float64),
                                    self._sum[name].sum(0).to("cpu", torch.float64), totals[names.index(name)])

            return self._per_layer(build, names)
        acc = [self._acc[n].sum(0) for n in names]
        sums = [self._sum[n].sum(0) for n in names]
        counts = torch.tensor(totals, dtype=torch.int64, device=self.device)
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
        sameness = torch.tensor([self._sameness[n] for n in names], dtype=torch.int64, device=self.device)
        reduce_sum([self._acc[n] for n in names] + [self._sum[n] for n in names] + [counts, failed, sameness])
        for name, count, fails, same in zip(names, counts.tolist(), failed.tolist(), sameness.tolist()):
            self._count[name] = [int(c) for c in count]
            self._sameness[name] = [int(v) for v in same]
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
