"""Every timm family the product promises: heads found and never counted, meaningful kinds, blocks in forward
order, the analysed-weight fraction and skipped module types reported; the README table is what these runs saw.

One small random-initialised model per family (analysis/families_table.py: CASES), two ``photos``
images, CPU, layers wider than the table's width cap skipped so that each run takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from analysis.families_table import CASES, GENERIC_KINDS, parse, row_for, run_case
from analysis.models.layers import classifier_names, describe_layers

README = Path(__file__).resolve().parent.parent / "README.md"
RECORDED: dict[str, dict[str, str]] = {}
"""README rows of the cases run in this session (compared with the README's table at the end)."""


def _forward_order(model: nn.Module, input_size) -> list[str]:
    """Names of the analysable layers in the order the forward pass first reaches them."""
    specs = describe_layers(model)
    order: list[str] = []
    handles = [s.module.register_forward_pre_hook(lambda _m, _a, n=s.name: order.append(n) if n not in order else None)
               for s in specs]
    try:
        with torch.no_grad():
            model(torch.randn(1, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return order


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.arch)
def test_family(case):
    seen: dict = {}

    def inspect(the_plan) -> None:
        model = the_plan.loaded.model
        seen["specs"] = {s.name: s for s in describe_layers(model)}
        seen["heads"] = classifier_names(model)
        seen["order"] = _forward_order(model, the_plan.loaded.data_config["input_size"])

    result = run_case(case, before=inspect)
    specs, heads = seen["specs"], seen["heads"]
    table = result.layers.set_index("layer")

    # heads: found from the model (every classifier the model names, distillation heads included), never counted
    assert heads, "every case has a 10-way classifier"
    head_layers = [n for n in specs if any(n == h or n.startswith(h + ".") for h in heads)]
    assert head_layers and all(specs[n].kind == "head" and not specs[n].in_mlu for n in head_layers)
    assert not table.loc[table["kind"] == "head", "in_mlu"].any()
    assert {n for n, s in specs.items() if s.kind == "head"} == set(head_layers)
    if "distilled" in case.arch or case.family in ("levit", "efficientformer"):
        assert len(head_layers) == 2

    # kinds: the family's own kinds are found, so not everything is generic
    kinds = {s.kind for s in specs.values()}
    assert case.expect <= kinds, f"missing {case.expect - kinds}"
    assert kinds - {k.value for k in GENERIC_KINDS}

    # depth: block indices never decrease in the order the forward pass reaches the layers
    blocks = [specs[n].block for n in seen["order"] if specs[n].block is not None]
    assert len(blocks) >= 2 and all(a <= b for a, b in zip(blocks, blocks[1:]))
    assert all(s.block_label for s in specs.values() if s.block is not None)
    assert table["block_label"].notna().all()

    # coverage: the analysed share of the weights and the skipped parameter-holding module types
    fraction = result.meta.weights_analysed_fraction
    skipped = result.meta.skipped_module_types
    assert 0.0 < fraction <= 1.0
    for wanted in case.skipped_types:
        assert any(name.startswith(wanted) for name in skipped), f"{wanted} not in {list(skipped)}"
    assert (result.layers["n_samples"] > 0).any()
    counted = result.layers[result.layers["in_mlu"]]
    assert (counted["n_samples"] > 0).all() and (counted["status"] == "ok").all()
    assert case.statuses <= set(result.layers["status"]), f"missing {case.statuses - set(result.layers['status'])}"
    assert counted["block"].notna().all() and result.meta.blocks_reason == ""

    RECORDED[case.model_id.split("?", 1)[0]] = row_for(case, result, case.family)


def test_readme_table_is_what_the_family_runs_saw():
    """The README's supported-families table equals the rows these runs produce (regenerate it with
    ``python -m analysis.families_table``)."""
    rows = {row["model"].strip("`"): row for row in parse(README.read_text())}
    assert {c.model_id.split("?", 1)[0] for c in CASES} == set(rows), "README table out of date: regenerate it"
    if not RECORDED:
        pytest.skip("no family case ran in this session")
    for model, row in RECORDED.items():
        assert rows[model] == row, f"README row of {model} is stale: regenerate the table"


def test_condconv_and_lstm_shares_are_reported():
    """The two families of the issue whose weights are mostly outside Linear/Conv2d: CondConv experts and
    LSTMs hold most parameters, and the reported fraction says so (known answer from the module sizes)."""
    import timm

    from analysis.models.layers import coverage

    for arch, kwargs, skipped_type in (("efficientnet_cc_b0_4e", {}, "CondConv2d"),
                                       ("sequencer2d_s", {"layers": (1, 1, 1, 1)}, "LSTM")):
        model = timm.create_model(arch, num_classes=10, **kwargs)
        specs = [s for s in describe_layers(model) if s.applicable]
        report = coverage(model, specs)
        skipped_params = sum(p.numel() for m in model.modules() if type(m).__name__ == skipped_type
                             for p in m.parameters())
        assert report.skipped[skipped_type] == skipped_params
        assert report.analysed_params == sum(p.numel() for s in specs for p in s.module.parameters(recurse=False))
        assert report.fraction == pytest.approx(report.analysed_params / sum(p.numel() for p in model.parameters()))
        assert report.fraction < 0.9


# Families the issue named (and a few nobody named): which layers count, from structure alone (no run).
# arch -> (timm options, input side, layers that must not count: stem or head-side, layers that must be
# attention, layers that must be MLP); every case also checks the general rules in the test.
STRUCTURE_CASES = {
    "volo_d1_224": (dict(img_size=64), 64, {"patch_embed.conv.0", "patch_embed.conv.3", "patch_embed.conv.6",
                                            "patch_embed.proj"}, set(), set()),
    "nest_tiny": (dict(img_size=64), 64, {"patch_embed.proj"}, {"levels.0.transformer_encoder.0.attn.qkv"}, set()),
    "dla34": ({}, 64, {"base_layer.0", "level0.0", "level1.0"}, set(), set()),
    "dpn68": ({}, 64, {"features.conv1_1.conv"}, set(), set()),
    "coat_lite_tiny": (dict(img_size=64), 64, {"patch_embed1.proj"},
                       {"serial_blocks1.0.factoratt_crpe.qkv", "serial_blocks4.1.factoratt_crpe.proj"}, set()),
    "inception_next_tiny": ({}, 64, {"head.fc1"}, set(), {"stages.0.blocks.0.mlp.fc1"}),
    "mambaout_femto": ({}, 64, {"head.pre_logits.fc"}, set(), {"stages.0.blocks.0.fc1", "stages.3.blocks.2.fc2"}),
    "efficientvit_b0": ({}, 64, {"head.classifier.0", "head.in_conv.conv"},
                        {"stages.3.blocks.1.context_module.main.qkv.conv"}, set()),
    "ghostnet_100": ({}, 64, {"conv_head"}, set(), set()),
    "mobilenetv3_small_050": ({}, 64, {"conv_head"}, set(), set()),
    "tf_efficientnet_lite0": ({}, 64, {"conv_head"}, set(), set()),
    "hgnetv2_b0": ({}, 64, {"head.last_conv.0"}, set(), set()),
    "gcvit_xxtiny": ({}, 224, set(), {"stages.0.blocks.0.attn.qkv", "stages.3.blocks.1.attn.proj"}, set()),
    "convit_tiny": (dict(img_size=64), 64, set(), {"blocks.0.attn.qk", "blocks.0.attn.v", "blocks.11.attn.qkv"}, set()),
    "hiera_tiny_224": ({}, 224, set(), {"blocks.0.attn.qkv", "blocks.0.attn.proj"}, set()),
    "pvt_v2_b0": ({}, 64, set(), set(), set()),
    "rexnet_100": ({}, 64, set(), set(), set()),
    "repvit_m1": ({}, 64, set(), set(), set()),
}


@pytest.mark.parametrize("arch", list(STRUCTURE_CASES))
def test_blocks_stem_and_head_side_from_structure(arch):
    import timm

    from analysis.models.layers import describe_model

    options, side, not_counted, attention, mlp = STRUCTURE_CASES[arch]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **options).eval()
    specs, blocks = describe_model(model, (3, side, side))
    by_name = {s.name: s for s in specs}
    assert blocks.reason == "" and blocks.order == "forward"
    for name in not_counted:
        assert by_name[name].kind in ("patch_embed", "head_side") and not by_name[name].in_mlu, name
    assert {by_name[n].kind for n in attention} <= {"attn_qkv", "attn_proj"}
    assert all(by_name[n].in_mlu for n in attention)
    assert {by_name[n].kind for n in mlp} <= {"mlp_fc1", "mlp_fc2"}
    # every counted layer sits in a block; depth follows the real forward; the stem comes before every block
    # and head-side layers after every block
    assert all(s.block is not None for s in specs if s.in_mlu) and sum(s.in_mlu for s in specs) > 10
    order: list[str] = []
    handles = [s.module.register_forward_pre_hook(lambda _m, _a, n=s.name: order.append(n) if n not in order else None)
               for s in specs]
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    for handle in handles:
        handle.remove()
    position = {name: i for i, name in enumerate(order)}
    in_blocks = [n for n in order if by_name[n].block is not None]
    assert [by_name[n].block for n in in_blocks] == sorted(by_name[n].block for n in in_blocks)
    stem = [position[s.name] for s in specs if s.kind == "patch_embed" and s.name in position]
    tail = [position[s.name] for s in specs if s.kind == "head_side" and s.name in position]
    assert all(p < position[in_blocks[0]] for p in stem) and all(p > position[in_blocks[-1]] for p in tail)
