"""The one list of layer kinds: name, human label, data-flow order, and whether a kind counts in the MLU.

Every other part (the adapters in :mod:`analysis.models.layers`, the charts' legends and heatmap rows, the
CLI and the pages) derives from :class:`Kind`. The order of the members is the order in which data meets
the layers of a network (stem first, classifier last): legends and heatmap rows follow it.

Adding a kind is one line below (and, optionally, one colour in ``analysis/plots/charts.py``; unknown kinds get a stable
fallback colour).
"""

from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """A layer kind. Members compare equal to their name strings (``Kind.ATTN_QKV == "attn_qkv"``)."""

    label: str
    counted: bool
    applicable: bool

    def __new__(cls, name: str, label: str, counted: bool = True, applicable: bool = True) -> "Kind":
        member = str.__new__(cls, name)
        member._value_ = name
        member.label = label
        member.counted = counted  # False: reported but never part of the MLU
        member.applicable = applicable  # False: listed, not analysed ("not applicable")
        return member

    PATCH_EMBED = ("patch_embed", "patch embedding / stem", False)
    POS_EMBED = ("pos_embed", "position encoding MLP", False)
    ATTN_QKV = ("attn_qkv", "attention q,k,v")
    ATTN_PROJ = ("attn_proj", "attention output")
    CLASS_ATTN_QKV = ("class_attn_qkv", "class-attention q,k,v")
    CLASS_ATTN_PROJ = ("class_attn_proj", "class-attention output")
    TOKEN_MIX_FC1 = ("token_mix_fc1", "token-mixing expand")
    TOKEN_MIX_FC2 = ("token_mix_fc2", "token-mixing contract")
    TOKEN_MIX = ("token_mix", "token-mixing linear")
    MLP_FC1 = ("mlp_fc1", "MLP / channel-mixing expand (fc1)")
    MLP_FC2 = ("mlp_fc2", "MLP / channel-mixing contract (fc2)")
    CONV = ("conv", "spatial convolution")
    POINTWISE_CONV = ("pointwise_conv", "1x1 convolution")
    SQUEEZE_EXCITE = ("squeeze_excite", "squeeze-excitation")
    DOWNSAMPLE = ("downsample", "downsampling / transition")
    LINEAR = ("linear", "linear")
    GROUPED_CONV = ("grouped_conv", "grouped convolution", False, False)
    HEAD_SIDE = ("head_side", "after the last block (head convs, pre-logits)", False)
    HEAD = ("head", "classifier head", False)

    def __str__(self) -> str:
        return self.value

    @property
    def order(self) -> int:
        """Position in data-flow order (legends, heatmap rows)."""
        return _ORDER[self.value]

    @classmethod
    def of(cls, name: str) -> "Kind | None":
        """The kind named ``name``, or None for a name this list does not know."""
        try:
            return cls(name)
        except ValueError:
            return None


_ORDER = {kind.value: i for i, kind in enumerate(Kind)}

KIND_NAMES: tuple[str, ...] = tuple(kind.value for kind in Kind)
"""Every kind name in data-flow order."""

FLAGGED_KINDS = frozenset(k.value for k in Kind if not k.counted and k.applicable)
"""Kinds that are analysed and reported but never counted in the MLU (stem, position MLP, head)."""

NOT_APPLICABLE_KINDS = frozenset(k.value for k in Kind if not k.applicable)
"""Kinds that are listed but not analysed."""


def kind_label(name: str) -> str:
    """Human label of a kind name (the name itself for an unknown kind)."""
    kind = Kind.of(name)
    return kind.label if kind is not None else name


def kinds_in_order(names) -> list[str]:
    """Distinct kind names, known ones in data-flow order, unknown ones after them alphabetically."""
    present = set(str(n) for n in names)
    known = [k for k in KIND_NAMES if k in present]
    return known + sorted(present - set(KIND_NAMES))


def counts_in_mlu(name: str) -> bool:
    """Whether a layer of this kind is part of the MLU (unknown kinds count, like ``linear``)."""
    kind = Kind.of(name)
    return kind is None or (kind.counted and kind.applicable)


def is_applicable(name: str) -> bool:
    kind = Kind.of(name)
    return kind is None or kind.applicable
