"""Known answers for "exact means what the forward really computes" (DESIGN.md section 1, issue 13 items 1, 2, 6).

Every test compares the analytic ``C_out = W C_in W^T + W s b^T + b s^T W^T + N b b^T`` built from the
captured statistics and the captured effective W, b with the second moment of the layer's real outputs,
accumulated independently in float64 over every batch. The layers run in float32, so the real outputs carry
float32 rounding (unit 6e-8, growing like sqrt(d_in) in the dot products): ``RTOL = 1e-5`` on the relative
Frobenius error is far above that and far below the errors of the defects tested (> 0.05, often ~1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import status
from analysis.capture import LayerCapture, discover
from analysis.models.layers import LayerSpec, coverage, describe_layers, weight_matrix
from analysis.spectra import output_second_moment
from analysis.statistics import MomentCollector

from .helpers import TINY_VIT_OPTIONS, make_image_folder

RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _spec(module: nn.Module, name: str, kind: str = "linear") -> LayerSpec:
    if isinstance(module, nn.Conv2d):
        d_in, d_out = module.weight[0].numel(), module.out_channels
    else:
        d_in, d_out = module.in_features, module.out_features
    return LayerSpec(name=name, kind=kind, block=0, module=module, d_in=d_in, d_out=d_out,
                     has_bias=getattr(module, "bias", None) is not None)


def _run(model: nn.Module, specs: list[LayerSpec], batches: list[torch.Tensor], **kwargs):
    with MomentCollector(specs, **kwargs) as collector, torch.inference_mode():
        for x in batches:
            model(x)
            collector.next_batch()
    return collector.moments(), collector.findings()


def _analytic(moments, findings, name: str) -> torch.Tensor:
    m, f = moments[name], findings[name]
    return output_second_moment(f.weight, m.second_moment, m.column_sum, m.count, f.bias)


def _conv_rows(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()


def _output_moment_hook(store: dict, key: str = "y", conv: bool = True):
    def hook(module, args, output):
        rows = _conv_rows(output) if conv else output.reshape(-1, output.shape[-1]).double()
        store[key] = store.get(key, 0) + rows.T @ rows

    return hook


# -- weight-standardised convolutions --------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["StdConv2d", "ScaledStdConv2d", "StdConv2dSame", "ScaledStdConv2dSame"])
def test_weight_standardised_convolution_output_moment_is_exact(factory):
    import timm.layers

    torch.manual_seed(0)
    cls = getattr(timm.layers, factory)
    conv = cls(4, 6, 3, stride=2, bias=True)  # "Same" variants pad inside their forward (dynamic, stride 2)
    with torch.no_grad():
        conv.weight.normal_(0.3, 1.0)  # a mean far from 0: standardisation changes the weight a lot
        conv.bias.normal_()
        if hasattr(conv, "gain"):
            conv.gain.uniform_(0.5, 2.0)
    real: dict = {}
    conv.register_forward_hook(_output_moment_hook(real))
    batches = [torch.randn(3, 4, 11, 10) + 0.5 for _ in range(3)]
    moments, findings = _run(conv, [_spec(conv, "conv", "conv")], batches)
    analytic = _analytic(moments, findings, "conv")
    assert moments["conv"].count == 3 * 3 * 6 * 5
    assert _rel(analytic, real["y"]) < RTOL
    # the raw module weight is not what the forward applies: the old formula was wrong by far more than RTOL
    raw = output_second_moment(weight_matrix(conv).detach(), moments["conv"].second_moment,
                               moments["conv"].column_sum, moments["conv"].count, conv.bias.detach())
    assert _rel(raw, real["y"]) > 0.05
    assert findings["conv"].check.passed


def test_convolution_padding_modes_use_the_real_call_geometry():
    torch.manual_seed(1)
    convs = {"same": nn.Conv2d(3, 5, (3, 4), padding="same"),  # asymmetric "same" padding of an even kernel
             "reflect": nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect", stride=2)}
    for name, conv in convs.items():
        real: dict = {}
        conv.register_forward_hook(_output_moment_hook(real))
        moments, findings = _run(conv, [_spec(conv, name, "conv")], [torch.randn(2, 3, 9, 8) for _ in range(2)])
        assert _rel(_analytic(moments, findings, name), real["y"]) < RTOL, name
        assert findings[name].check.passed


# -- functional qkv attention (BEiT / EVA style) ---------------------------------------------------------
def _tiny_timm(arch: str, **kwargs) -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():  # random q/v biases (timm initialises them to zero)
            for attr in ("q_bias", "v_bias"):
                if isinstance(getattr(module, attr, None), torch.Tensor):
                    getattr(module, attr).normal_()
    return model


@pytest.mark.parametrize("arch,kwargs", [
    ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2)),
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=2)),
])
def test_functional_qkv_uses_the_real_input_and_the_effective_bias(arch, kwargs):
    model = _tiny_timm(arch, **kwargs)
    specs = [s for s in describe_layers(model) if s.applicable]
    qkv_names = [s.name for s in specs if s.name.endswith("attn.qkv")]
    assert qkv_names, "these families fuse q, k, v into one weight"
    real: dict = {}
    for name in qkv_names:
        attn = model.get_submodule(name.rsplit(".", 1)[0])

        def hook(module, args, name=name):  # the known answer, computed by hand from the attention's input
            x = args[0].double()
            bias = torch.cat((module.q_bias, torch.zeros_like(module.q_bias), module.v_bias)).double()
            y = F.linear(x, module.qkv.weight.double(), bias).reshape(-1, bias.shape[0])
            real[name] = real.get(name, 0) + y.T @ y

        attn.register_forward_pre_hook(hook)
    size = kwargs["img_size"]
    batches = [torch.randn(2, 3, size, size) for _ in range(2)]
    moments, findings = _run(model, specs, batches)
    tokens = (size // model.patch_embed.patch_size[0]) ** 2 + 1
    for name in qkv_names:
        attn = model.get_submodule(name.rsplit(".", 1)[0])
        assert moments[name].count == 4 * tokens  # before: 0, the Linear's own forward never runs
        assert findings[name].functional and findings[name].check.passed
        expected_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias)).double()
        torch.testing.assert_close(findings[name].bias, expected_bias)
        assert _rel(_analytic(moments, findings, name), real[name]) < RTOL
    assert all(f.check.passed and f.problem is None for f in findings.values())


# -- parametrizations, shared layers ---------------------------------------------------------------------
def test_parametrized_weight_is_the_weight_applied():
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(2)
    layer = weight_norm(nn.Linear(10, 7))
    with torch.no_grad():
        layer.parametrizations.weight.original0.uniform_(0.2, 3.0)  # g: the norm of each row
    real: dict = {}
    layer.register_forward_hook(_output_moment_hook(real, conv=False))
    moments, findings = _run(layer, [_spec(layer, "fc")], [torch.randn(20, 10) for _ in range(3)])
    torch.testing.assert_close(findings["fc"].weight, layer.weight.detach().double())
    assert not torch.allclose(findings["fc"].weight, layer.parametrizations.weight.original1.double())
    assert _rel(_analytic(moments, findings, "fc"), real["y"]) < RTOL
    assert findings["fc"].check.passed


class _Shared(nn.Module):
    """One Linear applied twice through its module and once more through ``F.linear`` with its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(torch.tanh(self.fc(x)))
        return F.linear(h.flip(-1), self.fc.weight, self.fc.bias)


def test_a_layer_called_several_times_accumulates_every_call():
    torch.manual_seed(3)
    model = _Shared()
    real: dict = {"n": 0}

    def record(x):
        y = F.linear(x.double(), model.fc.weight.double(), model.fc.bias.double())
        real["y"] = real.get("y", 0) + y.T @ y
        real["n"] += x.shape[0]

    def forward(x):  # the known answer: every input the weight multiplies, by hand
        a = x
        record(a)
        b = torch.tanh(model.fc(a))
        record(b)
        h = model.fc(b)
        record(h.flip(-1))
        return F.linear(h.flip(-1), model.fc.weight, model.fc.bias)

    batches = [torch.randn(8, 6) for _ in range(3)]
    for x in batches:
        forward(x)
    moments, findings = _run(model, [_spec(model.fc, "fc")], batches)
    assert moments["fc"].count == real["n"] == 3 * 3 * 8
    assert findings["fc"].calls == 3 and findings["fc"].functional
    assert _rel(_analytic(moments, findings, "fc"), real["y"]) < RTOL
    assert findings["fc"].check.passed


def test_function_mode_is_left_when_every_layer_is_hookable_and_kept_when_one_is_not():
    stack = torch.overrides._get_current_function_mode_stack
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    specs = [_spec(plain[0], "0"), _spec(plain[2], "2")]
    with MomentCollector(specs) as collector, torch.inference_mode():
        assert len(stack()) == 1  # discovery
        plain(torch.randn(3, 4))
        collector.next_batch()
        assert len(stack()) == 0  # every layer is captured by its pre-hook from now on
        plain(torch.randn(3, 4))
    assert collector.moments()["0"].count == 6
    shared = _Shared()
    with MomentCollector([_spec(shared.fc, "fc")]) as collector, torch.inference_mode():
        shared(torch.randn(3, 6))
        collector.next_batch()
        assert len(stack()) == 1  # the functional call still needs the mode
        shared(torch.randn(3, 6))
    assert len(stack()) == 0 and collector.moments()["fc"].count == 18


# -- precision -------------------------------------------------------------------------------------------
def test_under_bf16_autocast_the_multiplied_input_is_captured_and_the_check_still_discriminates():
    torch.manual_seed(4)
    layer = nn.Linear(32, 16)
    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moments, findings = _run(layer, [_spec(layer, "fc")], [x])
    rows = x.bfloat16().double()  # what F.linear multiplies under autocast
    # float32 sums of exact bf16 products (1e-6); statistics rounded to bf16 would be off by ~4e-3
    assert _rel(moments["fc"].second_moment, rows.T @ rows) < 1e-6
    check = findings["fc"].check
    assert check.passed and 1e-3 < check.tolerance < 0.5  # stated: about 0.15 under bfloat16

    broken = nn.Linear(32, 16)
    broken.forward = lambda x: F.linear(x, broken.weight, broken.bias) * 1.5  # post-scaling the capture cannot see
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, findings = _run(broken, [_spec(broken, "fc")], [x])
    assert not findings["fc"].check.passed and findings["fc"].check.relative_error > 0.5


# -- the self-check catches what the affine model does not describe ---------------------------------------
def test_self_check_flags_a_layer_whose_forward_is_not_its_captured_call():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    other = torch.randn(8, 8)
    model[2].forward = lambda x: x @ other.T  # another weight, no F.linear call: input not capturable
    model[4].forward = lambda x: F.linear(x, model[4].weight, model[4].bias) + 1.0  # output differs from the call
    specs = [_spec(model[i], str(i)) for i in (0, 2, 4)]
    _, findings = _run(model, specs, [torch.randn(10, 8) for _ in range(2)])
    assert findings["0"].check.passed and findings["0"].problem is None
    assert findings["2"].problem and "no F.linear" in findings["2"].problem
    assert not findings["4"].check.passed


def test_discover_reports_effective_weights_without_statistics():
    import timm.layers

    conv = timm.layers.StdConv2d(3, 4, 3)
    found = discover(nn.Sequential(conv), [_spec(conv, "0", "conv")], torch.randn(1, 3, 8, 8))
    w = conv.weight.detach().double()
    standardised = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), unbiased=False, keepdim=True) + conv.eps)
    torch.testing.assert_close(found["0"].weight, standardised.reshape(4, -1), rtol=1e-5, atol=1e-6)
    assert found["0"].check is None  # discovery only


def test_hooks_and_mode_are_removed_on_error():
    layer = nn.Linear(4, 4)
    capture = LayerCapture([_spec(layer, "fc")], lambda *_: None)
    with pytest.raises(RuntimeError, match="boom"):
        with capture:
            raise RuntimeError("boom")
    assert not layer._forward_pre_hooks and not layer._forward_hooks
    assert len(torch.overrides._get_current_function_mode_stack()) == 0


# -- end to end: statuses in the result, the MLU, the warnings and the cache --------------------------------
@pytest.fixture(scope="module")
def folder_id(tmp_path_factory):
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('capture_images'), per_class=3, size=32)}"


def test_run_flags_broken_unreached_and_small_sample_layers(folder_id, tmp_path):
    from analysis.engine import compute, plan
    from analysis.settings import AnalysisSettings

    the_plan = plan(f"random:vit_tiny_patch16_224?{TINY_VIT_OPTIONS}", folder_id,
                    AnalysisSettings(samples=4, batch_size=2))
    model = the_plan.loaded.model
    broken = model.blocks[0].attn.proj
    broken.forward = lambda x: F.linear(x, broken.weight, broken.bias) * 2.0  # deliberately not y = W x + b
    unused = model.blocks[1].mlp.fc2
    model.blocks[1].mlp.forward = lambda x: model.blocks[1].mlp.fc1(x)[..., : x.shape[-1]]  # fc2 never runs
    result, _ = compute(the_plan)
    table = result.layers.set_index("layer")
    # 4 images x 17 tokens = 68 vectors: >= d_in 48 of qkv/proj/fc1, < d_in 192 of fc2
    assert table.loc["blocks.0.attn.proj", "status"] == status.NOT_EXACT
    assert "self-check failed" in table.loc["blocks.0.attn.proj", "status_reason"]
    assert table.loc["blocks.1.mlp.fc2", "status"] == status.NOT_REACHED
    assert table.loc["blocks.0.mlp.fc2", "status"] == status.TOO_FEW_SAMPLES
    assert table.loc["blocks.0.attn.qkv", "status"] == status.OK
    assert table.loc["blocks.1.mlp.fc1", "status"] == status.OK
    assert unused is model.blocks[1].mlp.fc2
    flagged = table[table["status"] != status.OK]
    assert not flagged["in_mlu"].any()
    counted = table[table["in_mlu"]]
    assert set(counted["status"]) == {status.OK} and len(counted) > 0
    assert result.mlu == pytest.approx(counted["utilization"].mean())
    text = "\n".join(result.warnings)
    for name in ("blocks.0.attn.proj", "blocks.1.mlp.fc2", "blocks.0.mlp.fc2"):
        assert name in text
    assert len(result.warnings) == 3

    from analysis.cache import ResultCache

    cache = ResultCache(tmp_path)
    cache.store(result.key, result)
    again = cache.load(result.key)
    assert list(again.layers["status"]) == list(result.layers["status"])
    assert list(again.layers["status_reason"]) == list(result.layers["status_reason"])
    assert again.warnings == result.warnings and again.mlu == pytest.approx(result.mlu)


def test_functional_qkv_model_end_to_end_counts_every_block_layer(folder_id):
    from analysis.engine import analyze

    result = analyze("random:beit_base_patch16_224?img_size=32&patch_size=8&depth=2&embed_dim=48&num_heads=2"
                     "&num_classes=3", folder_id, samples=6, batch_size=3, use_cache=False)
    table = result.layers.set_index("layer")
    qkv = table[table.index.str.endswith("attn.qkv")]
    assert len(qkv) == 2 and (qkv["n_samples"] == 6 * 17).all()
    assert (qkv["status"] == status.OK).all() and qkv["in_mlu"].all()
    assert set(table["status"]) <= {status.OK, status.TOO_FEW_SAMPLES}


# -- compression carries the effective weight --------------------------------------------------------------
def test_weight_standardised_convs_factorize_into_plain_convs_with_the_effective_weight():
    import timm.layers

    from analysis.compression.factorize import LayerRank, factorize_model
    from analysis.compression.subspaces import LayerSubspace, swappable
    from analysis.spectra import eigen_batched

    torch.manual_seed(6)
    model = nn.Sequential(timm.layers.StdConv2d(3, 6, 3, padding=1), nn.ReLU(),
                          timm.layers.StdConv2dSame(6, 6, 3, stride=2), nn.ReLU(),
                          timm.layers.ScaledStdConv2d(6, 5, 3)).eval()
    specs = [_spec(model[i], str(i), "conv") for i in (0, 2, 4)]
    x = torch.randn(2, 3, 11, 11)
    moments, findings = _run(model, specs, [x])
    subspaces, ranks = {}, []
    for spec in specs:
        m, f = moments[spec.name], findings[spec.name]
        assert swappable(spec, f)
        c_out = output_second_moment(f.weight, m.second_moment, m.column_sum, m.count, f.bias)
        eig_in, eig_out = eigen_batched({"a": m.second_moment})[0]["a"], eigen_batched({"a": c_out})[0]["a"]
        subspaces[spec.name] = LayerSubspace(spec, eig_in, eig_out, weight=f.weight, bias=f.bias, counted=True)
        rank = min(spec.d_in, spec.d_out)  # full rank: W' = W, so the thin pairs must reproduce the model
        ranks.append(LayerRank(spec.name, "conv", spec.d_in, spec.d_out, spec.d_in, spec.d_out, rank, True, 0, 0))
    compressed = factorize_model(model, subspaces, ranks)
    for i in (0, 2, 4):
        assert type(compressed[i].reduce) in (nn.Conv2d, timm.layers.Conv2dSame)  # never re-standardised
    with torch.no_grad():
        torch.testing.assert_close(compressed(x), model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compressed(torch.randn(1, 3, 12, 9)).shape, model(torch.randn(1, 3, 12, 9)).shape)


def test_a_functionally_used_layer_is_counted_but_never_swapped():
    from analysis.compression.factorize import choose_ranks
    from analysis.compression.subspaces import LayerSubspace, swappable
    from analysis.spectra import eigen_batched

    model = _Shared()
    spec = _spec(model.fc, "fc")
    moments, findings = _run(model, [spec], [torch.randn(30, 6)])
    assert not swappable(spec, findings["fc"])
    eig = eigen_batched({"a": moments["fc"].second_moment})[0]["a"]
    sub = LayerSubspace(spec, eig, eig, counted=True, swappable=False)
    (decision,) = choose_ranks({"fc": sub}, 0.5, 0.5)
    assert not decision.factorized and decision.params_kept == decision.params_dense


# -- nn.MultiheadAttention: in_proj and out_proj applied inside F.multi_head_attention_forward -------------
class _SelfAttention(nn.Module):
    """One ``nn.MultiheadAttention`` on token inputs (``(B, L, E)``, or ``(L, B, E)`` without batch_first)."""

    def __init__(self, embed: int, heads: int, batch_first: bool, bias: bool, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=batch_first, bias=bias)
        self.need_weights = need_weights
        if bias:
            with torch.no_grad():  # torch initialises both biases to zero
                self.attn.in_proj_bias.normal_()
                self.attn.out_proj.bias.normal_()

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


def _by_hand_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_proj outputs, out_proj inputs) of batch-first tokens ``x`` (``B, L, E``) by hand in float64: rows
    ``(B L) x 3E`` and ``(B L) x E``, image by image."""
    w = attn.in_proj_weight.detach().double()
    b = attn.in_proj_bias.detach().double() if attn.in_proj_bias is not None else None
    qkv = F.linear(x.double(), w, b)
    batch, length, embed = x.shape
    heads, dh = attn.num_heads, embed // attn.num_heads
    q, k, v = (part.reshape(batch, length, heads, dh).transpose(1, 2) for part in qkv.split(embed, -1))
    mixed = ((q @ k.transpose(-2, -1)) / dh**0.5).softmax(-1) @ v  # B, H, L, dh
    return qkv.reshape(-1, 3 * embed), mixed.transpose(1, 2).reshape(-1, embed)


@pytest.mark.parametrize("batch_first,bias,need_weights", [(True, True, False), (False, True, True),
                                                           (True, False, True), (False, False, False)])
def test_multihead_attention_in_and_out_projections_are_exact(batch_first, bias, need_weights):
    from analysis.uncertainty import half_of

    torch.manual_seed(7)
    model = _SelfAttention(12, 3, batch_first, bias, need_weights).eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    assert [(s.name, s.kind, s.d_in, s.d_out, s.has_bias) for s in specs] == [
        ("attn.in_proj", "attn_qkv", 12, 36, bias), ("attn.out_proj", "attn_proj", 12, 12, bias)]
    real: dict = {"in": 0, "out": 0, "half0": 0}

    def record_output(_module, _args, output):  # out_proj's output is the attention module's output
        rows = output[0].reshape(-1, 12).double()
        real["out"] = real["out"] + rows.T @ rows

    model.attn.register_forward_hook(record_output)
    batches = [torch.randn(4, 5, 12) for _ in range(3)]  # 4 images of 5 tokens, batch-major
    with MomentCollector(specs, halves=True) as collector, torch.inference_mode():
        for i, x in enumerate(batches):
            ids = torch.arange(4 * i, 4 * i + 4)
            collector.begin_batch(ids)
            model(x if batch_first else x.transpose(0, 1))
            collector.next_batch()
            in_out, proj_in = _by_hand_attention(model.attn, x)
            real["in"] = real["in"] + in_out.T @ in_out
            first_half = (half_of(ids) == 0).repeat_interleave(5)
            rows = x.reshape(-1, 12).double()[first_half]
            real["half0"] = real["half0"] + rows.T @ rows
            real["proj_in"] = real.get("proj_in", 0) + proj_in[first_half].T @ proj_in[first_half]
    moments, findings = collector.moments(), collector.findings()
    for name in ("attn.in_proj", "attn.out_proj"):
        assert moments[name].count == 3 * 4 * 5  # every token of every batch (before: 0, "not reached")
        assert findings[name].functional and findings[name].check.passed and findings[name].problem is None
    assert _rel(_analytic(moments, findings, "attn.in_proj"), real["in"]) < RTOL
    assert _rel(_analytic(moments, findings, "attn.out_proj"), real["out"]) < RTOL
    # the sequence-first inputs inside F.multi_head_attention_forward are attributed to their images
    assert collector.half_problems == {}
    halves = collector.half_moments()
    assert _rel(halves[0]["attn.in_proj"].second_moment, real["half0"]) < RTOL
    assert _rel(halves[0]["attn.out_proj"].second_moment, real["proj_in"]) < RTOL


def test_multihead_attention_heads_are_probed_and_per_head_numbers_match_the_real_projections():
    from analysis import heads
    from analysis.spectra import AffineLayer

    torch.manual_seed(8)
    model = _SelfAttention(12, 3, True, True, False).eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    found = heads.attention_layouts(model, specs, input_size=(5, 12))
    assert found.reasons == {}
    (layout,) = found.layouts
    assert layout.arrangement == "part-major [q; k; v]" and layout.layers() == ["attn.in_proj", "attn.out_proj"]
    x = torch.randn(6, 5, 12)
    moments, findings = _run(model, specs, [x])
    affine = {n: AffineLayer(findings[n].weight, findings[n].bias, moments[n].second_moment,
                             moments[n].column_sum, moments[n].count) for n in ("attn.in_proj", "attn.out_proj")}
    extras = {**heads.part_extras(affine["attn.in_proj"], layout.outputs["attn.in_proj"]),
              **heads.proj_in_extras(affine["attn.out_proj"], layout.proj_heads)}
    qkv, proj_in = _by_hand_attention(model.attn, x)

    def same_spectrum(stored, rows: torch.Tensor) -> None:  # float32 forward against float64 by hand
        expected = torch.linalg.eigvalsh(rows.T @ rows).flip(0).clamp_min(0)
        torch.testing.assert_close(torch.from_numpy(stored), expected, rtol=0, atol=1e-5 * float(expected.sum()))

    for i, part in enumerate("qkv"):
        rows = qkv[:, 12 * i : 12 * (i + 1)]
        same_spectrum(extras[f"part.{part}.eig"], rows)
        for h in range(3):
            same_spectrum(extras[f"part.{part}.heads"][h], rows[:, 4 * h : 4 * (h + 1)])
    for h in range(3):
        same_spectrum(extras["part.proj_in.heads"][h], proj_in[:, 4 * h : 4 * (h + 1)])


def test_multihead_cross_attention_in_proj_is_not_exact_with_the_reason():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x.flip(1), x.flip(1), need_weights=False)[0]

    model = Cross().eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    from analysis.capture import layer_status

    moments, findings = _run(model, specs, [torch.randn(2, 3, 8) for _ in range(2)])
    code, reason = layer_status(specs[0], moments["attn.in_proj"].count, findings.get("attn.in_proj"))
    assert code == status.NOT_EXACT and "cross-attention" in reason
    assert findings["attn.out_proj"].check.passed and moments["attn.out_proj"].count == 12


def test_torchvision_vision_transformer_is_ok_on_every_encoder_layer():
    import torchvision

    from analysis import heads
    from analysis.capture import layer_status

    torch.manual_seed(9)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=24, mlp_dim=48, num_classes=5).eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    encoder = [s for s in specs if s.name.startswith("encoder.layers.")]
    assert len(encoder) == 2 * 4 and sum(s.name.endswith("self_attention.in_proj") for s in encoder) == 2
    real: dict = {}
    for s in encoder:
        if s.name.endswith("out_proj"):  # out_proj's output is the attention module's output
            attention = model.get_submodule(s.name.rsplit(".", 1)[0])
            attention.register_forward_hook(lambda _m, _a, out, n=s.name: real.update(
                {n: real.get(n, 0) + out[0].reshape(-1, 24).double().T @ out[0].reshape(-1, 24).double()}))
    moments, findings = _run(model, specs, [torch.randn(3, 3, 32, 32) for _ in range(2)])
    for s in encoder:
        assert moments[s.name].count == 2 * 3 * 17
        assert layer_status(s, moments[s.name].count, findings.get(s.name)) == (status.OK, ""), s.name
        if s.name in real:
            assert _rel(_analytic(moments, findings, s.name), real[s.name]) < RTOL
    found = heads.attention_layouts(model, specs, input_size=(3, 32, 32))
    assert found.reasons == {} and [lo.arrangement for lo in found.layouts] == ["part-major [q; k; v]"] * 2
    # the weights analysed count the packed in-projection, which is not a module of its own
    report = coverage(model, specs)
    assert report.analysed_params == sum(s.d_out * s.d_in + s.d_out * s.has_bias for s in specs)
    assert report.analysed_params == sum(p.numel() for n, p in model.named_parameters()
                                         if n.endswith(("weight", "bias")) and ".ln" not in n and "ln_" not in n)
    assert not any(k.startswith("MultiheadAttention") for k in report.skipped)


# -- tied weights, and inputs changed in place after discovery ------------------------------------------------
class _Tied(nn.Module):
    """Two Linear modules sharing one weight Parameter (own biases), on inputs of rank 2 and rank 3."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, pair):
        x, z = pair
        return self.a(x), self.b(z)


def test_tied_weights_are_attributed_to_the_module_whose_forward_makes_the_call():
    from analysis.metrics import k_at_energy
    from analysis.spectra import output_eigen

    torch.manual_seed(10)
    model = _Tied()
    real: dict = {}

    def record(name: str):
        def hook(_module, _args, out):
            real[name] = real.get(name, 0) + out.double().T @ out.double()
            real[f"n_{name}"] = real.get(f"n_{name}", 0) + len(out)
        return hook

    for name in ("a", "b"):
        getattr(model, name).register_forward_hook(record(name))
    basis_a, basis_b = torch.randn(2, 8), torch.randn(3, 8)
    batches = [(torch.randn(10, 2) @ basis_a, torch.randn(15, 3) @ basis_b) for _ in range(3)]
    specs = [_spec(model.a, "a"), _spec(model.b, "b")]
    moments, findings = _run(model, specs, batches)
    for name, rank in (("a", 3), ("b", 4)):  # rank of the inputs, plus the bias direction
        assert moments[name].count == real[f"n_{name}"]  # before: a saw both modules' inputs, b none
        assert findings[name].check.passed and findings[name].problem is None and not findings[name].functional
        assert _rel(_analytic(moments, findings, name), real[name]) < RTOL
        m, f = moments[name], findings[name]
        values = output_eigen(f.weight, f.bias, m.second_moment, m.column_sum, m.count).values
        k_out = k_at_energy(values.numpy(), 0.9999)
        real_k = k_at_energy(torch.linalg.eigvalsh(real[name]).flip(0).clamp_min(0).numpy(), 0.9999)
        assert k_out == real_k == rank


class _ClampsInPlace(nn.Linear):
    """Changes its input in place before multiplying it: what the pre-hook saw is no longer what is multiplied."""

    def forward(self, x):
        x.clamp_(min=0.0)
        return F.linear(x, self.weight, self.bias)


def test_an_input_changed_in_place_is_caught_by_the_later_batch_re_verification():
    torch.manual_seed(11)
    layer = _ClampsInPlace(6, 4)
    spec = _spec(layer, "fc")
    batches = [torch.randn(20, 6) for _ in range(4)]

    def run(verify_batch):
        with MomentCollector([spec], verify_batch=verify_batch) as collector, torch.inference_mode():
            for i, x in enumerate(batches):
                collector.begin_batch(torch.arange(i * 20, (i + 1) * 20))
                layer(x.clone())
                collector.next_batch()
        return collector.moments()["fc"], collector.findings()["fc"]

    moments, finding = run(None)  # discovery alone: the first batch is right, later ones are not
    assert finding.check.passed and finding.problem is None and finding.hookable
    clamped = torch.cat([x.clamp(min=0.0) for x in batches]).double()
    assert _rel(moments.second_moment, clamped.T @ clamped) > 0.1  # wrong from batch 2 on
    verify = MomentCollector.verification_batch(len(batches), seed=0)
    assert verify in (1, 2, 3)
    _, finding = run(verify)
    assert finding.problem and f"re-verified on batch {verify}" in finding.problem
    from analysis.capture import layer_status

    assert layer_status(spec, moments.count, finding)[0] == status.NOT_EXACT
    # a layer that leaves its input alone passes the same re-verification
    plain = nn.Linear(6, 4)
    with MomentCollector([_spec(plain, "p")], verify_batch=verify) as collector, torch.inference_mode():
        for i, x in enumerate(batches):
            collector.begin_batch(torch.arange(i * 20, (i + 1) * 20))
            plain(x)
            collector.next_batch()
    assert collector.findings()["p"].problem is None


def _discovered(layer: nn.Module, batches: list[torch.Tensor], inspect=None):
    """The finding of ``layer`` (analysed as "fc") after a discovery over ``batches``; ``inspect`` sees its
    self-check sums before the verdict."""
    with LayerCapture([_spec(layer, "fc")], lambda *_: None) as capture, torch.inference_mode():
        for x in batches:
            layer(x)
        if inspect is not None:
            inspect(capture.findings["fc"]._sums)
        capture.end_discovery()
    return capture.findings["fc"]


def _dense_relative_error(layer: nn.Linear, batches: list[torch.Tensor]) -> float:
    """``||C_out - Y^T Y||_F / ||Y^T Y||_F`` computed densely by hand, in float64."""
    x = torch.cat(batches).double()
    with torch.no_grad():
        y = layer(torch.cat(batches)).double()
    b = layer.bias.detach().double() if layer.bias is not None else None
    c_out = output_second_moment(layer.weight.detach().double(), x.T @ x, x.sum(0), len(x), b)
    return float((c_out - y.T @ y).norm() / (y.T @ y).norm())


@pytest.mark.parametrize("rows,d_out,bias", [(40, 300, True), (400, 300, True), (40, 7, False), (40, 300, False)])
def test_self_check_without_d_out_squared_matrices_equals_the_dense_comparison(rows, d_out, bias):
    """Fewer output rows than d_out: the rows are kept instead of ``Y^T Y``; d_out > d_in + 1: ``C_out`` through
    its factor ``K``. The reported relative error is the dense one computed by hand, and a wrong output fails."""
    torch.manual_seed(12)
    layer = nn.Linear(6, d_out, bias=bias)
    batches = [torch.randn(rows // 2, 6) for _ in range(2)]
    check = _discovered(layer, batches).check
    dense = _dense_relative_error(layer, batches)
    # the expanded form ||C_out||^2 - 2 tr(C_out C_real) + ||C_real||^2 cancels in float64: its floor is about
    # sqrt(eps) ~ 1e-8 of ||C_real||, far below the tolerance (~1e-5) it is compared with
    assert check.passed and check.relative_error == pytest.approx(dense, rel=1e-3, abs=1e-7)
    assert check.relative_error < check.tolerance < 1e-4

    shifted = nn.Linear(6, d_out, bias=bias)
    shifted.load_state_dict(layer.state_dict())
    shifted.forward = lambda x: F.linear(x, shifted.weight, shifted.bias) + 0.05  # not the captured call
    assert not _discovered(shifted, batches).check.passed


# -- the self-check's sample: random rows, the same for input and output --------------------------------
@pytest.mark.parametrize("total,chunk", [(10, 4), (6304, 4096), (4097, 4096), (2048, 7), (50_000, 3000)])
def test_self_check_sample_is_the_same_rows_across_chunks_and_reproducible(total, chunk):
    from analysis.capture import CHECK_ROWS, sample_rows, sampled

    rows = torch.arange(total).reshape(-1, 1)
    sample = sample_rows(total, seed=0)
    picked = torch.cat([sampled(rows[start:start + chunk], start, sample) for start in range(0, total, chunk)])
    expected = rows if sample is None else rows[sample]
    assert torch.equal(picked, expected) and len(picked) == min(total, CHECK_ROWS)
    assert torch.equal(picked.flatten(), picked.flatten().unique())  # without replacement, in row order
    again = sample_rows(total, seed=0)
    assert (sample is None and again is None) or torch.equal(sample, again)


def test_self_check_sample_visits_every_column_of_a_feature_map():
    """No aliasing with the grid: a ResNet stem's 32 x 112 x 112 output pixels, every one of the 112 columns
    (an even stride would never visit an odd one) and every image is in the sample."""
    from analysis.capture import sample_rows

    sample = sample_rows(32 * 112 * 112, seed=0)
    assert len(set((sample % 112).tolist())) > 100
    assert set((sample // (112 * 112)).tolist()) == set(range(32))


def test_sampled_self_check_passes_exact_layers_and_catches_an_error_on_a_few_rows_anywhere():
    """A convolution with far more output pixels than the sample: exact, it passes; with its module output
    changed in the bottom-right corner of every image only (2 % of the rows), or in its last column, it fails; a
    linear layer whose output is changed on one token of 197, it fails."""
    from analysis.capture import CHECK_ROWS

    torch.manual_seed(13)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    images = torch.randn(4, 3, 48, 48)  # 9,216 output pixels, more than the sample's rows
    assert 4 * 48 * 48 > 4 * CHECK_ROWS
    _, findings = _run(conv, [_spec(conv, "c", "conv")], [images])
    assert findings["c"].check.passed and findings["c"].check.n_vectors <= CHECK_ROWS

    corner = nn.Conv2d(3, 8, 3, padding=1)
    corner.load_state_dict(conv.state_dict())

    def bottom_right(x):
        y = F.conv2d(x, corner.weight, corner.bias, padding=1).clone()
        y[:, :, -7:, -7:] += 1.0
        return y

    corner.forward = bottom_right
    _, findings = _run(corner, [_spec(corner, "c", "conv")], [images])
    assert not findings["c"].check.passed

    def last_column(x):  # e.g. asymmetric padding read wrong on the right border
        y = F.conv2d(x, corner.weight, corner.bias, padding=1).clone()
        y[..., -1] -= 0.5
        return y

    corner.forward = last_column
    _, findings = _run(corner, [_spec(corner, "c", "conv")], [images])
    assert not findings["c"].check.passed

    token = nn.Linear(16, 12)

    def one_token(x):
        y = F.linear(x, token.weight, token.bias).clone()
        y[:, 5, :] *= 3.0
        return y

    token.forward = one_token
    _, findings = _run(token, [_spec(token, "t")], [torch.randn(16, 197, 16)])
    assert not findings["t"].check.passed


def test_self_check_verdicts_run_single_threaded_on_the_cpu_workers(monkeypatch):
    """Each layer's verdict (float64 products, a factor of G) is a one-thread task, in discovery and in the
    re-verification: on a core shared with other work a 2-thread team's barrier after every small op costs a
    scheduler slice (issue 28)."""
    from analysis import capture

    threads: list[int] = []
    original = capture._CheckSums.verdict

    def recording(self, weight, bias):
        threads.append(torch.get_num_threads())
        return original(self, weight, bias)

    monkeypatch.setattr(capture._CheckSums, "verdict", recording)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 6))
    specs = [_spec(model[0], "0"), _spec(model[2], "2")]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with MomentCollector(specs, verify_batch=1) as collector, torch.inference_mode():
            for i, x in enumerate([torch.randn(30, 12) for _ in range(3)]):
                collector.begin_batch(torch.arange(i * 30, (i + 1) * 30))
                model(x)
                collector.next_batch()
    finally:
        torch.set_num_threads(previous)
    findings = collector.findings()
    assert all(findings[n].check.passed and findings[n].problem is None for n in ("0", "2"))
    assert len(threads) == 4 and set(threads) == {1}  # two layers, discovery and re-verification


def test_gram_factor_is_cholesky_when_definite_and_a_square_root_when_singular():
    from analysis.spectra import gram_factor

    torch.manual_seed(0)
    a = torch.randn(50, 7, dtype=torch.float64)
    definite = a.T @ a
    factor = gram_factor(definite)
    assert torch.equal(factor, torch.tril(factor))  # the Cholesky factor
    torch.testing.assert_close(factor @ factor.T, definite)
    singular = a[:, :3] @ torch.randn(3, 7, dtype=torch.float64)
    singular = singular.T @ singular  # rank 3 of 7
    factor = gram_factor(singular)
    torch.testing.assert_close(factor @ factor.T, singular, rtol=1e-10, atol=1e-10 * singular.abs().max().item())


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((3, 3), 1, 1, 1), ((3, 5), (2, 1), (1, 2), (1, 2)), ((1, 1), 2, 0, 1), ((4, 4), 4, 0, 1), ((3, 3), 1, "same", 2),
    ((2, 3), (1, 2), "valid", 1),
])
def test_sampled_conv_rows_are_the_unfolded_rows_at_the_sample(kernel, stride, padding, dilation):
    """The self-check gathers only its sampled patches of a convolution's input: the very rows (bits) that
    unfolding the whole batch and indexing would give, for strides, dilations and odd "same" padding."""
    from analysis.capture import ConvGeometry, conv_rows, sampled_conv_rows

    torch.manual_seed(7)
    x = torch.randn(5, 3, 13, 11)
    geometry = ConvGeometry.of_call((4, 3, *kernel), stride, padding, dilation)
    every = conv_rows(x, geometry).reshape(-1, 3 * kernel[0] * kernel[1])
    sample = torch.randperm(every.shape[0])[: every.shape[0] // 3].sort().values
    assert torch.equal(sampled_conv_rows(x, geometry, sample), every[sample])
    assert torch.equal(sampled_conv_rows(x[0], geometry, sample[sample < every.shape[0] // 5]),
                       conv_rows(x[0], geometry).reshape(-1, every.shape[1])[sample[sample < every.shape[0] // 5]])


@pytest.mark.parametrize("kernel, padding", [((4, 4), 0), ((16, 16), 0), ((3, 5), 0), ((4, 4), (1, 2)), ((2, 3), "valid")])
def test_non_overlapping_patches_are_unfolded_rows_and_the_convolution(kernel, padding):
    """A convolution whose stride is its kernel (a ViT's patch embedding) takes its rows by a reshape, not
    ``F.unfold``: the same bits, sizes that leave a ragged edge included, and the rows times ``W`` are the
    convolution's output."""
    from analysis.capture import ConvGeometry, conv_rows

    torch.manual_seed(11)
    x = torch.randn(3, 5, 37, 34)
    weight = torch.randn(7, 5, *kernel)
    geometry = ConvGeometry.of_call(weight.shape, kernel, padding, 1)
    rows = conv_rows(x, geometry)
    padded = torch.nn.functional.pad(x, geometry.padding)
    assert torch.equal(rows, torch.nn.functional.unfold(padded, kernel, stride=kernel).transpose(1, 2))
    out = torch.nn.functional.conv2d(x, weight, stride=kernel, padding=padding)
    torch.testing.assert_close(rows @ weight.reshape(7, -1).T, out.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("d_out", [3, 60])
@pytest.mark.parametrize("bias", [True, False])
def test_self_check_with_fewer_rows_than_inputs_equals_the_dense_comparison(d_out, bias):
    """Fewer sampled rows than d_in (a wide convolution): the input rows are kept instead of ``C_in`` and
    ``C_out = Z^T Z`` with ``Z = X W^T + b``; the relative error is the dense one, and a wrong output fails."""
    torch.manual_seed(13)
    layer = nn.Linear(40, d_out, bias=bias)
    batches = [torch.randn(7, 40), torch.randn(5, 40)]  # 12 rows < 40 inputs
    forms = []
    check = _discovered(layer, batches, inspect=lambda sums: forms.append((sums.c_in, len(sums.x_rows)))).check
    assert forms == [(None, 2)]  # the rows form was used
    dense = _dense_relative_error(layer, batches)
    assert check.passed and check.n_vectors == 12
    assert check.relative_error == pytest.approx(dense, rel=1e-3, abs=1e-7) and check.relative_error < check.tolerance

    shifted = nn.Linear(40, d_out, bias=bias)
    shifted.load_state_dict(layer.state_dict())
    shifted.forward = lambda x: F.linear(x, shifted.weight, shifted.bias) * 1.01  # not the captured call
    assert not _discovered(shifted, batches).check.passed
