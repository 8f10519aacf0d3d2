"""Layers without a defined k get their own status and never count (DESIGN.md, "Which layers count"): an
input that does not depend on the image, a zero input or output energy. Known answers from real outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import metrics, status
from analysis.capture import LayerCapture
from analysis.models.layers import LayerSpec, describe_layers
from analysis.spectra import AffineLayer, eigen_batched, energy_status, output_eigen
from analysis.statistics import MomentCollector

from .helpers import make_image_folder

WIDTH = 8


class ToyBlock(nn.Module):
    """``fc`` sees the tokens; ``pos_proj`` a fixed index buffer, the same for every image (ConViT's
    ``pos_proj``); ``dead`` has zero weight and bias; ``after_relu`` sees ``relu(-|x| - 1) = 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.pos_proj = nn.Linear(3, WIDTH)
        self.dead = nn.Linear(WIDTH, WIDTH)
        self.after_relu = nn.Linear(WIDTH, WIDTH)
        self.register_buffer("index", torch.randn(16, 3))
        with torch.no_grad():
            self.dead.weight.zero_()
            self.dead.bias.zero_()

    def forward(self, x):
        pos = self.pos_proj(self.index.expand(x.shape[0], -1, -1))
        return x + self.fc(x) + pos + self.dead(x) + self.after_relu(torch.relu(-x.abs() - 1))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.blocks = nn.Sequential(ToyBlock(), ToyBlock())
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.fixture()
def toy_source(monkeypatch):
    from analysis.models import registry
    from analysis.models.registry import SourceModel

    class ToySource:
        prefix = "toy"

        def load(self, name, options):
            torch.manual_seed(0)
            return SourceModel(Toy(), "toy", "a toy with degenerate layers", data_config={
                "input_size": (3, 8, 8), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
                "crop_pct": 1.0, "crop_mode": "center"})

        def catalogue(self):
            return []

    registry.catalogue()
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    registry.register_source(ToySource())
    return "toy:x"


def test_fixed_and_zero_layers_get_their_status_and_undefined_k(toy_source, tmp_path, capsys, monkeypatch):
    from analysis.cli import main
    from analysis.engine import analyze

    folder = make_image_folder(tmp_path / "images", per_class=2, size=8)
    result = analyze(toy_source, f"folder:{folder}", samples=4, batch_size=2, use_cache=False)
    table = result.layers.set_index("layer")
    for i in (0, 1):
        block = f"blocks.{i}"
        assert table.loc[f"{block}.fc", "status"] == status.OK and table.loc[f"{block}.fc", "in_mlu"]
        assert table.loc[f"{block}.pos_proj", "status"] == status.FIXED_INPUT
        assert table.loc[f"{block}.dead", "status"] == status.ZERO_OUTPUT
        assert table.loc[f"{block}.after_relu", "status"] == status.ZERO_INPUT
        for name in ("pos_proj", "dead", "after_relu"):
            assert not table.loc[f"{block}.{name}", "in_mlu"]
        # k undefined: missing, never a number (before: the jitter made k_out = ceil(0.99 d_out))
        assert pd_na(table.loc[f"{block}.dead", "k_out"]) and table.loc[f"{block}.dead", "k_in"] > 0
        assert pd_na(table.loc[f"{block}.after_relu", "k_in"]) and pd_na(table.loc[f"{block}.after_relu", "k_out"])
        assert math.isnan(table.loc[f"{block}.dead", "utilization"])
    assert result.mlu == pytest.approx(table.loc[table["in_mlu"], "utilization"].mean())
    text = "\n".join(result.warnings)
    for word in (status.FIXED_INPUT, status.ZERO_OUTPUT, status.ZERO_INPUT):
        assert f"2 layers {word}, not counted in the MLU" in text
    assert "exactly zero" in table.loc["blocks.0.dead", "status_reason"]
    # the statuses travel through the cache and the CLI
    from analysis.cache import ResultCache

    cache = ResultCache(tmp_path / "cache")
    cache.store(result.key, result)
    again = cache.load(result.key)
    assert list(again.layers["status"]) == list(result.layers["status"]) and again.warnings == result.warnings
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["show", result.key[:10]]) == 0
    captured = capsys.readouterr()
    assert "zero output" in captured.out and "fixed input" in captured.err


def pd_na(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _run(model: nn.Module, specs: list[LayerSpec], batches: list[torch.Tensor]):
    with MomentCollector(specs) as collector, torch.inference_mode():
        for i, x in enumerate(batches):
            collector.begin_batch(torch.arange(i * len(x), (i + 1) * len(x)))
            model(x)
            collector.next_batch()
    return collector


def _affine(collector: MomentCollector, name: str) -> AffineLayer:
    moments, findings = collector.moments()[name], collector.findings()[name]
    return AffineLayer(findings.weight, findings.bias, moments.second_moment, moments.column_sum, moments.count)


def test_a_gain_zero_scaled_std_conv_has_zero_output_like_its_real_outputs():
    import timm.layers

    torch.manual_seed(1)
    conv = timm.layers.ScaledStdConv2d(4, 6, 3, gain_init=0.0)  # NF-Net's zero-init residual branch
    with torch.no_grad():
        conv.bias.zero_()  # as timm's NF-Net initialisation
    real = {}
    conv.register_forward_hook(lambda _m, _a, out: real.setdefault("max", float(out.abs().max())))
    spec = LayerSpec.of("conv", conv, "conv")
    collector = _run(conv, [spec], [torch.randn(2, 4, 9, 9) for _ in range(2)])
    assert real["max"] == 0.0  # the known answer: its real output is zero
    found = energy_status(_affine(collector, "conv"))
    assert found is not None and found[0] == status.ZERO_OUTPUT and "exactly zero" in found[1]
    assert collector.fixed_inputs() == set()
    with torch.no_grad():
        conv.gain.fill_(1.0)
    assert energy_status(_affine(_run(conv, [spec], [torch.randn(2, 4, 9, 9)]), "conv")) is None


def test_an_output_that_is_only_rounding_is_zero_and_a_small_weight_is_not():
    """Inputs in a subspace the weight's rows are orthogonal to: ``W x = 0`` up to rounding, and the real
    float32 outputs are rounding noise within the self-check's bound (the analytic ``C_out`` of float32
    statistics resolves even less); the same weight scaled by 1e-6 on its own subspace is a real (small)
    signal."""
    torch.manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    inside, outside = q[:, :6], q[:, 6:]
    layer = nn.Linear(16, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_((torch.randn(5, 10, dtype=torch.float64) @ outside.T).float())
    x = (torch.randn(200, 6, dtype=torch.float64) @ inside.T).float()
    spec = LayerSpec.of("fc", layer)
    collector = _run(layer, [spec], [x])
    affine = _affine(collector, "fc")
    with torch.no_grad():
        y = layer(x).double()
    products = float((affine.weight.square() * torch.diagonal(affine.c_in)).sum())
    bound = (math.sqrt(2) + math.sqrt(16)) * 2.0**-24 * math.sqrt(products)
    assert 0 < float(y.norm()) <= bound  # the real outputs: rounding, below the bound
    assert energy_status(affine)[0] == status.ZERO_OUTPUT
    with torch.no_grad():
        layer.weight.copy_((1e-6 * torch.randn(5, 6, dtype=torch.float64) @ inside.T).float())
    assert energy_status(_affine(_run(layer, [spec], [x]), "fc")) is None


def test_an_input_the_same_for_every_image_is_fixed_and_a_varying_one_is_not():
    torch.manual_seed(3)
    block = ToyBlock()
    specs = [LayerSpec.of(f"{n}", getattr(block, n)) for n in ("fc", "pos_proj")]
    collector = _run(block, specs, [torch.randn(3, 16, WIDTH) for _ in range(2)])
    assert collector.fixed_inputs() == {"pos_proj"}
    single = _run(block, specs, [torch.randn(1, 16, WIDTH)])  # one image per batch: nothing to compare
    assert single.fixed_inputs() == set()


@pytest.mark.parametrize("d_out", [6, 40])  # direct, and through the (d_in + 1) problem
def test_the_jitter_never_creates_dimensions(d_out):
    torch.manual_seed(4)
    zero = torch.zeros(12, 12, dtype=torch.float64)
    values = eigen_batched({"z": zero})[0]["z"].values
    assert torch.count_nonzero(values) == 0 and metrics.k_at_energy(values.numpy(), 0.99) == 0
    v = torch.randn(12, 1, dtype=torch.float64)
    rank_one = eigen_batched({"r": v @ v.T})[0]["r"].values.numpy()
    assert metrics.k_at_energy(rank_one, 1.0) == 1  # before: the jitter's d - 1 tiny eigenvalues gave 12
    x = torch.randn(30, 2, dtype=torch.float64) @ torch.randn(2, 12, dtype=torch.float64)  # inputs of rank 2
    w = torch.randn(d_out, 12, dtype=torch.float64)
    out = output_eigen(w, None, x.T @ x, x.sum(0), 30).values.numpy()
    assert metrics.k_at_energy(out, 1.0) == 2 and np.all(out[2:] <= 1e-10 * out[0])


def test_parametrized_weights_count_as_analysed():
    """Coverage counts a parametrized layer's ``original*`` tensors as the weights analysed (before: 14 % and
    ``ParametrizationList.original0`` listed as skipped)."""
    from torch.nn.utils.parametrizations import weight_norm

    from analysis.models.layers import coverage

    model = nn.Sequential(weight_norm(nn.Linear(6, 6)), nn.ReLU(), weight_norm(nn.Linear(6, 6)))
    specs = describe_layers(model)
    report = coverage(model, specs)
    assert report.fraction == 1.0 and report.skipped == {}
    assert report.analysed_params == sum(p.numel() for p in model.parameters())


def test_capture_hooks_stay_exact_on_the_toy():
    """The toy's functional pieces are plain module calls: every layer is captured by its own forward."""
    torch.manual_seed(5)
    model = Toy().eval()
    specs = [s for s in describe_layers(model, (3, 8, 8)) if s.applicable]
    with LayerCapture(specs, lambda *_: None) as capture, torch.inference_mode():
        model(torch.randn(2, 3, 8, 8))
        capture.end_discovery()
    assert all(f.check.passed for f in capture.findings.values())
