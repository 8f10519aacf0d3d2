"""What the forward pass really computes for each analysed layer: its real input, effective weight and bias.

A layer ``y = W x + b`` is only measured exactly if the statistics see the tensor ``x`` its weight really
multiplies, and the method uses the ``W`` and ``b`` really applied. Hooking ``nn.Linear``/``nn.Conv2d``
modules is not enough for every network:

- attention blocks may call ``F.linear(x, self.qkv.weight, qkv_bias)`` themselves (BEiT, EVA, SwinV2):
  the Linear's own forward never runs, and the bias applied is ``cat(q_bias, 0, v_bias)``;
- weight-standardised convolutions (timm ``StdConv2d``, ``ScaledStdConv2d``) call ``F.conv2d`` with a
  transformed weight, and "same"-padding variants pad the input inside their forward;
- ``torch.nn.utils.parametrize`` computes ``weight`` on access (weight norm, spectral norm);
- ``nn.MultiheadAttention`` applies its packed ``in_proj_weight`` (the layer ``<attention>.in_proj``, see
  :class:`analysis.models.layers.InProjection`) and its ``out_proj`` inside one
  ``F.multi_head_attention_forward`` call, which the function mode would see as a whole: that call's body
  is run with the mode active (:meth:`LayerCapture.attention_call`), so both ``F.linear`` calls are seen,
  and their sequence-first inputs are handed on grouped by image. With query, key and value not one tensor
  (cross-attention) ``in_proj`` is not one affine layer and is reported as such.

**Discovery** (the first batch): a :class:`torch.overrides.TorchFunctionMode` sees every ``F.linear`` and
``F.conv2d`` call. A call belongs to an analysed layer if (a) it is made while that layer's own forward is
running (tracked with a forward pre-hook / forward hook per layer) and its weight is that layer's ``weight``
Parameter, or else (b) the weight tensor passed *is* the ``weight`` Parameter of exactly one layer
(functional use), or else (c) it is made while that layer's own forward is running and its weight has the
layer's shape. So a module's own forward owns its calls: two layers sharing one weight Parameter (tied
weights) each get their own inputs; such a weight applied outside both forwards cannot be attributed and
makes both "not exact". From the
call it records the effective weight (as passed, reshaped ``d_out x d_in``, float64 CPU copy), the
effective bias (as passed), the convolution geometry actually used (kernel, stride, explicit padding,
dilation) and whether the call's input is the very tensor the layer's forward received.

**Steady state** (later batches): a layer whose every discovery call came from its own forward, with the
forward's input passed unchanged and the same geometry, is captured by its cheap forward pre-hook (with the
geometry of the real call). Any other layer that was reached keeps being captured inside the function
mode, which stays active only while at least one layer needs it. A layer never seen is "not reached".

**What is multiplied**: under autocast, ``F.linear``/``F.conv2d`` cast a float32 input to the autocast
dtype before multiplying; the captured input is cast the same way (:func:`as_multiplied`), and in steady
state a plain ``nn.Linear``/``nn.Conv2d`` is handed that cast tensor, so the forward and the statistics share
one cast. A layer used several times per forward (shared weights) accumulates every call.

**Re-verification** (one later batch, drawn from the run's seed): the layers captured by their pre-hook
get the self-check below again, on the inputs the pre-hook saw and the module's outputs
(:meth:`LayerCapture.start_verification`), so a forward that changes its input in place after the pre-hook
(``x.clamp_()`` before ``F.linear``: right on the discovery batch, wrong from then on) is caught.

**Self-check** (first batch, every run): for each layer, in float64 on the activations' device, the analytic

    C_out = W C_in W^T + W s b^T + b s^T W^T + N b b^T        (that batch's C_in, s, N; effective W, b)

is compared with ``Y^T Y`` of the layer's real outputs on the same vectors (the module's output when the call
came from the layer's own forward, else the call's output). The vectors are a sample of each call: at most
``CHECK_ROWS`` (1,024) of the call's input vectors, drawn at random without replacement by a generator seeded
with the batch and the call's row count (:func:`sample_rows`), and the same rows of its output, in the shared
order image, then position (token, or output pixel of a convolution); all of them when there are fewer. The
sums are exact float64 sums of those rows, so the comparison below holds for the sample as for the whole
batch: a wrong weight, bias or geometry, or an input changed on a whole token position or image column, shows
on any such sample, while the float64 work no longer grows with the batch (on the whole batch it was a tenth
of a default CPU run's time, issue 28). A defect confined to a few single vectors can escape one draw (a
vector is in the sample with probability ``CHECK_ROWS / rows``); the re-verification batch draws again.
The row counts of input and output are compared over the whole call. With ``E`` the expected size of the
rounding error of the real outputs ``Y`` (Frobenius norm over the sampled rows),

    E = (sqrt(2) u_in + sqrt(d_in) u_acc) T + u_out ||Y||_F,   T^2 = sum_i ||W[:, i]||^2 C_in[i, i] + N ||b||^2,

(``u_in``: unit roundoff of the multiplied operands: bfloat16 2^-8 and float16 2^-11 under autocast,
TF32 2^-11 for CUDA convolutions and for CUDA matmuls unless ``float32_matmul_precision`` is "highest",
float32 2^-24 otherwise; ``u_acc`` = 2^-24, the float32 accumulation, whose error grows like sqrt(d_in);
``u_out``: unit roundoff of the output dtype; ``T`` is the root-sum-square of the individual products, so
cancellation inside a dot product, as after weight standardisation, widens the bound as it should), and
``C_real - C_out = Ŷ^T E + E^T Ŷ + E^T E`` bounded by ``2 ||Y|| E + E^2``, the check passes when

    ||C_out - C_real||_F  <=  SAFETY * (2 ||Y||_F E + E^2),   SAFETY = 8.

Reported: ``relative error = ||C_out - C_real||_F / ||C_real||_F`` and the tolerance on the same scale.
In float32 on a random Linear this tolerance is about 1e-5 relative; under bfloat16 autocast about 0.15; a
wrong weight, bias or input gives errors of order 1.
"""

from __future__ import annotations

import inspect
import math
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .models.layers import LayerSpec

SAFETY = 8.0
"""Safety factor of the self-check tolerance (see the module docstring)."""

MAX_CHECK_ROWS = 1 << 15
"""Rows per chunk of a call's vectors in the self-check (bounds its transient memory)."""

CHECK_ROWS = 1024
"""Most vectors of one call the self-check uses (a seeded random sample of the call's rows, the same rows of its
input and of its output; see the module docstring)."""


def sample_rows(rows: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of the self-check's sample of a call's ``rows`` vectors: ``CHECK_ROWS`` of them drawn
    without replacement by a generator seeded with ``(seed, rows)``, or None (every row) when there are no more.
    Random rather than every k-th row: a stride that shares a factor with the image width or the tokens per
    image never visits some columns or token positions (an even stride misses every odd column)."""
    if rows <= CHECK_ROWS:
        return None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rows)
    return torch.randperm(rows, generator=generator)[:CHECK_ROWS].sort().values


def sampled(rows: torch.Tensor, offset: int, sample: torch.Tensor | None) -> torch.Tensor:
    """The rows of a chunk (``rows``: ``m x d``, global row indices ``offset .. offset + m - 1`` of its call)
    that are in ``sample`` (:func:`sample_rows`; None: all of them)."""
    if sample is None:
        return rows
    lo, hi = torch.searchsorted(sample, torch.tensor([offset, offset + rows.shape[0]])).tolist()
    return rows[(sample[lo:hi] - offset).to(rows.device)]


TF32_UNIT = 2.0**-11


@dataclass(frozen=True)
class ConvGeometry:
    """The geometry of one real ``F.conv2d`` call: the input is padded by ``padding`` (``F.pad`` order:
    left, right, top, bottom) and unfolded with ``kernel``, ``stride``, ``dilation`` and no padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]

    @classmethod
    def of_module(cls, module: nn.Conv2d) -> "ConvGeometry":
        """The geometry a plain ``nn.Conv2d`` (zeros padding mode) applies to its own input."""
        return cls.of_call(module.weight.shape, module.stride, module.padding, module.dilation)

    @classmethod
    def of_call(cls, weight_shape, stride, padding, dilation) -> "ConvGeometry":
        kh, kw = int(weight_shape[-2]), int(weight_shape[-1])
        stride, dilation = _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                pads = (0, 0, 0, 0)
            elif padding == "same":  # as torch: the odd extra pixel goes right / bottom
                th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
                pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
            else:
                raise ValueError(f"unknown convolution padding {padding!r}")
        else:
            ph, pw = _pair(padding)
            pads = (pw, pw, ph, ph)
        return cls(kernel=(kh, kw), stride=stride, padding=pads, dilation=dilation)

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(H_out, W_out)`` for an input of ``height x width`` (at least 1 each):
        ``H_out = (H + pad_top + pad_bottom - dilation (kh - 1) - 1) // stride + 1``, likewise ``W_out``; the
        unfolded rows of one image are these positions, row-major."""
        h = (height + self.padding[2] + self.padding[3] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        w = (width + self.padding[0] + self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return max(1, h), max(1, w)

    def positions(self, height: int, width: int) -> int:
        """Output positions per image for an input of ``height x width``."""
        h, w = self.output_grid(height, width)
        return h * w


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def conv_rows(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Unfold a convolution's input into rows per image ``(B, L, C * kh * kw)`` (``F.unfold`` order:
    channel-major, then kernel row, then kernel column, matching ``W.reshape(d_out, -1)``)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if any(geometry.padding):
        x = F.pad(x, geometry.padding)
    if geometry.kernel == (1, 1):
        x = x[:, :, :: geometry.stride[0], :: geometry.stride[1]]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    if geometry.stride == geometry.kernel and geometry.dilation == (1, 1):
        return _patch_rows(x, geometry.kernel)
    cols = F.unfold(x, geometry.kernel, dilation=geometry.dilation, padding=0, stride=geometry.stride)
    return cols.transpose(1, 2)


def _patch_rows(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """:func:`conv_rows` of a convolution whose stride is its kernel (non-overlapping patches, as a ViT's patch
    embedding): a reshape and one copy instead of ``F.unfold`` (the same values in the same order; unfold's
    general gather took 0.8 s of a 30 s ViT-Ti analysis of 512 images). Rows and columns past the last whole
    patch are dropped, as the convolution drops them."""
    batch, channels, height, width = x.shape
    (kh, kw) = kernel
    h_out, w_out = height // kh, width // kw
    x = x[:, :, : h_out * kh, : w_out * kw].reshape(batch, channels, h_out, kh, w_out, kw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, h_out * w_out, channels * kh * kw)


def sampled_conv_rows(x: torch.Tensor, geometry: ConvGeometry, sample: torch.Tensor) -> torch.Tensor:
    """The rows ``sample`` (sorted global indices, image-major then output position row-major) of
    ``conv_rows(x, geometry)`` flattened to ``(B L) x (C kh kw)``, gathered from the padded input without
    unfolding the rest: row ``r`` is image ``r // L`` at output position ``(r % L) // W_out, (r % L) % W_out``,
    its patch ``x[i, :, oh sh + dh a, ow sw + dw b]`` over ``a < kh, b < kw`` in :func:`conv_rows`' order."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    h_out, w_out = geometry.output_grid(x.shape[-2], x.shape[-1])
    if any(geometry.padding):
        x = F.pad(x, geometry.padding)
    index = sample.to(x.device)
    image, position = index // (h_out * w_out), index % (h_out * w_out)
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    rows = (position // w_out * sh)[:, None] + dh * torch.arange(kh, device=x.device)  # n x kh
    cols = (position % w_out * sw)[:, None] + dw * torch.arange(kw, device=x.device)  # n x kw
    channels = torch.arange(x.shape[1], device=x.device)
    patches = x[image[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return patches.reshape(index.shape[0], -1)


def rows_per_image(x: torch.Tensor, geometry: ConvGeometry | None) -> torch.Tensor:
    """Input vectors grouped by image, ``(B, T, d_in)``: unfolded patches for a convolution (``geometry``),
    the last axis for a linear layer."""
    if geometry is not None:
        return conv_rows(x, geometry)
    if x.dim() <= 2:
        return x.reshape(-1, 1, x.shape[-1])
    return x.reshape(x.shape[0], -1, x.shape[-1])


def vectors_per_image(x: torch.Tensor, geometry: ConvGeometry | None) -> int:
    """Number of input vectors one image gives (without building them)."""
    if geometry is not None:
        return geometry.positions(x.shape[-2], x.shape[-1])
    return int(x[0].numel() // x.shape[-1]) if x.dim() > 2 else 1


def output_rows(y: torch.Tensor, is_conv: bool) -> torch.Tensor:
    """A layer's outputs as rows ``(n, d_out)`` (channels last for a convolution)."""
    if is_conv:
        y = y.unsqueeze(0) if y.dim() == 3 else y
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


#: Modules whose forward is only ``F.linear``/``F.conv2d`` of their input: in steady state the forward pre-hook
#: passes them the input already cast by :func:`as_multiplied` (the cast autocast would make inside the call,
#: bit for bit), so the statistics and the layer share one cast instead of the hook making a second. Not when
#: the input requires grad (the hook's cast is made without autograd).
_PLAIN_LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv2d)


def as_multiplied(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``F.linear``/``F.conv2d`` multiply it: cast to the autocast dtype when autocast is on."""
    device_type = x.device.type
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x


def _unit(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def operand_unit(x: torch.Tensor, is_conv: bool) -> float:
    """Unit roundoff of the operands the real call multiplies (``x`` as multiplied)."""
    if x.dtype == torch.float64:
        return _unit(torch.float64)
    if x.dtype != torch.float32:
        return _unit(x.dtype)
    if x.device.type == "cuda" and (is_conv or torch.get_float32_matmul_precision() != "highest"):
        return TF32_UNIT
    return _unit(torch.float32)


@dataclass
class _Call:
    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    geometry: ConvGeometry | None
    groups: int


def _parse_call(func, args: tuple, kwargs: dict) -> _Call | None:
    if func is F.linear:
        bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
        return _Call(bound["input"], bound["weight"], bound.get("bias"), None, 1)
    if func is F.conv2d:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = dict(zip(names, args), **kwargs)
        weight = bound["weight"]
        geometry = ConvGeometry.of_call(weight.shape, bound.get("stride", 1), bound.get("padding", 0),
                                        bound.get("dilation", 1))
        return _Call(bound["input"], weight, bound.get("bias"), geometry, int(bound.get("groups", 1)))
    return None


def _add_gram(acc: torch.Tensor, rows: torch.Tensor) -> None:
    """``acc += rows^T rows`` (float64, ``d x d`` and ``n x d``). On the CPU as single-threaded tasks on
    :mod:`kernels.cpu_pool`'s workers, one per block of ``acc``'s rows (``acc[a:b] += rows[:, a:b]^T rows``):
    no 2-thread OpenMP team, whose barrier after each op waits a scheduler slice when other work shares the
    cores, and bits that do not depend on the thread count."""
    d = acc.shape[0]
    if acc.device.type != "cpu":
        acc.addmm_(rows.T, rows)
        return
    from kernels import cpu_pool

    starts = list(range(0, d, _GRAM_BLOCK))

    def block(start: int):
        stop = min(start + _GRAM_BLOCK, d)
        return lambda: acc[start:stop].addmm_(rows[:, start:stop].T, rows)

    cpu_pool.run_all([block(start) for start in starts], [float(min(start + _GRAM_BLOCK, d) - start) for start in starts])


_GRAM_BLOCK = 128
"""Rows of ``acc`` per task of :func:`_add_gram`."""


@dataclass
class SelfCheck:
    """The first batch's comparison of the analytic and the real output second moment."""

    relative_error: float
    tolerance: float
    passed: bool
    n_vectors: int


class _CheckSums:
    """float64 sums of one layer on the sampled rows of the discovery batch (:func:`sampled`): ``C_in, s, N``
    of its inputs, ``Y^T Y`` of its real outputs, the largest unit roundoffs seen, and every call's whole
    row counts (``rows_in``, ``rows_out``), which must agree.

    No ``d x d`` matrix where a smaller form exists. While fewer output rows than ``d_out`` were seen, the rows
    ``Y`` themselves are kept instead of ``C_real = Y^T Y`` (a 21,841-class head on a batch of images); likewise
    the input rows ``X`` while fewer than ``d_in`` (a ResNet's 4,608-wide 3x3 convolutions against a sample of
    1,024 rows: ``n d_in^2`` float64 products avoided), and then the analytic ``C_out = Z^T Z`` with
    ``Z = X W^T + 1 b^T`` (``n x d_out``; the same matrix as ``M G M^T``, since ``G = [X 1]^T [X 1]``). Where
    ``C_in`` is held and ``d_out > m = d_in + 1``, ``C_out = K K^T`` through its factor ``K = M F``
    (``d_out x m``, ``G = F F^T``, :func:`analysis.spectra.gram_factor`). The comparison only needs
    ``||C_out - C_real||_F^2 = ||C_out||_F^2 - 2 tr(C_out C_real) + ||C_real||_F^2``, each term from the small
    forms (``||K^T K||`` or ``||Z Z^T||``, ``||Y K||`` or ``||Y Z^T||``, ``||Y Y^T||``); the dense difference
    is used when both are dense."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.c_in: torch.Tensor | None = None
        self.x_rows: list[torch.Tensor] = []
        self.s: torch.Tensor | None = None
        self.n = 0
        self.c_real: torch.Tensor | None = None
        self.y_rows: list[torch.Tensor] = []
        self.n_out = 0
        self.rows_in = 0
        self.rows_out = 0
        self.u_in = 0.0
        self.u_acc = 0.0
        self.u_out = 0.0

    @property
    def device_type(self) -> str:
        return self.s.device.type if self.s is not None else "cpu"

    def add_input(self, x: torch.Tensor, geometry: ConvGeometry | None) -> None:
        self.u_in = max(self.u_in, operand_unit(x, geometry is not None))
        self.u_acc = max(self.u_acc, _unit(torch.float64 if x.dtype == torch.float64 else torch.float32))
        vectors = vectors_per_image(x, geometry)
        per_image = max(1, MAX_CHECK_ROWS // max(1, vectors))
        batched = x if (geometry is None and x.dim() > 2) or (geometry is not None and x.dim() == 4) else x.unsqueeze(0)
        total = batched.shape[0] * vectors if geometry is not None else x.numel() // max(1, x.shape[-1])
        sample, offset = sample_rows(total, self.seed), 0
        self.rows_in += total
        if geometry is not None and sample is not None:  # only the sampled patches, not the whole unfolded batch
            self._add_rows(sampled_conv_rows(batched, geometry, sample).to(torch.float64))
            return
        for start in range(0, batched.shape[0], per_image):
            rows = rows_per_image(batched[start : start + per_image], geometry)
            rows = rows.reshape(-1, rows.shape[-1])
            offset, rows = offset + rows.shape[0], sampled(rows, offset, sample).to(torch.float64)
            self._add_rows(rows)

    def _add_rows(self, rows: torch.Tensor) -> None:
        """Add float64 input rows (``n x d_in``) to ``s, N`` and to the rows kept or ``C_in``."""
        d = rows.shape[1]
        if self.s is None:
            self.s = torch.zeros(d, dtype=torch.float64, device=rows.device)
        self.s += rows.sum(0)
        self.n += rows.shape[0]
        if self.c_in is None and self.n < d:
            self.x_rows.append(rows)
            return
        if self.c_in is None:  # as many rows as inputs: X^T X is now the smaller form
            self.c_in = torch.zeros(d, d, dtype=torch.float64, device=rows.device)
            for kept in self.x_rows:
                _add_gram(self.c_in, kept)
            self.x_rows = []
        _add_gram(self.c_in, rows)

    def add_output(self, y: torch.Tensor, is_conv: bool) -> None:
        self.u_out = max(self.u_out, _unit(y.dtype) if y.is_floating_point() else 0.0)
        rows = output_rows(y, is_conv)
        sample, offset = sample_rows(rows.shape[0], self.seed), 0
        self.rows_out += rows.shape[0]
        for chunk in rows.split(MAX_CHECK_ROWS):
            offset, chunk = offset + chunk.shape[0], sampled(chunk, offset, sample).to(torch.float64)
            self.n_out += chunk.shape[0]
            if self.c_real is None and self.n_out < chunk.shape[1]:
                self.y_rows.append(chunk)
                continue
            if self.c_real is None:  # as many rows as outputs: Y^T Y is now the smaller form
                self.c_real = torch.zeros(chunk.shape[1], chunk.shape[1], dtype=torch.float64, device=chunk.device)
                for kept in self.y_rows:
                    _add_gram(self.c_real, kept)
                self.y_rows = []
            _add_gram(self.c_real, chunk)

    def _real_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||C_real||_F, tr C_real)`` from whichever form is held."""
        if self.c_real is not None:
            return torch.linalg.matrix_norm(self.c_real), torch.diagonal(self.c_real).sum()
        y = torch.cat(self.y_rows)
        return torch.linalg.matrix_norm(y @ y.T), y.square().sum()

    def _difference(self, w: torch.Tensor, b: torch.Tensor | None, real_norm: torch.Tensor) -> torch.Tensor:
        """``||C_out - C_real||_F`` (see the class docstring; ``real_norm = ||C_real||_F``), without ``d x d``
        matrices where possible."""
        from .spectra import AffineLayer, augmented, gram_factor, output_second_moment

        if self.c_in is None:  # the input rows X: C_out = Z^T Z, i.e. K = Z^T
            z = torch.cat(self.x_rows) @ w.T
            if b is not None:
                z += b
            return self._factored_difference(z.T, real_norm)
        layer = AffineLayer(w, b, self.c_in, self.s, self.n)
        if layer.uses_small_problem():
            m_aug, g = (t.to(w.device) for t in augmented(layer))
            return self._factored_difference(m_aug @ gram_factor(g), real_norm)  # any F F^T = G will do
        c_out = output_second_moment(w, self.c_in, self.s, self.n, b)
        if self.c_real is not None:
            return torch.linalg.matrix_norm(c_out - self.c_real)
        y = torch.cat(self.y_rows)
        out_sq, cross = c_out.square().sum(), ((y @ c_out) * y).sum()
        return (out_sq - 2 * cross + real_norm.square()).clamp_min(0).sqrt()

    def _factored_difference(self, k: torch.Tensor, real_norm: torch.Tensor) -> torch.Tensor:
        """``||K K^T - C_real||_F`` for ``C_out = K K^T`` (``d_out x r``), from the smaller of ``K^T K`` and
        ``K K^T`` and from ``Y K`` (the rows kept) or ``C_real K``."""
        gram = k.T @ k if k.shape[1] <= k.shape[0] else k @ k.T
        if self.c_real is not None:
            cross = ((self.c_real @ k) * k).sum()
        else:
            cross = (torch.cat(self.y_rows) @ k).square().sum()
        return (gram.square().sum() - 2 * cross + real_norm.square()).clamp_min(0).sqrt()

    def verdict(self, weight: torch.Tensor, bias: torch.Tensor | None) -> SelfCheck:
        if self.s is None or (self.c_real is None and not self.y_rows):
            return SelfCheck(float("nan"), float("nan"), False, self.n)
        device = self.s.device
        w = weight.to(device)
        b = bias.to(device) if bias is not None else None
        d_real = self.c_real.shape[0] if self.c_real is not None else self.y_rows[0].shape[1]
        if w.shape[0] != d_real or self.rows_out != self.rows_in or self.n_out != self.n:
            return SelfCheck(float("inf"), 0.0, False, self.n)
        reference, y_energy = self._real_terms()
        diff = self._difference(w, b, reference)
        squares = torch.diagonal(self.c_in) if self.c_in is not None else torch.cat(self.x_rows).square().sum(0)
        terms = (w.square().sum(0) * squares).sum()
        if b is not None:
            terms = terms + self.n * b.square().sum()
        y_norm = y_energy.clamp_min(0).sqrt()
        d_in = w.shape[1]
        error = (math.sqrt(2.0) * self.u_in + math.sqrt(d_in) * self.u_acc) * terms.clamp_min(0).sqrt() + self.u_out * y_norm
        allowed = SAFETY * (2 * y_norm * error + error**2)
        diff, reference, allowed = (float(v) for v in torch.stack([diff, reference, allowed]).cpu())
        if reference > 0:
            relative, tolerance = diff / reference, allowed / reference
        else:
            relative, tolerance = (0.0 if diff == 0 else float("inf")), 0.0
        return SelfCheck(relative, tolerance, diff <= allowed and math.isfinite(diff), self.n)


@dataclass
class LayerFinding:
    """What discovery learned about one analysed layer.

    ``weight`` (``d_out x d_in``) and ``bias`` are float64 CPU copies of what the real call multiplied and
    added; ``geometry`` the convolution geometry of the call (None for a linear layer); ``calls`` the number
    of calls on the discovery batch; ``functional`` whether some call came from outside the layer's own
    forward; ``problem`` a reason the affine model does not describe the layer (None when it does);
    ``check`` the self-check."""

    name: str
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    geometry: ConvGeometry | None = None
    calls: int = 0
    functional: bool = False
    input_transformed: bool = False
    geometry_varies: bool = False
    problem: str | None = None
    check: SelfCheck | None = None
    _sums: _CheckSums | None = field(default=None, repr=False)

    @property
    def hookable(self) -> bool:
        """Whether the layer's forward pre-hook sees exactly what every call multiplies."""
        return (self.calls > 0 and not self.functional and not self.input_transformed
                and not self.geometry_varies and self.problem is None)

    def note(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem


@dataclass
class _Frame:
    name: str
    input: object
    calls: int = 0
    outputs: list = field(default_factory=list)


def _dispatching_body(fn: Callable) -> Callable | None:
    """A copy of the Python function ``fn`` (of ``torch.nn.functional``) whose own ``__torch_function__``
    check is off, so that the function mode sees the calls it makes inside (None if ``fn`` does not make that
    check by the name ``has_torch_function``). The copy has its own globals; ``fn`` is not changed."""
    code = getattr(fn, "__code__", None)
    if code is None or "has_torch_function" not in code.co_names:
        return None
    namespace = dict(fn.__globals__)
    namespace["has_torch_function"] = lambda *_args: False
    body = types.FunctionType(code, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    body.__kwdefaults__ = fn.__kwdefaults__
    return body


_ATTENTION_BODY = _dispatching_body(F.multi_head_attention_forward)
_ATTENTION_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


class _Mode(TorchFunctionMode):
    def __init__(self, capture: "LayerCapture") -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            return self.capture.attention_call(self, args, kwargs)
        out = func(*args, **kwargs)
        if func is F.linear or func is F.conv2d:
            self.capture.observe(func, args, kwargs, out)
        return out


def _shape_fits(spec: LayerSpec, weight: torch.Tensor, is_conv: bool) -> bool:
    if is_conv != isinstance(spec.module, nn.Conv2d):
        return False
    return weight.dim() >= 2 and int(weight.shape[0]) == spec.d_out and int(weight[0].numel()) == spec.d_in


class LayerCapture:
    """Routes each analysed layer's real input to ``on_input(name, x, geometry)`` (see the module docstring).

    ``__enter__`` registers one forward pre-hook and one forward hook per layer and enters the function
    mode; :meth:`end_discovery` (after the first batch) runs the self-check and leaves the mode unless some
    layer needs it; ``__exit__`` removes everything, even on error. ``check=False`` skips the self-check
    sums (discovery of effective weights only)."""

    def __init__(self, specs: list[LayerSpec], on_input: Callable[[str, torch.Tensor, ConvGeometry | None], None],
                 *, check: bool = True) -> None:
        self.specs = {s.name: s for s in specs}
        self._on_input = on_input
        self._check = check
        self._by_param: dict[int, list[str]] = {}  # a Parameter tied between layers has several owners
        for spec in specs:
            param = spec.module._parameters.get("weight")
            if param is not None:
                self._by_param.setdefault(id(param), []).append(spec.name)
        self.discovering = True
        self.findings: dict[str, LayerFinding] = {}
        self._hooked: set[str] = set()
        self._moded: set[str] = set()
        self._stack: list[_Frame] = []
        self._sequence_first: list[tuple[int, int] | None] = []
        self._verifying: dict[str, _CheckSums] | None = None
        self.verified_batch: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mode: _Mode | None = None
        self._busy = False
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------------------------
    def __enter__(self) -> "LayerCapture":
        try:
            for spec in self.specs.values():
                self._handles.append(spec.module.register_forward_pre_hook(self._pre_hook(spec.name)))
                self._handles.append(spec.module.register_forward_hook(self._post_hook(spec.name), always_call=True))
            self._enter_mode()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._closed = True  # a mode that could not be popped (another one above it) stays inert
        self._leave_mode()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    def _enter_mode(self) -> None:
        if self._mode is None:
            self._mode = _Mode(self)
            self._mode.__enter__()

    def _leave_mode(self) -> None:
        if self._mode is None:
            return
        stack = torch.overrides._get_current_function_mode_stack()
        if stack and stack[-1] is self._mode:
            self._mode.__exit__(None, None, None)
            self._mode = None
        # else: another mode was entered above ours; ours stays as a pass-through until it can be popped

    # -- hooks ------------------------------------------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if self._busy:
                return
            if self.discovering or name in self._moded:
                self._stack.append(_Frame(name, args[0] if args else None))
            elif name in self._hooked:
                with torch.no_grad():
                    x = as_multiplied(args[0])
                    geometry = self.findings[name].geometry
                    self._feed(name, x, geometry)
                    if self._verifying is not None and name in self._verifying:
                        with torch.autocast(x.device.type, enabled=False):
                            self._verifying[name].add_input(x, geometry)
                if x is not args[0] and type(module) in _PLAIN_LAYERS and not args[0].requires_grad:
                    return (x, *args[1:])  # one cast for both: the layer's autocast finds it done (issue 28)

        return hook

    def _post_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if self._verifying is not None and name in self._verifying and isinstance(output, torch.Tensor):
                with torch.no_grad(), torch.autocast(output.device.type, enabled=False):
                    self._verifying[name].add_output(output, isinstance(module, nn.Conv2d))
                return
            if self._busy or not self._stack:
                return
            index = next((i for i in range(len(self._stack) - 1, -1, -1) if self._stack[i].name == name), None)
            if index is None:
                return
            frame = self._stack.pop(index)
            if self.discovering:
                with torch.no_grad(), torch.autocast(module.weight.device.type if isinstance(getattr(module, "weight", None), torch.Tensor) else "cpu", enabled=False):
                    self._close_frame(frame, output)

        return hook

    def _feed(self, name: str, x: torch.Tensor, geometry: ConvGeometry | None) -> None:
        self._busy = True
        try:
            self._on_input(name, x, geometry)
        finally:
            self._busy = False

    # -- calls ------------------------------------------------------------------------------------------
    def attention_call(self, mode: TorchFunctionMode, args: tuple, kwargs: dict):
        """``F.multi_head_attention_forward(*args, **kwargs)`` (``nn.MultiheadAttention``'s whole forward, which
        the function mode sees as one call), run so that its in- and out-projections reach :meth:`observe` as
        the ``F.linear`` calls they are: its body runs with ``mode`` pushed again (a copy of the function
        without its own ``__torch_function__`` check, see :func:`_dispatching_body`). Its sequence-first
        ``(L, N, E)`` and ``(L N) x E`` inputs are handed on batch-major (rows grouped by image)."""
        bound = _ATTENTION_SIGNATURE.bind(*args, **kwargs).arguments
        names = [self._layer_of(bound.get(key)) for key in ("in_proj_weight", "out_proj_weight")]
        wanted = [n for n in names if n is not None and (self.discovering or n in self._moded)]
        if not wanted or _ATTENTION_BODY is None or self._busy or self._closed:
            return F.multi_head_attention_forward(*args, **kwargs)
        query, key, value = bound["query"], bound["key"], bound["value"]
        if names[0] is not None and self.discovering and not (query is key and key is value):
            self.findings.setdefault(names[0], LayerFinding(names[0])).note(
                "query, key and value are different tensors (cross-attention): its q, k and v rows multiply "
                "different inputs, so it is not one layer y = W x + b")
        self._sequence_first.append(tuple(query.shape[:2]) if query.dim() == 3 else None)
        try:
            with mode:
                return _ATTENTION_BODY(*args, **kwargs)
        finally:
            self._sequence_first.pop()

    def _owners(self, weight) -> list[str]:
        """The analysed layers whose weight Parameter ``weight`` is (several when it is tied between them)."""
        names = self._by_param.get(id(weight), []) if isinstance(weight, torch.Tensor) else []
        return [n for n in names if self.specs[n].module._parameters.get("weight") is weight]  # not a recycled id

    def _layer_of(self, weight) -> str | None:
        """The one analysed layer whose weight Parameter ``weight`` is (None for any other or a tied one)."""
        owners = self._owners(weight)
        return owners[0] if len(owners) == 1 else None

    def _batch_major(self, x: torch.Tensor) -> torch.Tensor:
        """Inside ``F.multi_head_attention_forward`` (sequence length L, batch N): its ``(L, N, E)`` and
        ``(L N) x E`` (rows ``l N + n``) inputs as ``(N, L, E)``, so each image's vectors are one group."""
        layout = self._sequence_first[-1] if self._sequence_first else None
        if layout is None:
            return x
        length, batch = layout
        if x.dim() == 3 and tuple(x.shape[:2]) == (length, batch):
            return x.transpose(0, 1)
        if x.dim() == 2 and x.shape[0] == length * batch:
            return x.reshape(length, batch, x.shape[1]).transpose(0, 1)
        return x

    def observe(self, func, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        """One ``F.linear``/``F.conv2d`` call seen by the function mode (its output ``out`` already computed)."""
        if self._busy or self._closed:
            return
        call = _parse_call(func, args, kwargs)
        if call is None or not isinstance(call.weight, torch.Tensor):
            return
        is_conv = call.geometry is not None
        frame = self._stack[-1] if self._stack else None
        owners = self._owners(call.weight)
        name, via_module = None, False
        if frame is not None and frame.name in owners:  # a module's own forward owns its calls (tied weights)
            name, via_module = frame.name, True
        elif len(owners) == 1:
            name = owners[0]
        elif owners:  # a weight tied between layers, applied outside all their forwards: whose call is it?
            if self.discovering:
                for owner in owners:
                    self.findings.setdefault(owner, LayerFinding(owner)).note(
                        f"its weight is tied with {', '.join(o for o in owners if o != owner)} and applied outside "
                        "their forwards, so its calls cannot be attributed to one of them")
            return
        elif frame is not None and _shape_fits(self.specs[frame.name], call.weight, is_conv):
            name, via_module = frame.name, True
        if name is None or not _shape_fits(self.specs[name], call.weight, is_conv):
            return
        if not self.discovering and name not in self._moded:
            return
        x = as_multiplied(call.input)
        self._busy = True
        try:
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                if self.discovering:
                    self._discover(name, call, x, out, frame if via_module else None)
                if call.groups == 1:
                    self._on_input(name, self._batch_major(x), call.geometry)
        finally:
            self._busy = False
        if via_module:
            frame.calls += 1

    def _discover(self, name: str, call: _Call, x: torch.Tensor, out: torch.Tensor, frame: _Frame | None) -> None:
        spec = self.specs[name]
        finding = self.findings.setdefault(name, LayerFinding(name))
        weight = call.weight.detach().reshape(spec.d_out, spec.d_in).to("cpu", torch.float64)
        bias = call.bias.detach().to("cpu", torch.float64) if isinstance(call.bias, torch.Tensor) else None
        if finding.calls == 0:
            finding.weight, finding.bias, finding.geometry = weight, bias, call.geometry
        else:
            same_bias = (bias is None and finding.bias is None) or (
                bias is not None and finding.bias is not None and torch.equal(bias, finding.bias))
            if not torch.equal(weight, finding.weight) or not same_bias:
                finding.note("the weight or bias it applies differs between its calls")
            if call.geometry != finding.geometry:
                finding.geometry_varies = True
        finding.calls += 1
        if call.groups != 1:
            finding.note(f"a call uses groups={call.groups}")
        if frame is None:
            finding.functional = True
        elif call.input is not frame.input:
            finding.input_transformed = True
        if self._check and call.groups == 1:
            if finding._sums is None:
                finding._sums = _CheckSums()
            finding._sums.add_input(x, call.geometry)
            if frame is None:
                finding._sums.add_output(out, call.geometry is not None)
        if frame is not None:
            frame.outputs.append(out)

    def _close_frame(self, frame: _Frame, output) -> None:
        finding = self.findings.setdefault(frame.name, LayerFinding(frame.name))
        is_conv = isinstance(self.specs[frame.name].module, nn.Conv2d)
        if frame.calls == 0:
            finding.note("its forward makes no F.linear/F.conv2d call with its weight (input not capturable)")
            return
        if frame.calls > 1:
            finding.note(f"its forward makes {frame.calls} linear/convolution calls")
        if finding._sums is None:
            return
        if frame.calls == 1 and isinstance(output, torch.Tensor) and output.shape == frame.outputs[0].shape:
            finding._sums.add_output(output, is_conv)  # the module's own output: also catches post-processing
        else:
            for out in frame.outputs:
                finding._sums.add_output(out, is_conv)

    # -- after the first batch --------------------------------------------------------------------------
    def end_discovery(self) -> None:
        """Run the self-checks, choose each layer's steady-state capture, leave the mode if unneeded."""
        if not self.discovering:
            return
        self.discovering = False
        self._stack.clear()
        checked = {name: finding._sums for name, finding in self.findings.items()
                   if finding.calls and finding._sums is not None}
        for name, check in _verdicts(checked, self.findings).items():
            self.findings[name].check = check
        for name, finding in self.findings.items():
            if finding.calls == 0:
                continue
            finding._sums = None
            (self._hooked if finding.hookable else self._moded).add(name)
        if not self._moded:
            self._leave_mode()

    def start_verification(self, batch: int) -> None:
        """Re-verify the next forward (batch ``batch``, after discovery): every layer captured by its forward
        pre-hook gets the self-check again, on the inputs that pre-hook sees and the module's outputs, so an
        input changed in place inside the forward after discovery (``x.clamp_()`` before ``F.linear``) is
        caught. Layers captured inside the function mode are captured at the call itself."""
        passed = {n for n in self._hooked if self.findings[n].check is not None and self.findings[n].check.passed}
        if self._check and not self.discovering and passed:  # a layer that failed already keeps that reason
            self._verifying, self.verified_batch = {name: _CheckSums(seed=batch) for name in passed}, batch

    def end_verification(self) -> None:
        """The re-verification's verdicts: a layer that fails gets a problem (status "not exact")."""
        sums, self._verifying = self._verifying, None
        called = {name: layer_sums for name, layer_sums in (sums or {}).items() if layer_sums.s is not None}
        for name, check in _verdicts(called, self.findings).items():
            finding = self.findings[name]
            if not check.passed:
                finding.note(f"re-verified on batch {self.verified_batch}: the inputs its forward receives no longer "
                             f"give its outputs (relative error {check.relative_error:.3g} of the output second "
                             f"moment > tolerance {check.tolerance:.2g}), e.g. an input changed in place")


def _verdicts(sums: dict[str, _CheckSums], findings: dict[str, LayerFinding]) -> dict[str, SelfCheck]:
    """Every layer's self-check verdict (:meth:`_CheckSums.verdict`), in the order of ``sums``. On the CPU the
    layers are independent single-threaded tasks on :mod:`kernels.cpu_pool`'s workers (float64 products of
    up to ``d_out x d_in^2``, and a Cholesky or eigh of ``G``): on a core shared with other work, a 2-thread
    OpenMP team's barrier after each small op costs a scheduler slice (see that module)."""
    from .spectra import cpu_dict

    def verdict(name: str) -> SelfCheck:
        layer_sums, finding = sums[name], findings[name]
        with torch.no_grad(), torch.autocast(layer_sums.device_type, enabled=False):
            return layer_sums.verdict(finding.weight, finding.bias)

    def cost(name: str) -> float:
        weight = findings[name].weight
        return float(weight.shape[0] * weight.shape[1] * (weight.shape[0] + weight.shape[1])) if weight is not None else 1.0

    names = list(sums)
    if all(layer_sums.device_type == "cpu" for layer_sums in sums.values()):
        return cpu_dict(verdict, names, cost=cost)
    return {name: verdict(name) for name in names}


def discover(model: nn.Module, specs: list[LayerSpec], batch: torch.Tensor) -> dict[str, LayerFinding]:
    """Effective weight, bias and geometry of every layer from one forward of ``model`` on ``batch``
    (no statistics, no self-check); layers the forward never used are absent."""
    with LayerCapture(specs, lambda *_: None, check=False) as capture, torch.inference_mode():
        model(batch)
    capture.end_discovery()
    return {n: f for n, f in capture.findings.items() if f.calls > 0}


def effective_parameters(spec: LayerSpec, finding: LayerFinding | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``d_out x d_in`` weight and the bias the forward applies (float64, CPU): the captured ones, or the
    module's own when the layer was never reached (only W's data-free spectrum uses them then)."""
    if finding is not None and finding.weight is not None:
        return finding.weight, finding.bias
    from .models.layers import weight_matrix

    weight = weight_matrix(spec.module).detach().to("cpu", torch.float64)
    bias = spec.module.bias.detach().to("cpu", torch.float64) if spec.has_bias else None
    return weight, bias


def layer_status(spec: LayerSpec, n_samples: int, finding: LayerFinding | None) -> tuple[str, str]:
    """``(status, reason)`` of one analysed layer after the run (vocabulary of :mod:`analysis.status`;
    precedence: not reached, not exact, too few samples, ok)."""
    from . import status

    if finding is not None and finding.problem and finding.calls == 0:
        return status.NOT_EXACT, finding.problem  # its forward ran, but not as a capturable call
    if n_samples == 0:
        return status.NOT_REACHED, "no input vector reached its weight"
    if finding is None or finding.calls == 0:
        if finding is not None and finding.problem:
            return status.NOT_EXACT, finding.problem
        return status.NOT_EXACT, "not verified: no batch was seen by this process's self-check"
    if finding.problem:
        return status.NOT_EXACT, finding.problem
    check = finding.check
    if check is None:
        return status.NOT_EXACT, "not verified: the self-check did not run"
    if not check.passed:
        return status.NOT_EXACT, (f"self-check failed: relative error {check.relative_error:.3g} of the output "
                                  f"second moment > tolerance {check.tolerance:.2g}")
    if n_samples < spec.d_in:
        return status.TOO_FEW_SAMPLES, f"{n_samples} input vectors < d_in = {spec.d_in}: rank bounded by the sample count"
    return status.OK, ""
