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


def _int_attr(obj: object, name: str) -> int:
    value = getattr(obj, name, 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class TokenLayout:
    """Where a model's tokens sit in its sequences: ``prefix`` tokens (class at ``cls_index``, registers at
    ``registers = (start, stop)``) before the patches, which lie row-major on ``grid``. Models without a
    token sequence (CNNs) have the empty layout."""

    prefix: int = 0
    cls_index: int | None = None
    registers: tuple[int, int] = (0, 0)
    grid: tuple[int, int] | None = None

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> "TokenLayout":
        """From timm's attributes: ``num_prefix_tokens``, ``num_reg_tokens``, ``cls_token`` (None without a
        class token; timm puts class, then distillation, then register tokens before the patches) and
        ``patch_embed.grid_size``."""
        prefix = _int_attr(model, "num_prefix_tokens")
        registers = min(_int_attr(model, "num_reg_tokens"), prefix)
        has_cls = isinstance(getattr(model, "cls_token", None), torch.Tensor)
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        try:
            grid = tuple(int(g) for g in grid) if grid is not None else None
        except (TypeError, ValueError):
            grid = None
        if grid is not None and len(grid) != 2:
            grid = None
        return cls(prefix=prefix, cls_index=0 if has_cls and prefix > registers else None,
                   registers=(prefix - registers, prefix), grid=grid)

    @property
    def n_registers(self) -> int:
        return self.registers[1] - self.registers[0]

    @property
    def n_patches(self) -> int | None:
        return None if self.grid is None else self.grid[0] * self.grid[1]

    def check(self, token_set: TokenSet, model_id: str) -> None:
        """Refuse a token set the model cannot have (before any data is read)."""
        if token_set.kind == "cls" and self.cls_index is None:
            raise SettingsError(f"token set 'cls' needs a class token, and {model_id} has none "
                                f"(use 'patch' or 'all')")


@dataclass(frozen=True)
class Vectors:
    """One call's input vectors grouped by image, ``rows: (B, T, d)``, and what they are (module docstring):
    ``kind`` is ``sequence``, ``patches``, ``grid``, ``pooled`` or ``grouped`` (several groups per image,
    batch-major, e.g. attention windows); ``grid`` is the spatial grid of ``patches``/``grid`` vectors."""

    rows: torch.Tensor
    kind: str
    grid: tuple[int, int] | None = None


def arrange(x: torch.Tensor, rows: torch.Tensor, geometry, images: int, layout: TokenLayout) -> Vectors | None:
    """Group one call's vectors by image. ``x`` is the tensor the weight multiplies, ``rows`` its vectors as
    :func:`analysis.capture.rows_per_image` gives them, ``geometry`` the convolution's (None for a linear
    layer) and ``images`` the batch's image count. None when the vectors cannot be attributed to images."""
    groups, d = rows.shape[0], rows.shape[-1]
    if geometry is not None:
        if groups == images:
            return Vectors(rows, "grid", geometry.output_grid(x.shape[-2], x.shape[-1]))
    elif x.dim() == 4 and groups == images:
        return Vectors(rows, "grid", (int(x.shape[1]), int(x.shape[2])))
    elif x.dim() == 3 and (groups == images or (x.shape[1] == images and x.shape[0] % max(images, 1) != 0)):
        if groups != images:  # sequence-first (T, B, d), as nn.MultiheadAttention without batch_first (a first
            # axis that is a multiple of the batch is read as batch-major groups, e.g. attention windows)
            rows = x.transpose(0, 1)
        per_image = rows.shape[1]
        if per_image == 1:
            return Vectors(rows, "pooled")
        if layout.n_patches is not None and per_image == layout.prefix + layout.n_patches:
            return Vectors(rows, "sequence", layout.grid)
        if layout.n_patches is not None and per_image == layout.n_patches:
            return Vectors(rows, "patches", layout.grid)
        return Vectors(rows, "grouped")
    elif x.dim() <= 2 and groups == images:
        return Vectors(rows, "pooled")
    if images > 0 and groups % images == 0:
        return Vectors(rows.reshape(images, -1, d), "grouped")
    return None


def _centre_indices(grid: tuple[int, int], fraction: float, offset: int = 0) -> tuple[list[int], str]:
    h, w = grid
    ch, cw = max(1, math.ceil(fraction * h)), max(1, math.ceil(fraction * w))
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    index = [offset + (r0 + i) * w + (c0 + j) for i in range(ch) for j in range(cw)]
    return index, f"centre {ch}x{cw} of {h}x{w}"


class TokenSelector:
    """Applies a :class:`TokenSet` to each call's :class:`Vectors` (module docstring, table of rules).

    :attr:`rules` maps a layer to the words for what it kept; :attr:`problems` to why the set cannot be
    located among its vectors (such a layer accumulates nothing and gets status "not exact")."""

    def __init__(self, token_set: TokenSet | str = "all", layout: TokenLayout | None = None) -> None:
        self.token_set = TokenSet.parse(token_set)
        self.layout = layout or TokenLayout()
        self.rules: dict[str, str] = {}
        self.problems: dict[str, str] = {}

    def select(self, name: str, vectors: Vectors) -> torch.Tensor | None:
        """The kept vectors ``(B, t, d)`` (``t`` may be 0), or None when the set cannot be located."""
        rows, kind = vectors.rows, vectors.kind
        per_image = rows.shape[1]
        token_set, layout = self.token_set, self.layout
        if token_set.kind == "all":
            return self._keep(name, rows, f"all {per_image} per image")
        if kind == "pooled":
            return self._keep(name, rows, "one pooled vector per image (token sets do not apply)")
        if token_set.kind == "no-outliers":
            return self._drop_outliers(name, rows, token_set.fraction)
        prefix = layout.prefix if kind == "sequence" else 0
        if kind == "grouped":
            if token_set.kind == "patch" and layout.prefix == 0:
                return self._keep(name, rows, f"all {per_image} per image (the model has no prefix tokens)")
            if token_set.kind == "no-registers" and layout.n_registers == 0:
                return self._keep(name, rows, f"all {per_image} per image (the model has no registers)")
            return self._problem(name, f"this layer's {per_image} vectors per image are not the model's token "
                                       f"sequence or a spatial grid, so '{token_set.spec}' cannot be located")
        if token_set.kind == "cls":
            if kind != "sequence":
                return self._keep(name, rows[:, :0], "no class token at this layer")
            return self._keep(name, rows[:, layout.cls_index: layout.cls_index + 1], "class token")
        if token_set.kind == "patch":
            return self._keep(name, rows[:, prefix:], f"{per_image - prefix} patch vectors per image")
        if token_set.kind == "no-registers":
            if kind != "sequence" or layout.n_registers == 0:
                return self._keep(name, rows, f"all {per_image} per image (no registers here)")
            start, stop = layout.registers
            keep = [i for i in range(per_image) if not start <= i < stop]
            return self._keep(name, rows[:, keep], f"{len(keep)} per image ({stop - start} registers dropped)")
        index, words = _centre_indices(vectors.grid, token_set.fraction, prefix)
        return self._keep(name, rows[:, index], words)

    def _keep(self, name: str, rows: torch.Tensor, rule: str) -> torch.Tensor:
        self.rules.setdefault(name, rule)
        return rows

    def _problem(self, name: str, reason: str) -> None:
        self.problems.setdefault(name, reason)
        self.rules.setdefault(name, "cannot be located")
        return None

    def _drop_outliers(self, name: str, rows: torch.Tensor, fraction: float) -> torch.Tensor:
        """Per image, all but the ``round(fraction * T)`` vectors of largest Euclidean norm (ties: lower index
        kept first)."""
        per_image = rows.shape[1]
        dropped = int(math.floor(fraction * per_image + 0.5))
        if dropped == 0:
            return self._keep(name, rows, f"all {per_image} per image (top {fraction:.3g} rounds to none)")
        norms = torch.linalg.vector_norm(rows.float(), dim=-1)
        order = torch.argsort(norms, dim=1, stable=True)[:, : per_image - dropped]
        kept = torch.gather(rows, 1, order.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))
        return self._keep(name, kept, f"{per_image - dropped} of {per_image} per image (top {dropped} by norm dropped)")
