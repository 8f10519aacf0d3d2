"""The repeated blocks of a network, found from its module tree and its call order, for any family.

Only layers inside the blocks count in the MLU (DESIGN.md, "Which layers count"). The blocks are found
from the model itself, never from family names:

1. **Items.** The items of a module are its children that hold analysable layers (:data:`LAYER_TYPES` and
   the views of :func:`~analysis.models.layers.functional_layers`); a child that is a plain container
   (exactly ``nn.Sequential``, ``nn.ModuleList`` or ``nn.ModuleDict``: a stage list, say) is replaced by its
   own items, recursively. An item is a *list item* when it was reached through a container (a
   ``Sequential``/``ModuleList``/``ModuleDict`` or a subclass of one).
2. **Block classes.** A module class (not a layer, not a plain container) is a block class when at least
   two list items of that class each hold at least :data:`MIN_LAYERS` applicable layers (grouped
   convolutions are not applicable). A stem of single conv-norm-act modules or a projection list never
   qualifies. Only when no class qualifies are named siblings used instead of list items (Inception's
   ``Mixed_5b``/``Mixed_5c``, DLA's ``tree1``/``tree2``: modules of one class that are items of one parent).
3. **Blocks.** The list items (siblings) of a block class among at least two such items of one parent (so
   a lone residual block inside EfficientViT's ``stem`` is not one; ResNet's ``layer1`` ... ``layer4`` are
   plain lists, so their blocks are items of the model itself), keeping those that contain no other one:
   a Swin stage holds blocks, so its blocks are the units, not the stage. A network with no block class but a list of at
   least :data:`MIN_LAYER_LIST` layers (VGG's ``features``) has one block per layer of that list.
4. **Call order.** The model runs once on a meta-device input (no memory, no arithmetic) with a forward
   pre-hook on every module; a layer's position is its own first call, else that of its nearest called
   ancestor (a weight applied functionally, as in BEiT's attention or ``nn.MultiheadAttention``); a module
   the forward never calls is no block, and a layer it never reaches (a training-only auxiliary branch) gets
   no role. If the model cannot run on the meta device, module order stands in for the call order
   (:attr:`Blocks.order`).
5. **Roles.** Layers called before the first block are the *stem*, layers called after the last block are
   *head-side* (``conv_head``, pre-logits, ``head.fc1``): neither counts. Every other layer outside the
   blocks (a stage's downsampling, a transition, Inception's grid reductions) forms a unit with the other
   layers of the largest subtree beside the blocks that holds it. Units whose layers interleave in the call
   order are merged; the units are numbered in call order, so depth never goes backwards.
6. **No block.** A network where none is found gets :attr:`Blocks.reason`, and no layer of it counts.

Labels: a block is named by the numbers in its path below the blocks' common prefix (``layers.1.blocks.0``
-> ``"1.0"``, ``layer2.1`` -> ``"2.1"``, ``blocks.7`` -> ``"7"``); another unit by its path below that prefix
(``"1.downsample"``, ``"Mixed_6a"``); where two units would get the same label, both get their whole path
below the prefix.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from .shapes import meta_forward

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Module types whose children are list items."""

MIN_LAYERS = 2
"""Applicable layers a list item needs for its class to be a block class."""

MIN_LAYER_LIST = 3
"""Layers a plain list of layers needs to be taken as one block per layer when no block class exists."""

STEM, BLOCK, HEAD_SIDE = "stem", "block", "head_side"


@dataclass(frozen=True)
class Unit:
    """One unit of depth: a block (``is_block``) or the layers of a subtree beside the blocks."""

    index: int
    label: str
    prefix: str
    is_block: bool


@dataclass
class Blocks:
    """Where each layer sits: ``role`` (:data:`STEM`, :data:`BLOCK`, :data:`HEAD_SIDE`, or absent when no
    block was found) and ``unit`` (the :class:`Unit` of every layer in a block or unit); ``reason`` says why
    no block was found (empty when blocks were found); ``order`` how the call order was read."""

    role: dict[str, str] = field(default_factory=dict)
    unit: dict[str, Unit] = field(default_factory=dict)
    reason: str = ""
    order: str = "forward"
    block_classes: tuple[str, ...] = ()


def _is_plain_container(module: nn.Module) -> bool:
    return type(module) in CONTAINERS


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


class _Tree:
    """The module tree restricted to what holds layers: per module, its layers and its items."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module], applicable: set[str]) -> None:
        self.model = model
        self.layers = layers
        self.modules = dict(model.named_modules())
        self.count: Counter = Counter()  # applicable layers under each module
        self.total: Counter = Counter()  # every layer under each module (grouped convolutions too)
        self.holds: set[str] = set()  # modules holding any layer
        self.views: dict[str, list[str]] = {}  # owner -> its functional views (``in_proj``), not modules
        for name in layers:
            if name not in self.modules:
                self.views.setdefault(name.rpartition(".")[0], []).append(name)
            parts = name.split(".")
            for depth in range(len(parts) + 1):
                prefix = ".".join(parts[:depth])
                self.holds.add(prefix)
                self.total[prefix] += 1
                if name in applicable:
                    self.count[prefix] += 1

    def items(self, name: str, through_container: bool = False) -> list[tuple[str, bool]]:
        """``(item name, is list item)`` of module ``name`` (rule 1 of the module docstring)."""
        module = self.modules[name]
        found: list[tuple[str, bool]] = []
        listed = through_container or isinstance(module, CONTAINERS)
        for child_name, child in module.named_children():
            full = _join(name, child_name)
            if full not in self.holds:
                continue
            if _is_plain_container(child) and full not in self.layers:
                found.extend(self.items(full, True))
            else:
                found.append((full, listed))
        found.extend((view, listed) for view in self.views.get(name, []))  # functional views are items too
        return found

    def all_items(self) -> list[tuple[str, bool, str]]:
        """Every ``(item, is list item, parent)`` of every module that is not a plain container."""
        out = []
        for name in self.modules:
            plain = bool(name) and _is_plain_container(self.modules[name])
            if name in self.holds and name not in self.layers and not plain:
                out.extend((item, listed, name) for item, listed in self.items(name))
        return out

    def cls(self, name: str) -> str:
        module = self.modules.get(name)
        return type(module).__name__ if module is not None else "functional"


def _block_classes(tree: _Tree, items: list[tuple[str, bool, str]], siblings: bool) -> set[str]:
    """Classes of which at least two items (list items, or items of one parent for ``siblings``) hold at
    least :data:`MIN_LAYERS` applicable layers (rule 2)."""
    eligible = [(item, parent) for item, listed, parent in items
                if item not in tree.layers and tree.count[item] >= MIN_LAYERS and (listed or siblings)]
    if siblings:
        per_parent = Counter((tree.cls(item), parent) for item, parent in eligible)
        return {cls for (cls, _parent), n in per_parent.items() if n >= 2}
    per_class = Counter(tree.cls(item) for item, _parent in eligible)
    return {cls for cls, n in per_class.items() if n >= 2}


def find_blocks(model: nn.Module, layers: dict[str, nn.Module], applicable: Iterable[str],
                input_size: tuple[int, int, int] | None = None) -> Blocks:
    """The blocks, units and roles of ``layers`` (name -> module, module order) of ``model`` (module docstring).
    ``applicable``: the names of the layers that are analysed (not grouped convolutions); ``input_size``:
    ``(C, H, W)`` for the meta-device forward (default: the model's own data config, else 3 x 224 x 224)."""
    names = list(layers)
    tree = _Tree(model, layers, set(applicable))
    items = tree.all_items()
    siblings = False
    classes = _block_classes(tree, items, siblings)
    if not classes:
        siblings = True
        classes = _block_classes(tree, items, siblings)
    in_group: dict[str, list[str]] = {}  # parent -> its items of a block class
    for item, listed, parent in items:
        if item not in layers and tree.cls(item) in classes and (listed or siblings):
            in_group.setdefault(parent, []).append(item)
    positions, spans, order = _positions(model, names, input_size)
    candidates = {item for group in in_group.values() if len(group) >= 2 for item in group
                  if not spans or item in spans}  # a module the forward never calls is no block (GoogLeNet's aux)
    blocks = sorted(c for c in candidates if not any(o != c and _under(o, c) for o in candidates))
    if not blocks:
        blocks = _layer_list(tree, items)
    if not blocks:
        return Blocks(reason=_no_block_reason(tree, items), order=order)
    # list items beside the blocks that are blocks in all but class: modules of at least MIN_LAYERS layers
    # (grouped convolutions included: EfficientNet's first depthwise-separable block) in the blocks' own list,
    # or in another list after the first block (CaiT's one class-attention block). A single convolution module
    # before the first or after the last block is the stem or head-side even inside the blocks' list
    # (torchvision's ``features.0`` and ``features.8``, GhostNet's last 1x1), and another list before the first
    # block stays the stem (FastViT's list of stem conv blocks)
    holding = {parent for item, _listed, parent in items if any(_under(b, item) for b in blocks)}
    lists = {_list_of(item, parent) for item, _listed, parent in items if any(_under(b, item) for b in blocks)}
    companions = {item: _list_of(item, parent) in lists for item, listed, parent in items
                  if listed and parent in holding and item not in layers and tree.total[item] >= MIN_LAYERS
                  and not any(_under(b, item) or _under(item, b) for b in blocks)}
    trunk = {name for name, module in tree.modules.items() if name and not _is_plain_container(module)
             and any(_under(b, name) for b in blocks)}
    return _roles(names, blocks, companions, trunk, positions, spans, order, tuple(sorted(classes)))


def _layer_list(tree: _Tree, items: list[tuple[str, bool, str]]) -> list[str]:
    """One block per layer of the largest plain list of at least :data:`MIN_LAYER_LIST` layers (VGG)."""
    per_parent: dict[str, list[str]] = {}
    for item, listed, parent in items:
        if listed and item in tree.layers and tree.count[item]:
            per_parent.setdefault(parent, []).append(item)
    best = max(per_parent.values(), key=len, default=[])
    return best if len(best) >= MIN_LAYER_LIST else []


def _no_block_reason(tree: _Tree, items: list[tuple[str, bool, str]]) -> str:
    listed = [item for item, is_listed, _parent in items if is_listed and item not in tree.layers]
    return (f"no repeated block found: no module class occurs as at least two list items (children of a "
            f"Sequential/ModuleList/ModuleDict) or as two items of one parent with at least {MIN_LAYERS} "
            f"analysable layers each ({len(listed)} list items of other kinds), and no list of "
            f"{MIN_LAYER_LIST} or more layers; without blocks no layer counts in the MLU")


def _positions(model: nn.Module, names: list[str], input_size) -> tuple[dict[str, tuple[float, int]], dict, str]:
    """Sort key ``(first call, module order)`` of every layer, the first-call spans of the modules, and how
    the call order was read."""
    spans = call_spans(model, input_size)
    order = "forward" if spans else "module order (the model could not run on the meta device)"
    positions: dict[str, tuple[float, int]] = {}
    for index, name in enumerate(names):
        position = None
        if spans:
            parts = name.split(".")
            for depth in range(len(parts), 0, -1):
                called = spans.get(".".join(parts[:depth]))
                if called is not None:
                    position = float(called[0]) + (0.5 if depth < len(parts) else 0.0)  # just after its caller
                    break
        if position is None and spans:
            position = -1.0  # the forward never calls it
        elif position is None:
            position = float(index)
        positions[name] = (position, index)
    return positions, spans, order


def call_spans(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> dict[str, tuple[int, int]]:
    """``{module name: (start, end)}`` of each module's first call (event counters of its forward pre-hook and
    forward hook) in one forward on a meta-device input of ``input_size`` (the root module excluded); empty
    when the model cannot run on the meta device."""
    size = tuple(int(v) for v in (input_size or _input_size(model)))
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    clock = [0]

    def tick(times: dict[str, int], name: str) -> None:
        if name not in times:
            times[name] = clock[0]
        clock[0] += 1

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: tick(starts, name)))
            handles.append(module.register_forward_hook(lambda _m, _a, _o, name=name: tick(ends, name)))
    try:
        if not meta_forward(model, size):  # a model that cannot run on the meta device: module order instead
            starts = {}
    finally:
        for handle in handles:
            handle.remove()
    return {name: (start, ends.get(name, start)) for name, start in starts.items()}


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    try:
        from .registry import resolve_data_config

        return tuple(resolve_data_config(model)["input_size"])
    except Exception:  # noqa: BLE001 - a model timm cannot describe: the common ImageNet size
        return (3, 224, 224)


def _list_of(item: str, parent: str) -> str:
    """The child of ``parent`` through which ``item`` is reached (the list it was flattened from)."""
    rest = item[len(parent) + 1:] if parent else item
    return _join(parent, rest.split(".")[0])


def _roles(names: list[str], blocks: list[str], companions: dict[str, bool], trunk: set[str],
           positions: dict[str, tuple[float, int]], spans: dict, order: str, classes: tuple[str, ...]) -> Blocks:
    """Roles and units (rule 5 of the module docstring). ``companions``: list items beside the blocks in their
    groups with at least :data:`MIN_LAYERS` layers (True: in a list that holds blocks); ``trunk``: the modules
    (not plain containers, not the root) that contain blocks."""
    keys: dict[str, str] = {}
    for name in names:
        owner = next((b for b in blocks if _under(name, b)), None)
        if owner is None:  # a layer called while a block runs is that block's (a shared module, ConViT's cpe)
            start = positions[name][0]
            owner = next((b for b in blocks if b in spans and spans[b][0] < start < spans[b][1]), None)
        if owner is not None:
            keys[name] = owner
    inside = sorted(positions[n] for n in keys if positions[n][0] >= 0)
    first, last = inside[0], inside[-1]
    out = Blocks(order=order, block_classes=classes)
    for name in names:
        if name in keys or positions[name][0] < 0:  # never called (a training-only branch): no role
            continue
        companion = next((c for c, same_list in companions.items() if _under(name, c)
                          and (same_list or positions[name] > first)), None)
        beside = _beside(name, blocks)
        if companion is not None:
            keys[name] = companion
        elif _owner(beside, trunk) or first < positions[name] < last:  # in a stage, or between blocks
            keys[name] = beside
        else:
            out.role[name] = STEM if positions[name] < first else HEAD_SIDE
    # units in call order; units whose layers interleave are merged into the first of them
    extent: dict[str, list] = {}
    for name in sorted(keys, key=positions.__getitem__):
        span = extent.setdefault(keys[name], [positions[name], positions[name]])
        span[1] = max(span[1], positions[name])
    merged: list[list] = []  # [start, end, [keys]]
    for key, (start, end) in sorted(extent.items(), key=lambda kv: kv[1][0]):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2].append(key)
        else:
            merged.append([start, end, [key]])
    label = _labeller(blocks)
    labels = [label(group[0], group[0] in blocks) for _start, _end, group in merged]
    repeated = {text for text in labels if labels.count(text) > 1}
    for index, (_start, _end, group) in enumerate(merged):
        head = group[0]
        text = labels[index] if labels[index] not in repeated else label(head, head in blocks, full=True)
        unit = Unit(index, text, head, head in blocks)
        for name, key in keys.items():
            if key in group:
                out.unit[name] = unit
                out.role[name] = BLOCK
    return out


def _owner(path: str, trunk: set[str]) -> bool:
    """Whether ``path`` (beside the blocks, so every ancestor holds blocks) sits in a module of ``trunk``
    rather than only in plain containers of the model itself."""
    parts = path.split(".")
    return any(".".join(parts[:depth]) in trunk for depth in range(1, len(parts)))


def _beside(name: str, blocks: list[str]) -> str:
    """The largest subtree holding layer ``name`` that contains no block (its parent holds one)."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if not any(_under(b, prefix) for b in blocks):
            return prefix
    return name


_NUMBER = re.compile(r"(\d+[a-z]?(?:_\d+)?)$")


def _labeller(blocks: list[str]):
    """``label(path, is_block)``: the numbers in ``path`` below the blocks' common prefix (``layers.1.blocks.0``
    under ``layers`` -> ``"1.0"``, ``layer2.1`` -> ``"2.1"``; a numbered name below the top stays whole, as
    gcvit's ``0.conv1``), the name kept where blocks sit under differently named parents at the top
    (CaiT's ``blocks_token_only.0``, VOLO's ``post_network.0`` beside the main ``blocks``/``network``), and the
    last name of a unit that is not a block (``"1.downsample"``, ``"Mixed_6a"``); ``full``: the whole path
    below the prefix (for two units that would get the same label)."""
    split = [b.split(".") for b in blocks]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1 or len(common) + 1 >= min(len(p) for p in split):
            break
        common.append(parts[0])
    tops = Counter(re.sub(r"\d+", "", p[len(common)]) for p in split if len(p) > len(common))
    main = tops.most_common(1)[0][0] if tops else ""

    def label(path: str, is_block: bool, full: bool = False) -> str:
        parts = path.split(".")
        parts = parts[len(common):] if parts[: len(common)] == common else parts
        if not parts or full:
            return ".".join(parts) or path
        numbers = []  # a number, the number of the top name (``layer2``), or a deeper numbered name (``conv1``)
        for depth, part in enumerate(parts if is_block else parts[:-1]):
            match = _NUMBER.search(part)
            if part.isdigit() or (match is not None and depth == 0):
                numbers.append(match.group(1))
            elif match is not None:
                numbers.append(part)
        if not is_block:
            return ".".join(numbers + parts[-1:])
        top = re.sub(r"\d+", "", parts[0])
        if top != main and not top.isdigit() and top:
            return ".".join([parts[0]] + numbers[1:] if _NUMBER.search(parts[0]) else [parts[0]] + numbers)
        return ".".join(numbers) if numbers else path

    return label
