"""The status of one analysed layer: whether its utilization is a trustworthy number, and why not.

=====================  =================================================================================
status                 meaning
=====================  =================================================================================
``ok``                 the layer's input was captured where its weight multiplies it, and the first
                       batch's self-check (:mod:`analysis.capture`) confirmed the analytic ``C_out``
``not reached``        no input vector reached the layer's weight (the forward never used it)
``not exact``          the self-check failed (the analytic output moment disagrees with the real
                       outputs beyond the stated tolerance), or the forward uses the layer in a way the
                       affine model ``y = W x + b`` does not describe
``fixed input``        the layer's input is the same for every image of a batch (ConViT's ``pos_proj``
                       on a fixed index buffer): it does not depend on the image, so its subspace says
                       nothing about the data
``zero input``         the input energy ``tr C_in`` is zero, or below float32's smallest normal number
                       per entry: ``k_in`` (and so ``r`` and ``u``) is undefined
``zero output``        the output energy ``tr C_out`` is zero, or within the float rounding of the layer's
                       own products (``||Y||_F <= E``, the bound of :mod:`analysis.capture`'s
                       self-check, e.g. a gain-0 ``ScaledStdConv2d``): ``k_out`` is undefined
``too few samples``    ``n_samples < d_in``: C_in has rank at most ``n_samples``, so ``k_in`` and the
                       utilization measure the sample count, not the layer
``not applicable``     depthwise / grouped convolution (each group is too small to analyse); these are
                       listed in ``Result.not_applicable``, not in the table
=====================  =================================================================================

An undefined ``k`` is NaN in the table (never a number): ``k_in``, ``k_out``, ``rank`` and ``utilization``
of a ``zero input`` layer, ``k_out``, ``rank`` and ``utilization`` of a ``zero output`` one.

Only ``ok`` layers count in the MLU (and only if they are not flagged as patch embedding or head). A
``too few samples`` layer is excluded too: its ``k_in <= n_samples`` bounds ``u`` by ``n_samples /
min(d_in, d_out)``, a property of the run rather than of the network, and averaging it into the MLU would
make the MLU depend on how many images were used.
"""

from __future__ import annotations

OK = "ok"
NOT_REACHED = "not reached"
NOT_EXACT = "not exact"
TOO_FEW_SAMPLES = "too few samples"
NOT_APPLICABLE = "not applicable"
FIXED_INPUT = "fixed input"
ZERO_INPUT = "zero input"
ZERO_OUTPUT = "zero output"

STATUSES = (OK, NOT_REACHED, NOT_EXACT, FIXED_INPUT, ZERO_INPUT, ZERO_OUTPUT, TOO_FEW_SAMPLES, NOT_APPLICABLE)
FLAGGED_STATUSES = (NOT_REACHED, NOT_EXACT, FIXED_INPUT, ZERO_INPUT, ZERO_OUTPUT, TOO_FEW_SAMPLES)
"""Statuses that withhold a layer's utilization from the MLU and are named in a run's warnings."""

UNDEFINED_K = {ZERO_INPUT: ("k_in", "k_out"), ZERO_OUTPUT: ("k_out",)}
"""Statuses whose ``k`` is undefined, and which: those numbers (and ``rank``, ``utilization``) are NaN."""


def status_warnings(rows: list[tuple[str, str, str]], limit: int = 8) -> list[str]:
    """One warning line per flagged status from ``(layer, status, reason)`` rows, naming the layers."""
    lines = []
    for status in FLAGGED_STATUSES:
        hits = [(name, reason) for name, s, reason in rows if s == status]
        if not hits:
            continue
        shown = ", ".join(f"{name} ({reason})" if reason else name for name, reason in hits[:limit])
        more = f", and {len(hits) - limit} more" if len(hits) > limit else ""
        noun = "layer" if len(hits) == 1 else "layers"
        lines.append(f"{len(hits)} {noun} {status}, not counted in the MLU: {shown}{more}")
    return lines
