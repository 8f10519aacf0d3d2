"""Thin layers that replace a dense layer by its projection ``W' = L R`` at rank r.

For a Linear layer ``y = W x + b`` (W: ``d_out x d_in``) with factors ``L`` (``d_out x r``) and ``R``
(``r x d_in``) from :func:`analysis.projection.factorize`, the replacement computes

    y = L (R x) + b  =  W' x + b,

with ``r (d_in + d_out)`` weights (+ ``d_out`` bias) instead of ``d_in d_out``.

A convolution is analysed on unfolded patches (``d_in = C kh kw``, rows of ``F.unfold`` order), so ``R``
reshaped to ``(r, C, kh, kw)`` is a k x k convolution to r channels with the original stride, padding,
dilation and padding mode, followed by a 1 x 1 convolution from r channels to ``d_out`` with the bias. The
k x k convolution is always a *plain* convolution carrying the effective weight (:mod:`analysis.capture`):
a weight-standardised original (timm ``StdConv2d``, ``ScaledStdConv2d``) must not standardise its factor
again; timm's dynamic "same" padding (``Conv2dSame``, ``StdConv2dSame`` with ``same_pad``) is kept as a
plain timm ``Conv2dSame``.

State-dict names: ``<layer>.reduce.weight`` (R) and ``<layer>.expand.weight`` / ``<layer>.expand.bias`` (L, b).

Thin-pair protocol (read by the layer adapters of :mod:`analysis.models.layers` with ``getattr``, no import):
a pair has the attribute ``factorized_from``, the kind of the layer it replaces (``"mlp_fc1"``, or None when
not known: then the adapter classifies ``reduce``/``expand`` by the pair's own name, the original layer's).
"""

from __future__ import annotations

import torch
from torch import nn


class FactorizedLinear(nn.Module):
    """``y = expand(reduce(x))``: Linear ``d_in -> r`` (no bias), then Linear ``r -> d_out`` (bias kept)."""

    factorized_from: str | None = None  # the original layer's kind (see the module docstring)

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.reduce = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> "FactorizedLinear":
        layer = cls(right.shape[1], left.shape[0], right.shape[0], bias is not None)
        with torch.no_grad():
            layer.reduce.weight.copy_(right)
            layer.expand.weight.copy_(left)
            if bias is not None:
                layer.expand.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class FactorizedConv2d(nn.Module):
    """A k x k convolution to ``rank`` channels (no bias), then a 1 x 1 convolution to ``out_channels``."""

    factorized_from: str | None = None  # the original layer's kind (see the module docstring)

    def __init__(self, original: nn.Conv2d, rank: int) -> None:
        super().__init__()
        if original.groups != 1:
            raise ValueError("grouped convolutions are not factorized")
        self.reduce = _plain_conv(original, rank)
        self.expand = nn.Conv2d(rank, original.out_channels, kernel_size=1, bias=original.bias is not None,
                                dtype=original.weight.dtype)
        self.in_features = original.in_channels * original.weight.shape[2] * original.weight.shape[3]
        self.out_features, self.rank = original.out_channels, rank

    @classmethod
    def from_factors(cls, original: nn.Conv2d, left: torch.Tensor, right: torch.Tensor,
                     bias: torch.Tensor | None | str = "module") -> "FactorizedConv2d":
        """``bias``: the effective bias to add (default ``"module"``: the original module's own)."""
        layer = cls(original, right.shape[0])
        bias = original.bias if isinstance(bias, str) else bias
        with torch.no_grad():
            layer.reduce.weight.copy_(right.reshape(layer.reduce.weight.shape))
            layer.expand.weight.copy_(left[:, :, None, None])
            if layer.expand.bias is not None:
                if bias is None:
                    layer.expand.bias.zero_()
                else:
                    layer.expand.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


def _plain_conv(original: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    """A plain (not weight-transforming) convolution with ``original``'s geometry and no bias."""
    dtype = original.weight.dtype
    if type(original).__name__ == "Conv2dSame" or getattr(original, "same_pad", False):
        from timm.layers import Conv2dSame

        return Conv2dSame(original.in_channels, out_channels, original.kernel_size, stride=original.stride,
                          dilation=original.dilation, bias=False).to(dtype)
    return nn.Conv2d(original.in_channels, out_channels, original.kernel_size, stride=original.stride,
                     padding=original.padding, dilation=original.dilation, bias=False,
                     padding_mode=original.padding_mode, dtype=dtype)


def factorized_layer(original: nn.Module, left: torch.Tensor, right: torch.Tensor,
                     original_kind: str | None = None, bias: torch.Tensor | None | str = "module") -> nn.Module:
    """The thin replacement of ``original`` (Linear or ungrouped Conv2d) with ``L @ R = W'`` and ``bias``
    (the effective bias the original's forward adds; default ``"module"``: the module's own ``bias``)."""
    dtype = original.weight.dtype
    left, right = left.to(dtype), right.to(dtype)
    if isinstance(bias, str):
        bias = original.bias.detach() if original.bias is not None else None
    bias = bias.to(dtype) if bias is not None else None
    if isinstance(original, nn.Linear):
        layer = FactorizedLinear.from_factors(left, right, bias)
    elif isinstance(original, nn.Conv2d):
        layer = FactorizedConv2d.from_factors(original, left, right, bias)
    else:
        raise TypeError(f"cannot factorize a {type(original).__name__}")
    layer.factorized_from = original_kind
    return layer


def empty_factorized_layer(original: nn.Module, rank: int, original_kind: str | None = None) -> nn.Module:
    """A replacement with the right shapes and uninitialised weights (to load an exported state dict into)."""
    if isinstance(original, nn.Linear):
        layer = FactorizedLinear(original.in_features, original.out_features, rank, original.bias is not None)
    elif isinstance(original, nn.Conv2d):
        layer = FactorizedConv2d(original, rank)
    else:
        raise TypeError(f"cannot factorize a {type(original).__name__}")
    layer.factorized_from = original_kind
    return layer


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``name`` (``blocks.3.mlp.fc1``) inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
