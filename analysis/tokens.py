"""Which input vectors of a layer count: token sets (a setting, part of the cache key).

A layer's input vectors for one image come from :func:`analysis.capture.rows_per_image` as ``(T, d)``:
every token of a ViT's sequence, every spatial position's unfolded patch of a convolution. A token set keeps
a subset of them before they enter the second moment:

==================  ================================================================================
spec                keeps
==================  ================================================================================
``all``             every vector (the default)
``cls``             the class token only (index 0 of the sequence); models without one are refused
``patch``           the patch tokens only (drops class, distillation and register tokens)
``no-registers``    every token but the register tokens (the same as ``all`` without registers)
``no-outliers:Q``   per image and layer, all but the ``round(Q/100 * T)`` vectors of largest norm
``centre:F``        the central ``ceil(F h) x ceil(F w)`` positions of each spatial grid (conv
                    positions, patch tokens); prefix tokens are dropped
==================  ================================================================================

Where the vectors of a layer come from is read from their shape and the model's token layout
(:class:`TokenLayout`, from timm's ``num_prefix_tokens``/``num_reg_tokens``/``cls_token``/``patch_embed``):

- a **sequence** layer sees ``T = prefix + patches`` vectors per image in timm's order (class token,
  distillation token, registers, then patches row-major);
- a **patch grid** layer sees ``T = patches`` (a patch embedding unfolded, a block without prefix tokens);
- a **spatial grid** layer is a convolution (its output grid) or a linear layer on ``(B, H, W, C)``;
- a **pooled** layer sees one vector per image (a classifier head): no token set applies, it keeps it;
- anything else is **unlocated**: a token set other than ``all`` cannot say which of its vectors belong to
  the set, so the layer's status says so and it shows no number (never a guess).

Each layer's rule is recorded (:attr:`TokenSelector.rules`) and shown in the table (column ``tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SettingsError

KINDS = ("all", "cls", "patch", "no-registers", "no-outliers", "centre")
LABELS = {
    "all": "all tokens",
    "cls": "class token only",
    "patch": "patch tokens only",
    "no-registers": "all tokens but registers",
}
DEFAULT_CENTRE = 0.5


@dataclass(frozen=True)
class TokenSet:
    """A parsed token-set spec (see the module docstring). ``fraction``: Q/100 or F."""

    kind: str = "all"
    fraction: float | None = None

    @classmethod
    def parse(cls, text: object) -> "TokenSet":
        if isinstance(text, TokenSet):
            return text
        if not isinstance(text, str) or not text.strip():
            raise SettingsError(f"token set must be a string such as 'all', 'cls', 'patch', got {text!r}")
        name, _, arg = text.strip().lower().partition(":")
        name = {"center": "centre", "class": "cls", "patches": "patch", "no-register": "no-registers"}.get(name, name)
        if name not in KINDS:
            raise SettingsError(f"unknown token set {text!r}; choose one of all, cls, patch, no-registers, "
                                f"no-outliers:Q (percent), centre[:F] (side fraction)")
        if name in ("no-outliers", "centre"):
            if not arg and name == "centre":
                return cls(name, DEFAULT_CENTRE)
            try:
                value = float(arg)
            except ValueError:
                raise SettingsError(f"token set {text!r} needs a number: no-outliers:Q with 0 < Q < 100, "
                                    f"centre:F with 0 < F <= 1") from None
            fraction = value / 100.0 if name == "no-outliers" else value
            if not (0.0 < fraction < 1.0 or (name == "centre" and fraction == 1.0)) or math.isnan(fraction):
                raise SettingsError(f"token set {text!r} is out of range: no-outliers:Q needs 0 < Q < 100, "
                                    f"centre:F needs 0 < F <= 1")
            return cls(name, fraction)
        if arg:
            raise SettingsError(f"token set {name!r} takes no argument, got {text!r}")
        return cls(name, None)

    @property
    def spec(self) -> str:
        """Canonical text (what the cache key and the CLI use)."""
        if self.kind == "no-outliers":
            return f"no-outliers:{_number(self.fraction * 100)}"
        if self.kind == "centre":
            return f"centre:{_number(self.fraction)}"
        return self.kind

    @property
    def label(self) -> str:
        """Words for titles and descriptions."""
        if self.kind == "no-outliers":
            return f"tokens without the top {_number(self.fraction * 100)} % by norm"
        if self.kind == "centre":
            return f"centre crop ({_number(self.fraction)} of each side)"
        return LABELS[self.kind]


def _number(value: float) -> str:
    return f"{value:g}"


def label(spec: str | None) -> str:
    """:attr:`TokenSet.label` of a stored spec (``"all"`` when absent)."""
    return TokenSet.parse(spec or "all").label
