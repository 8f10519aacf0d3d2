"""Which layers of a model are analysed, what each one is, and where it sits in the data flow.

Every ``nn.Linear`` and ``nn.Conv2d`` (timm's ``Conv2dSame``/``StdConv2d`` subclass it) is a layer
``y = W x + b``, and so is the packed q/k/v projection of an ``nn.MultiheadAttention`` (:class:`InProjection`,
``<attention>.in_proj``). Its kind (:class:`analysis.models.kinds.Kind`) comes from generic rules, read from the
model itself rather than from per-name if-chains:

- **head**: the classifier the model names itself (timm ``get_classifier()``, which may be a tuple for
  distilled models; ``pretrained_cfg["classifier"]``, a name or a tuple such as ``("head", "head_dist")``),
  every layer under it (LeViT's BN+Linear heads);
- **stem** (``patch_embed``): every layer called before the first block (patch embedding, conv stem);
- **head_side**: every layer called after the last block (``conv_head``, pre-logits, ``head.fc1``);
- the nearest enclosing module decides the rest: an attention module (class name ending in ``Attention``,
  ``Attn``, ``XCA``..., or by structure: a q/k/v child with an integer ``num_heads``/``heads`` or with an
  output projection, :func:`is_attention`) makes its ``q/k/v/qkv/kv/in_proj`` children ``attn_qkv`` and
  ``proj``/``out_proj`` ``attn_proj`` (``class_attn_*`` in CaiT/XCiT class attention and CrossViT's CLS
  cross-attention); an MLP module (``Mlp``, ``ConvMlp``, ``GluMlp``, ``LevitMlp``..., or by structure: its
  own Linears widen and narrow back, :func:`is_mlp`) makes its last layer ``mlp_fc2`` and the others
  ``mlp_fc1``, and ``token_mix_*`` when the path names tokens (``mlp_tokens``, ``linear_tokens``,
  ``rnn_tokens``); squeeze-excitation modules give ``squeeze_excite``; ``downsample``/``reduction``/
  ``transition``/``pool``/``shortcut``/HRNet ``fuse_layers`` give ``downsample``; relative-position MLPs
  give ``pos_embed``;
- otherwise a 1x1 convolution is ``pointwise_conv``, a k x k one ``conv``, a grouped one ``grouped_conv``
  (not applicable), anything else ``linear``.

Depth: ``block`` is the index of the layer's block (or other unit) in forward order and ``block_label`` its
``stage.block`` name for hierarchical models (``"2.3"``), found from the module tree and the call order for
any family (:mod:`analysis.models.blocks`); a layer counts in the MLU only inside a block
(:attr:`LayerSpec.in_mlu`), so a model without blocks counts nothing (:attr:`Blocks.reason` says why). A
family these rules do not fit gets a small :class:`ArchitectureAdapter` subclass registered by its model
class name (timm style, see :data:`ADAPTERS`) that overrides :meth:`ArchitectureAdapter.classify_extra` or
:meth:`ArchitectureAdapter.find_blocks`.

Layer names are the module's qualified name in the model (``blocks.3.attn.qkv``), as in TransformerLens.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator

from torch import nn

from .blocks import HEAD_SIDE, STEM, Blocks, find_blocks
from .kinds import FLAGGED_KINDS, NOT_APPLICABLE_KINDS, Kind, counts_in_mlu, is_applicable

__all__ = [
    "ADAPTERS", "Blocks", "FLAGGED_KINDS", "NOT_APPLICABLE_KINDS", "ArchitectureAdapter", "LayerSpec",
    "Coverage", "adapter_for", "classifier_names", "coverage", "describe_layers", "describe_model", "is_attention",
    "is_mlp", "register_adapter",
    "select_layers", "weight_matrix",
]


@dataclass(frozen=True)
class LayerSpec:
    """One analysed (or listed) layer: ``y = W x + b`` with W of shape ``d_out x d_in``.

    For a convolution ``d_in = in_channels * kh * kw`` (the unfolded patch), ``d_out = out_channels``.
    ``block`` is the depth index (forward order) of the block the layer sits in (None outside blocks);
    ``block_label`` names it as ``stage.block`` for hierarchical models (``"2.3"``), ``"5"`` for flat ones.
    ``in_mlu`` is False for flagged kinds (stem, head, ...) and not-applicable ones.
    """

    name: str
    kind: str
    block: int | None
    module: nn.Module
    d_in: int
    d_out: int
    has_bias: bool
    block_label: str = ""

    @property
    def in_mlu(self) -> bool:
        """Counted: a kind that counts, inside a block (DESIGN.md: every counted layer sits in a block)."""
        return counts_in_mlu(self.kind) and self.block is not None

    @property
    def applicable(self) -> bool:
        return is_applicable(self.kind)

    @property
    def width(self) -> int:
        """The larger side of W: the statistics hold ``d_in x d_in`` and ``d_out x d_out`` matrices."""
        return max(self.d_in, self.d_out)

    @classmethod
    def of(cls, name: str, module: nn.Module, kind: str = "linear") -> "LayerSpec":
        """A spec of ``module`` outside any block (its dimensions and bias read from the module)."""
        d_in, d_out = _dims(module)
        return cls(name=name, kind=kind, block=None, module=module, d_in=d_in, d_out=d_out,
                   has_bias=getattr(module, "bias", None) is not None)


def weight_matrix(module: nn.Module):
    """The layer's weight as a ``d_out x d_in`` matrix (conv kernels flattened channel-major, like unfold)."""
    return module.weight.reshape(module.weight.shape[0], -1)


def _dims(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight
    return int(w[0].numel()), int(w.shape[0])


class InProjection(nn.Linear):
    """The packed q, k, v projection of an ``nn.MultiheadAttention`` as a layer of its own.

    ``nn.MultiheadAttention`` keeps it as two tensors of its own (``in_proj_weight``, ``3 E x E``, rows
    part-major ``[q; k; v]``, and ``in_proj_bias``) and applies it inside ``F.multi_head_attention_forward``
    as ``F.linear(x, in_proj_weight, in_proj_bias)`` when query, key and value are one tensor. This view
    shares those very Parameters (nothing is copied, the model is not changed) and is named
    ``<attention>.in_proj``; it is never called, so :mod:`analysis.capture` finds every use of its weight as a
    functional call. Separate q/k/v weights (``kdim``/``vdim`` different from ``embed_dim``) are not viewed."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        nn.Module.__init__(self)
        weight = attention.in_proj_weight
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self.weight = weight
        self.register_parameter("bias", attention.in_proj_bias)


def functional_layers(name: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Layers a module applies with its own tensors rather than through child modules (``in_proj`` of an
    ``nn.MultiheadAttention`` with packed q, k, v weights), as ``(qualified name, view)``."""
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        yield (f"{name}.in_proj" if name else "in_proj"), InProjection(module)


def analysable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every Linear and Conv2d (timm's Conv2dSame subclasses Conv2d) in module order, and the layers modules
    apply with their own tensors (:func:`functional_layers`) before the module's children."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name, module
        yield from functional_layers(name, module)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module (or :func:`functional_layers` view) of layer ``name``; AttributeError when there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        parent, _, _child = name.rpartition(".")
        for layer_name, layer in functional_layers(parent, model.get_submodule(parent)):
            if layer_name == name:
                return layer
        raise


# ------------------------------------------------------------------------------------------ heads
def _modules_of(obj) -> list[nn.Module]:
    if isinstance(obj, (tuple, list, nn.ModuleList)):
        return [m for item in obj for m in _modules_of(item)]
    return [obj] if isinstance(obj, nn.Module) else []


def classifier_names(model: nn.Module) -> list[str]:
    """Qualified names of the classifier modules the model names itself (empty when it has none).

    Sources: timm ``get_classifier()`` (a module, or a tuple for distilled models), the pretrained
    config's ``classifier`` (a name or tuple of names). A module without parameters (``Identity`` of a
    headless model) is not a classifier. Without either source, the conventional names
    ``head``/``fc``/``classifier``/``head_dist``/``heads`` (torchvision's ViT) are used.
    """
    found: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            found.extend(_modules_of(get_classifier()))
        except Exception:  # some timm models raise when the head was removed
            pass
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    configured = cfg.get("classifier") if isinstance(cfg, dict) else None
    for name in (configured,) if isinstance(configured, str) else tuple(configured or ()):
        try:
            found.append(model.get_submodule(name))
        except (AttributeError, TypeError):
            pass
    ids = {id(m) for m in found if any(True for _ in m.parameters())}
    names = [n for n, m in model.named_modules() if id(m) in ids and n]
    if names or callable(get_classifier):
        return names
    return [n for n, _ in model.named_modules() if n in {"head", "fc", "classifier", "head.fc", "head_dist", "heads"}]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------------------------------ kinds
_ATTENTION_CLASS = re.compile(r"(Attention|Attn|XCA)(Cl|2d|1d|Downsample)?$")
_CLASS_ATTENTION_CLASS = re.compile(r"^(ClassAttn|ClassAttention|CrossAttention)$")
_MLP_CLASS = re.compile(r"(Mlp|FeedForward|SwiGLU|FFN)(WithNorm|2d|1d)?$")
_SE_CLASS = re.compile(r"(SqueezeExcite|SEModule|SqueezeExcitation|EffectiveSE|SEBlock|SELayer)")
_POS_PARTS = re.compile(r"^(cpb_mlp|rpb_mlp|pos_embed|rel_pos|pos_block|rel_pos_mlp)$")
_POS_CLASS = re.compile(r"(PositionalEncoding|RelPosMlp|PosConv)")
_DOWN_PARTS = re.compile(r"^(downsample|downsamp_modules|reduction|transition\d*|fuse_layers|pool|shortcut|patch_merging)$")
_DOWN_CLASS = re.compile(r"(Downsample|PatchMerging|Transition)")
_QKV_PARTS = {"qkv", "q", "k", "v", "kv", "qk", "wq", "wk", "wv", "q_proj", "k_proj", "v_proj", "query", "key",
              "value", "to_qkv", "to_q", "to_k", "to_v", "in_proj"}
_PROJ_PARTS = {"proj", "out_proj", "o_proj", "out", "to_out"}


def _conv_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return Kind.GROUPED_CONV.value
        return Kind.POINTWISE_CONV.value if tuple(module.kernel_size) == (1, 1) else Kind.CONV.value
    return Kind.LINEAR.value


def _head_count(module: nn.Module) -> int | None:
    for attr in ("num_heads", "heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _direct_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The analysable children of ``module`` (and its functional views), in module order."""
    found = [(n, m) for n, m in module.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return list(functional_layers("", module)) + found


def is_attention(module: nn.Module) -> bool:
    """An attention module, from its class name (``...Attention``, ``...Attn``, ``XCA``) or its structure: a
    q/k/v-producing child (``qkv``, ``q``, ``kv``, ``qk``, ``in_proj`` ...) with an integer head count
    (``num_heads`` or ``heads``) or with an output projection child (``proj``, ``out_proj``...; EfficientViT's
    ``LiteMLA`` keeps no head count)."""
    if _ATTENTION_CLASS.search(type(module).__name__):
        return True
    children = {n for n, _ in module.named_children()} | {n for n, _ in functional_layers("", module)}
    return bool(children & _QKV_PARTS) and (_head_count(module) is not None or bool(children & _PROJ_PARTS))


def is_mlp(module: nn.Module) -> bool:
    """An MLP, from its class name (``Mlp``, ``FeedForward``, ``SwiGLU``, ``FFN``...) or its structure: its own
    applicable layers are Linears (depthwise convolutions may sit between them), at least two, the first
    widening its input and the last returning to that width (timm ``Mlp``, torchvision ``MLPBlock``,
    MambaOut's gated block)."""
    if _MLP_CLASS.search(type(module).__name__):
        return True
    if is_attention(module):
        return False
    layers = [m for _, m in _direct_layers(module) if not (isinstance(m, nn.Conv2d) and m.groups > 1)]
    if len(layers) < 2 or not all(isinstance(m, nn.Linear) for m in layers):
        return False
    first, last = layers[0], layers[-1]
    return first.out_features > first.in_features and last.out_features == first.in_features


class ArchitectureAdapter:
    """Names, classifies and orders the layers of one architecture family (generic rules; see the module
    docstring). Subclasses override :meth:`classify_extra` or :meth:`find_blocks` only where their family
    needs it, and register with :func:`register_adapter`."""

    family: ClassVar[str] = "generic"

    def __init__(self, model: nn.Module | None = None) -> None:
        self._model = model

    # ---- overridable hooks
    def classify_extra(self, name: str, module: nn.Module, model: nn.Module) -> str | None:
        """A family-specific kind for ``name`` (None: the generic rules decide)."""
        return None

    def find_blocks(self, model: nn.Module, layers: dict[str, nn.Module], applicable: list[str],
                    input_size: tuple[int, int, int] | None = None) -> Blocks:
        """The blocks and roles of ``layers`` (:func:`analysis.models.blocks.find_blocks`, from structure)."""
        return find_blocks(model, layers, applicable, input_size)

    # ---- generic machinery
    def classify(self, name: str, module: nn.Module, model: nn.Module, logical: list[str] | None = None) -> str:
        """The kind of layer ``name`` (its logical name for a factorized pair) from the rules above."""
        extra = self.classify_extra(name, module, model)
        if extra is not None:
            return extra
        modules = dict(model.named_modules())
        parts = name.split(".")
        tokens = any("tokens" in part for part in parts)
        for depth in range(len(parts) - 1, 0, -1):  # nearest enclosing module first
            ancestor_name = ".".join(parts[:depth])
            ancestor = modules.get(ancestor_name)
            if ancestor is None:
                continue
            part, cls = parts[depth - 1], type(ancestor).__name__
            child = parts[depth]
            if _POS_PARTS.match(part) or _POS_CLASS.search(cls):
                return Kind.POS_EMBED.value
            if is_attention(ancestor):
                class_attn = bool(_CLASS_ATTENTION_CLASS.match(cls))
                if child in _QKV_PARTS:
                    return (Kind.CLASS_ATTN_QKV if class_attn else Kind.ATTN_QKV).value
                if child in _PROJ_PARTS:
                    return (Kind.CLASS_ATTN_PROJ if class_attn else Kind.ATTN_PROJ).value
                return _conv_kind(module)
            if _MLP_CLASS.search(cls) or (depth == len(parts) - 1 and is_mlp(ancestor)):
                inside = [n for n in (logical or []) if n.startswith(ancestor_name + ".")]
                last = bool(inside) and inside[-1] == name
                if tokens:
                    return (Kind.TOKEN_MIX_FC2 if last else Kind.TOKEN_MIX_FC1).value
                return (Kind.MLP_FC2 if last else Kind.MLP_FC1).value
            if _SE_CLASS.search(cls):
                return Kind.SQUEEZE_EXCITE.value
            if _DOWN_PARTS.match(part) or _DOWN_CLASS.search(cls):
                return Kind.DOWNSAMPLE.value
        if tokens:
            return Kind.TOKEN_MIX.value
        return _conv_kind(module)

    def describe(self, model: nn.Module, input_size: tuple[int, int, int] | None = None
                 ) -> tuple[list[LayerSpec], Blocks]:
        layers = list(analysable_modules(model))
        heads = classifier_names(model)
        logical_names = []
        for name, _module in layers:
            parent_name, _, child = name.rpartition(".")
            owner = model.get_submodule(parent_name) if child in ("reduce", "expand") else None
            pair = hasattr(owner, "factorized_from")  # the thin-pair protocol of analysis.compression
            logical_names.append(parent_name if pair else name)
        distinct_logical = list(dict.fromkeys(logical_names))
        kinds = []
        for (name, module), logical in zip(layers, logical_names):
            kind_module = model.get_submodule(logical + ".reduce") if logical != name else module
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                kinds.append(Kind.GROUPED_CONV.value)
            elif _under(logical, heads):
                kinds.append(Kind.HEAD.value)
            elif logical != name and getattr(model.get_submodule(logical), "factorized_from", None):
                kinds.append(model.get_submodule(logical).factorized_from)  # a thin layer keeps its original's kind
            else:  # a factorized pair without a recorded kind is classified by its first (original-shaped) factor
                kinds.append(self.classify(logical, kind_module, model, distinct_logical))
        heads_at = {name for (name, _), kind in zip(layers, kinds) if kind == Kind.HEAD.value}
        structure = self.find_blocks(model, {n: m for n, m in layers if n not in heads_at},
                                     [n for (n, _), k in zip(layers, kinds) if is_applicable(k) and n not in heads_at],
                                     input_size)
        specs = []
        for (name, module), kind in zip(layers, kinds):
            role, unit = structure.role.get(name), structure.unit.get(name)
            if kind not in (Kind.HEAD.value, Kind.GROUPED_CONV.value):
                if role == STEM and kind != Kind.POS_EMBED.value:
                    kind = Kind.PATCH_EMBED.value
                elif role == HEAD_SIDE:
                    kind = Kind.HEAD_SIDE.value
            d_in, d_out = _dims(module)
            specs.append(LayerSpec(
                name=name, kind=kind, block=unit.index if unit else None, module=module,
                d_in=d_in, d_out=d_out, has_bias=getattr(module, "bias", None) is not None,
                block_label=unit.label if unit else "",
            ))
        return specs, structure


# ------------------------------------------------------------------------------------------ families
ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}
"""Model class name (``type(model).__name__``, or the qualified ``module.Class`` name) -> adapter class.
Unknown classes get the generic adapter."""


def register_adapter(*class_names: str):
    """Class decorator: use this adapter for models of the given class names."""

    def wrap(cls: type[ArchitectureAdapter]) -> type[ArchitectureAdapter]:
        for class_name in class_names:
            ADAPTERS[class_name] = cls
        return cls

    return wrap


def _family(name: str, *class_names: str) -> type[ArchitectureAdapter]:
    """A family that the generic rules already cover: only its name (for reports) and its classes."""
    return register_adapter(*class_names)(type(f"{name.title().replace('_', '')}Adapter", (ArchitectureAdapter,),
                                               {"family": name, "__doc__": f"{name}: generic rules."}))


ViTAdapter = _family("vit", "VisionTransformer", "VisionTransformerDistilled", "VisionTransformerRelPos")
BeitAdapter = _family("beit", "Beit")
EvaAdapter = _family("eva", "Eva")
CaitAdapter = _family("cait", "Cait")
XcitAdapter = _family("xcit", "Xcit")
TNTAdapter = _family("tnt", "TNT")
CrossViTAdapter = _family("crossvit", "CrossVit")
PiTAdapter = _family("pit", "PoolingVisionTransformer", "DistilledPoolingVisionTransformer")
SwinAdapter = _family("swin", "SwinTransformer", "SwinTransformerV2")
ConvNeXtAdapter = _family("convnext", "ConvNeXt")
MixerAdapter = _family("mlp_mixer", "MlpMixer")
SequencerAdapter = _family("sequencer", "Sequencer2d")
MaxViTAdapter = _family("maxvit", "MaxxVit")
LevitAdapter = _family("levit", "Levit", "LevitDistilled")
EfficientFormerAdapter = _family("efficientformer", "EfficientFormer", "EfficientFormerV2")
ResNetAdapter = _family("resnet", "ResNet")
ResNetV2Adapter = _family("resnetv2", "ResNetV2")
NFNetAdapter = _family("nfnet", "NormFreeNet")
RegNetAdapter = _family("regnet", "RegNet")
DenseNetAdapter = _family("densenet", "DenseNet")
HRNetAdapter = _family("hrnet", "HighResolutionNet", "HighResolutionNetFeatures")
@register_adapter("InceptionV3")
class InceptionAdapter(ArchitectureAdapter):
    """Inception v3: the grid-reduction modules (``Mixed_6a``, ``Mixed_7a``) halve the resolution with their
    stride-2 convolutions, which are therefore ``downsample`` layers; the rest follows the generic rules."""

    family = "inception"
    _REDUCTION_CLASSES = ("InceptionB", "InceptionD")

    def classify_extra(self, name: str, module: nn.Module, model: nn.Module) -> str | None:
        block = name.split(".", 1)[0]
        reduction = type(getattr(model, block, None)).__name__ in self._REDUCTION_CLASSES
        if reduction and isinstance(module, nn.Conv2d) and max(module.stride) > 1:
            return Kind.DOWNSAMPLE.value
        return None
VGGAdapter = _family("vgg", "VGG")
EfficientNetAdapter = _family("efficientnet", "EfficientNet", "MobileNetV3", "MobileNetV4")


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter registered for the model's class: under its qualified name (``torchvision.models.
    vision_transformer.VisionTransformer``, where two libraries use one class name), else its name (the
    generic one for any other model)."""
    cls = type(model)
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    return ADAPTERS.get(qualified, ADAPTERS.get(cls.__name__, ArchitectureAdapter))(model)


def describe_model(model: nn.Module, input_size: tuple[int, int, int] | None = None
                   ) -> tuple[list[LayerSpec], Blocks]:
    """Every layer of ``model`` with its kind, block and dimensions, in module order, and the block structure
    they were placed by (its ``reason`` says why no layer counts when no block was found). ``input_size``:
    ``(C, H, W)`` of the shape-only forward that reads the call order (default: the model's data config)."""
    return adapter_for(model).describe(model, input_size)


def describe_layers(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> list[LayerSpec]:
    """Every Linear/Conv2d layer of ``model`` with its kind, block and dimensions, in module order."""
    return describe_model(model, input_size)[0]


# ------------------------------------------------------------------------------------------ selection
def select_layers(
    specs: list[LayerSpec], max_width: int | None = None, patterns: Iterable[str] | None = None
) -> tuple[list[LayerSpec], dict[str, str]]:
    """The layers to analyse, and ``{name: reason}`` for applicable layers left out by the options.

    ``max_width`` skips layers whose ``max(d_in, d_out)`` exceeds it; ``patterns`` (shell globs on layer
    names, e.g. ``blocks.*.attn.qkv``) keeps only matching layers. Not-applicable layers are returned as
    they are (the caller lists them)."""
    patterns = [p for p in (patterns or ()) if p]
    kept, skipped = [], {}
    for spec in specs:
        if spec.applicable and patterns and not any(fnmatch.fnmatchcase(spec.name, p) for p in patterns):
            skipped[spec.name] = f"not selected by the layer filter '{','.join(patterns)}'"
        elif spec.applicable and max_width is not None and spec.width > max_width:
            skipped[spec.name] = (f"wider than the width limit {max_width} (max_width; d_in {spec.d_in}, "
                                  f"d_out {spec.d_out})")
        else:
            kept.append(spec)
    return kept, skipped


# ------------------------------------------------------------------------------------------ coverage
@dataclass(frozen=True)
class Coverage:
    """How much of the model the analysis covers.

    ``fraction`` = (parameters of the analysed layers' W and b) / (all parameters of the model).
    ``skipped`` maps each parameter-holding module type left out (``CondConv2d``, ``LSTM``,
    ``Conv2d (grouped)``, ``VisionTransformer.pos_embed`` for a model's own tensors, ...) to its parameter
    count; normalisation layers and per-channel vectors (layer scales, separate q/v biases) are counted in
    the total but not listed.
    """

    fraction: float
    analysed_params: int
    total_params: int
    skipped: dict[str, int]


def layer_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The Parameters a layer's ``W`` and ``b`` are made of: its own (for a :func:`functional_layers` view,
    the owner's tensors it shares) and, for a parametrized layer (``torch.nn.utils.parametrize``), the
    ``original*`` tensors its parametrizations compute the weight from."""
    found = [p for p in module._parameters.values() if p is not None]
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.ModuleDict):
        found.extend(parametrizations.parameters())
    return found


def coverage(model: nn.Module, analysed: Iterable[LayerSpec]) -> Coverage:
    analysed_ids = {id(p) for s in analysed for p in layer_parameters(s.module)}
    total = analysed_params = 0
    skipped: dict[str, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]  # tied: once
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        total += sum(p.numel() for _, p in own)
        analysed_params += sum(p.numel() for _, p in own if id(p) in analysed_ids)
        own = [(n, p) for n, p in own if id(p) not in analysed_ids]
        count = sum(p.numel() for _, p in own)
        cls = type(module).__name__
        if not own or "Norm" in cls or cls in ("Affine", "LayerScale", "LayerScale2d"):
            continue
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            key = f"{cls} (grouped)"
            skipped[key] = skipped.get(key, 0) + count
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            key = f"{cls} (not selected)"
            skipped[key] = skipped.get(key, 0) + count
        elif any(True for _ in module.children()):  # a container's own tensors: tokens, embeddings
            for pname, p in own:
                if p.dim() < 2:  # per-channel scales and biases (layer scale, q/v biases): not a layer
                    continue
                key = f"{cls}.{pname}"
                skipped[key] = skipped.get(key, 0) + p.numel()
        else:
            skipped[cls] = skipped.get(cls, 0) + count
    ordered = dict(sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    return Coverage(analysed_params / total if total else 0.0, analysed_params, total, ordered)
