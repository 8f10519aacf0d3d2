"""Which layers count: blocks, stem and head-side found from the module tree and the call order
(analysis/models/blocks.py), on small models built here with names no rule was written for."""

from __future__ import annotations

import torch
from torch import nn

from analysis.meta import ResultMeta
from analysis.models.layers import describe_model
from analysis.result import Result


class Unit(nn.Module):
    """A residual MLP block on tokens; ``shared`` (if given) is a module registered elsewhere and called here."""

    def __init__(self, width: int, shared: nn.Module | None = None) -> None:
        super().__init__()
        self.widen = nn.Linear(width, 2 * width)
        self.narrow = nn.Linear(2 * width, width)
        self.shared = [shared]  # not registered as a child: the model owns it

    def forward(self, x):
        if self.shared[0] is not None:
            x = x + self.shared[0](x)
        return x + self.narrow(torch.relu(self.widen(x)))


class Mixer(nn.Module):
    """Attention by structure only: an integer head count and q/k/v and output children, a class name no
    rule knows."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        split = lambda t: t.reshape(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        mixed = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return x + self.out(mixed.transpose(1, 2).reshape(b, n, c))


class Stage(nn.Module):
    def __init__(self, width: int, shared: nn.Module) -> None:
        super().__init__()
        self.reduce = nn.Linear(width, width)  # a stage's own layer before its blocks (a "downsample")
        self.units = nn.ModuleList([Unit(width, shared if i == 0 else None) for i in range(2)])
        self.mixer = Mixer(width, 2)

    def forward(self, x):
        x = self.reduce(x)
        for unit in self.units:
            x = unit(x)
        return self.mixer(x)


class Net(nn.Module):
    """A conv stem, a list of two stages (each: a reduction, two units, a mixer), a neck, a classifier."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.gate = nn.Linear(width, width)  # registered at the top, called inside the first unit
        self.trunk = nn.ModuleList([Stage(width, self.gate) for _ in range(2)])
        self.neck = nn.Linear(width, 2 * width)
        self.head = nn.Linear(2 * width, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for stage in self.trunk:
            x = stage(x)
        return self.head(self.neck(x.mean(1)))


def test_blocks_stem_and_head_side_come_from_structure_and_call_order():
    specs, blocks = describe_model(Net(), input_size=(3, 16, 16))
    by_name = {s.name: s for s in specs}
    assert blocks.reason == "" and blocks.order == "forward"
    # the stem: called before the first block; head-side: after the last; the classifier: the model names it
    assert by_name["embed"].kind == "patch_embed" and by_name["neck"].kind == "head_side"
    assert by_name["head"].kind == "head"
    assert not any(by_name[n].in_mlu for n in ("embed", "neck", "head"))
    # the repeated units (Unit, Mixer: list items or their stages) are the blocks, numbered in call order
    units = [(s.block_label, s.name) for s in specs if s.block is not None]
    order = ["trunk.0.reduce", "gate", "trunk.0.units.0.widen", "trunk.0.units.1.widen", "trunk.0.mixer.to_q",
             "trunk.1.reduce", "trunk.1.units.0.widen", "trunk.1.units.1.widen", "trunk.1.mixer.to_q"]
    indices = [by_name[n].block for n in order]
    assert indices == sorted(indices) and len(set(indices)) == 8  # gate shares unit 0.0's index
    assert by_name["gate"].block == by_name["trunk.0.units.0.widen"].block  # called while that unit runs
    assert by_name["trunk.0.units.1.narrow"].block_label == "0.1"
    assert by_name["trunk.1.reduce"].block_label == "1.reduce"
    assert all(s.in_mlu for s in specs if s.block is not None) and len(units) == sum(s.in_mlu for s in specs)
    # kinds from structure: the Unit widens and narrows back (an MLP), the Mixer has heads and q/k/v/out
    assert by_name["trunk.0.units.0.widen"].kind == "mlp_fc1" and by_name["trunk.0.units.0.narrow"].kind == "mlp_fc2"
    assert {by_name[f"trunk.1.mixer.{p}"].kind for p in ("to_q", "to_k", "to_v")} == {"attn_qkv"}
    assert by_name["trunk.1.mixer.out"].kind == "attn_proj"


def test_a_model_without_blocks_counts_nothing_and_says_why():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    specs, blocks = describe_model(model, input_size=(3, 8, 8))
    assert blocks.reason.startswith("no repeated block found") and "no layer counts" in blocks.reason
    assert specs and not any(s.in_mlu for s in specs) and all(s.block is None for s in specs)
    meta = ResultMeta(model_id="random:plain", blocks_reason=blocks.reason)
    warnings = Result(meta=meta, spectra=[]).warnings
    assert warnings == [f"random:plain: {blocks.reason}"]


def test_module_order_stands_in_when_the_model_cannot_run_on_the_meta_device():
    class Eager(Net):
        def forward(self, x):
            if float(x.sum()) > 1e9:  # data-dependent Python control flow: impossible on the meta device
                return x
            return super().forward(x)

    specs, blocks = describe_model(Eager(), input_size=(3, 16, 16))
    assert blocks.order.startswith("module order")
    by_name = {s.name: s for s in specs}
    assert by_name["embed"].kind == "patch_embed" and by_name["neck"].kind == "head_side"
    assert by_name["trunk.0.units.1.narrow"].in_mlu


def test_training_only_branches_get_no_role():
    class WithAux(Net):
        def __init__(self):
            super().__init__()
            self.aux = nn.ModuleList([Unit(8), Unit(8)])  # a repeated module class the forward never calls

    specs, _ = describe_model(WithAux(), input_size=(3, 16, 16))
    aux = [s for s in specs if s.name.startswith("aux.")]
    assert aux and all(s.block is None and not s.in_mlu for s in aux)


def test_a_depthwise_stem_is_not_applicable_not_a_stem_layer_waiting_for_input():
    """FastViT/EfficientViT-style stems: a depthwise convolution before the blocks keeps its kind
    ``grouped_conv`` (not applicable), only its dense neighbours become the stem (before: kind patch_embed,
    then "not reached" because its grouped call feeds no statistics)."""

    class DepthwiseStem(Net):
        def __init__(self):
            super().__init__()
            self.embed = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                       nn.Conv2d(8, 8, 4, stride=4))

    specs, _ = describe_model(DepthwiseStem(), input_size=(3, 16, 16))
    kinds = {s.name: s.kind for s in specs if s.name.startswith("embed.")}
    assert kinds == {"embed.0": "patch_embed", "embed.1": "grouped_conv", "embed.2": "patch_embed"}
    assert not next(s for s in specs if s.name == "embed.1").applicable
