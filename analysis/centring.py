r"""Centred statistics and the mean direction's share of the energy.

The method's moments are uncentred: the mean direction is part of the data. With ``centred`` set, the
analysis decomposes the scatter about the mean instead (same data pass, same stored sums):

    C_c = C_in - s s^T / N = sum_x (x - mu)(x - mu)^T,        mu = s / N,
    C_out,c = W C_c W^T                                        (the bias cancels: y - mean(y) = W (x - mu)).

So a centred layer is the affine layer ``(W, no bias, C_c, s = 0, N)`` (:func:`centred`), and every
downstream formula (k, rank, projection, preservation error) applies unchanged to the scatter.

Reported either way (:func:`mean_shares`), from the uncentred sums: the share of the energy that lies in the
mean, ``N ||mu||^2 / tr(C_in) = ||s||^2 / (N tr C_in)`` for the input and, with the output sum
``s_out = W s + N b`` and ``tr C_out = tr(W C_in W^T) + 2 b^T W s + N ||b||^2``,
``||s_out||^2 / (N tr C_out)`` for the output. A share near 1 means the uncentred top direction is mostly
the mean (as high-norm outlier tokens make it in some ViTs).
"""

from __future__ import annotations

import torch

from .spectra import AffineLayer


def centred(layer: AffineLayer) -> AffineLayer:
    """The scatter about the mean as an affine layer without bias (see the module docstring)."""
    n = max(layer.count, 1)
    s = layer.column_sum.to(torch.float64)
    c = layer.c_in.to(torch.float64) - torch.outer(s, s) / n
    return AffineLayer(layer.weight, None, c, torch.zeros_like(s), layer.count)


def mean_shares(layer: AffineLayer) -> tuple[float, float]:
    """(input, output) share of the uncentred energy that lies in the mean direction; NaN without energy."""
    n = layer.count
    s = layer.column_sum.to(torch.float64)
    c = layer.c_in.to(torch.float64)
    w = layer.weight.to(torch.float64)
    trace_in = float(torch.diagonal(c).sum())
    ws = w @ s
    trace_out = float(((w @ c) * w).sum())
    s_out = ws
    if layer.bias is not None:
        b = layer.bias.to(torch.float64)
        trace_out += 2.0 * float(b @ ws) + n * float(b @ b)
        s_out = ws + n * b
    share_in = float(s @ s) / (n * trace_in) if n > 0 and trace_in > 0 else float("nan")
    share_out = float(s_out @ s_out) / (n * trace_out) if n > 0 and trace_out > 0 else float("nan")
    return share_in, share_out
