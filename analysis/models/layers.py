"""Which layers of a model are analysed, and what each one is.

One small adapter class per architecture family (the SliceGPT pattern) names and classifies layers:

==================  ===============================================================================
kind                meaning
==================  ===============================================================================
``attn_qkv``        attention input projection (fused q,k,v, or one of q/k/v)
``attn_proj``       attention output projection
``mlp_fc1``         first MLP layer (expansion)
``mlp_fc2``         second MLP layer (contraction)
``conv``            spatial convolution (k x k, k > 1), analysed on unfolded patches
``pointwise_conv``  1 x 1 convolution, analysed on channel vectors
``linear``          any other Linear layer
``patch_embed``     the patch embedding / stem convolution (reported, flagged: not in MLU by default)
``head``            the classifier (reported, flagged: not in MLU by default)
``grouped_conv``    depthwise / grouped convolution: listed, "not applicable" (each group is tiny)
==================  ===============================================================================

Layer names are the module's qualified name in the model (``blocks.3.attn.qkv``), as in TransformerLens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Iterator

from torch import nn

FLAGGED_KINDS = frozenset({"patch_embed", "head"})
NOT_APPLICABLE_KINDS = frozenset({"grouped_conv"})


@dataclass(frozen=True)
class LayerSpec:
    """One analysed (or listed) layer: ``y = W x + b`` with W of shape ``d_out x d_in``.

    For a convolution ``d_in = in_channels * kh * kw`` (the unfolded patch), ``d_out = out_channels``.
    ``block`` is the depth index of the transformer block / CNN block the layer sits in (None outside).
    ``in_mlu`` is False for flagged layers (patch embedding, classifier head) and not-applicable ones.
    """

    name: str
    kind: str
    block: int | None
    module: nn.Module
    d_in: int
    d_out: int
    has_bias: bool

    @property
    def in_mlu(self) -> bool:
        return self.kind not in FLAGGED_KINDS and self.kind not in NOT_APPLICABLE_KINDS

    @property
    def applicable(self) -> bool:
        return self.kind not in NOT_APPLICABLE_KINDS


def weight_matrix(module: nn.Module):
    """The layer's weight as a ``d_out x d_in`` matrix (conv kernels flattened channel-major, like unfold)."""
    return module.weight.reshape(module.weight.shape[0], -1)


def _dims(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight
    return int(w[0].numel()), int(w.shape[0])


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def analysable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every Linear and Conv2d (timm's Conv2dSame subclasses Conv2d) in module order."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name, module


class ArchitectureAdapter:
    """Base adapter: names and classifies the layers of one architecture family."""

    family: ClassVar[str] = "generic"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def classify(self, name: str, module: nn.Module, model: nn.Module) -> str:
        """The layer kind of one Linear/Conv2d (see the module docstring)."""
        raise NotImplementedError

    def block_index(self, name: str) -> int | None:
        """Depth index of the block containing ``name`` (None outside blocks)."""
        match = re.match(r"^(?:blocks|layers|stages)\.(\d+)\.", name)
        return int(match.group(1)) if match else None

    def describe(self, model: nn.Module) -> list[LayerSpec]:
        specs = []
        for name, module in analysable_modules(model):
            parent_name, _, child = name.rpartition(".")
            owner = model.get_submodule(parent_name) if child in ("reduce", "expand") else None
            thin = hasattr(owner, "factorized_from")  # the thin-pair protocol of analysis.compression
            original_kind = getattr(owner, "factorized_from", None)  # a thin layer keeps its original's kind
            kind = "grouped_conv" if _is_grouped(module) else (
                original_kind or self.classify(parent_name if thin else name, module, model))
            d_in, d_out = _dims(module)
            specs.append(
                LayerSpec(
                    name=name,
                    kind=kind,
                    block=self.block_index(name),
                    module=module,
                    d_in=d_in,
                    d_out=d_out,
                    has_bias=getattr(module, "bias", None) is not None,
                )
            )
        return specs


def _conv_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1):
        return "pointwise_conv"
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


def _is_classifier(name: str, model: nn.Module) -> bool:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            classifier = get_classifier()
        except Exception:  # some timm models raise when the head was removed
            classifier = None
        if isinstance(classifier, nn.Module):
            for qualified, module in model.named_modules():
                if module is classifier:
                    return name == qualified or name.startswith(qualified + ".")
    return name in {"head", "fc", "classifier", "head.fc"}


class ViTAdapter(ArchitectureAdapter):
    """timm ViT / DeiT / DINOv2-style ViTs: ``patch_embed``, ``blocks.N.{attn,mlp}.*``, ``head``."""

    family = "vit"
    _NAMES = {
        "attn.qkv": "attn_qkv",
        "attn.q": "attn_qkv",
        "attn.k": "attn_qkv",
        "attn.v": "attn_qkv",
        "attn.q_proj": "attn_qkv",
        "attn.k_proj": "attn_qkv",
        "attn.v_proj": "attn_qkv",
        "attn.kv": "attn_qkv",
        "attn.proj": "attn_proj",
        "attn.out_proj": "attn_proj",
        "mlp.fc1": "mlp_fc1",
        "mlp.fc1_g": "mlp_fc1",
        "mlp.fc1_x": "mlp_fc1",
        "mlp.w12": "mlp_fc1",
        "mlp.fc2": "mlp_fc2",
        "mlp.w3": "mlp_fc2",
    }

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return hasattr(model, "blocks") and hasattr(model, "patch_embed")

    def classify(self, name: str, module: nn.Module, model: nn.Module) -> str:
        if name.startswith("patch_embed."):
            return "patch_embed"
        if _is_classifier(name, model):
            return "head"
        suffix = re.sub(r"^blocks\.\d+\.", "", name)
        return self._NAMES.get(suffix, _conv_kind(module))


class _NumberedBlocksAdapter(ArchitectureAdapter):
    """Blocks named by a pattern (``layer2.1``, ``blocks.3.0``) are numbered in depth order across stages."""

    BLOCK_PATTERN: ClassVar[str] = ""

    def __init__(self, model: nn.Module | None = None) -> None:
        self._block_order: dict[str, int] = {}
        if model is not None:
            names = [n for n, _ in model.named_modules() if re.fullmatch(self.BLOCK_PATTERN, n)]
            self._block_order = {n: i for i, n in enumerate(names)}

    def block_index(self, name: str) -> int | None:
        match = re.match(rf"^({self.BLOCK_PATTERN})\.", name)
        return self._block_order.get(match.group(1)) if match else None


class ResNetAdapter(_NumberedBlocksAdapter):
    """timm ResNets: stem ``conv1``, ``layerS.B.convN`` and ``downsample.0``, head ``fc``.

    Blocks are numbered in depth order across the four stages (``layer1.0`` is block 0).
    """

    family = "resnet"
    BLOCK_PATTERN = r"layer\d+\.\d+"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return all(hasattr(model, attr) for attr in ("conv1", "layer1", "layer4", "fc"))

    def classify(self, name: str, module: nn.Module, model: nn.Module) -> str:
        if name.startswith("conv1"):
            return "patch_embed"
        if _is_classifier(name, model):
            return "head"
        return _conv_kind(module)


class EfficientNetAdapter(_NumberedBlocksAdapter):
    """timm EfficientNet / MobileNet family: ``conv_stem``, ``blocks.S.B.*``, ``conv_head``, ``classifier``.

    Blocks are numbered in depth order across stages (``blocks.0.0`` is block 0). Depthwise convolutions
    are listed as not applicable; squeeze-excitation 1x1 convolutions are pointwise layers.
    """

    family = "efficientnet"
    BLOCK_PATTERN = r"blocks\.\d+\.\d+"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return hasattr(model, "conv_stem") and hasattr(model, "blocks")

    def classify(self, name: str, module: nn.Module, model: nn.Module) -> str:
        if name.startswith("conv_stem"):
            return "patch_embed"
        if _is_classifier(name, model):
            return "head"
        return _conv_kind(module)


class GenericAdapter(ArchitectureAdapter):
    """Any module made of Linear/Conv2d layers: the first conv is the stem, the classifier is the head."""

    family = "generic"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return True

    def __init__(self, model: nn.Module | None = None) -> None:
        self._stem: str | None = None
        if model is not None:
            for name, module in analysable_modules(model):
                self._stem = name if isinstance(module, nn.Conv2d) else None
                break

    def block_index(self, name: str) -> int | None:
        match = re.search(r"(?:^|\.)(\d+)\.", name)
        return int(match.group(1)) if match else None

    def classify(self, name: str, module: nn.Module, model: nn.Module) -> str:
        if name == self._stem:
            return "patch_embed"
        if _is_classifier(name, model):
            return "head"
        return _conv_kind(module)


ADAPTERS: tuple[type[ArchitectureAdapter], ...] = (ViTAdapter, ResNetAdapter, EfficientNetAdapter, GenericAdapter)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The first adapter whose ``matches`` accepts the model (Generic always does)."""
    for adapter_cls in ADAPTERS:
        if adapter_cls.matches(model):
            try:
                return adapter_cls(model)  # type: ignore[call-arg]
            except TypeError:
                return adapter_cls()
    raise AssertionError("GenericAdapter matches every model")


def describe_layers(model: nn.Module) -> list[LayerSpec]:
    """Every Linear/Conv2d layer of ``model`` with its kind, block and dimensions, in module order."""
    return adapter_for(model).describe(model)
