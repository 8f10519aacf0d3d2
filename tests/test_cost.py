"""The cost guard and the layer-selection options: a run that cannot fit is refused before any data is read,
with the option that makes it fit; --layers / --max-width select layers and are part of the cache key."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from torch import nn

from analysis import cost
from analysis.cli import main
from analysis.engine import analyze, plan
from analysis.errors import SettingsError
from analysis.models import describe_layers
from analysis.settings import AnalysisSettings

from .helpers import TINY_VIT, make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('images'), per_class=2, classes=2)}"


class _Toy(nn.Module):
    """A 3x3 convolution on 10x10 images (8 x 8 = 64 positions, d_in 27) and a Linear on its 64 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc = nn.Linear(16, 40)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(2).transpose(1, 2))


def test_estimate_has_the_known_shapes_and_sizes():
    model = _Toy()
    specs = describe_layers(model)
    tokens = cost.tokens_per_image(model, specs, (3, 10, 10))
    assert tokens == {"conv": 64, "fc": 64}
    est = cost.estimate(model, specs, input_size=(3, 10, 10), images=5, batch_size=5)
    by_name = {layer.name: layer for layer in est.layers}
    # C_in, C_out and the eigenvectors of both, float64 (d_out 16 <= d_in + 1 = 28)
    assert by_name["conv"].memory_bytes == 8 * 2 * (27 ** 2 + 16 ** 2)
    # d_out 40 > d_in + 1 = 17: C_in and its eigenvectors, G (17 x 17) and the 40 x 17 eigenvectors of C_out
    assert by_name["fc"].memory_bytes == 8 * 2 * 16 ** 2 + 8 * (17 ** 2 + 40 * 17)
    assert est.widest_layer == "fc" and est.widest_d == 40
    assert est.memory_bytes >= sum(layer.memory_bytes for layer in est.layers)
    assert est.stats_seconds == pytest.approx(5 * 64 * (27 ** 2 + 16 ** 2) / cost.RATES["cpu"]["stats"])
    assert "about" in est.summary() and "fc" in est.summary()


def test_vgg11_is_refused_before_any_data_or_forward_with_the_option_that_fits(folder, monkeypatch):
    """vgg11's pre_logits.fc1 unfolds to d_in = 512 * 7 * 7 = 25088 (5 GB for C_in alone in float64): on a
    machine with 16 GB available the run is refused at once, naming that layer and a --max-width that fits."""
    import analysis.engine as engine

    monkeypatch.setattr(cost, "available_memory", lambda: 16 * 10 ** 9)

    def no_data_pass(*args, **kwargs):
        raise AssertionError("the statistics pass started before the cost guard refused")

    monkeypatch.setattr(engine, "MomentCollector", no_data_pass)
    monkeypatch.setattr(engine, "make_loader", no_data_pass)
    with pytest.raises(cost.CostError) as caught:
        analyze("random:vgg11", folder, samples=2, use_cache=False)
    message = str(caught.value)
    assert "\n" not in message and "pre_logits.fc1 (d 25088)" in message
    width = int(re.search(r"skip layers wider than (\d+)", message).group(1))
    assert "--" not in message  # words, not command-line flags (the app shows this message too)
    assert width < 25088
    fitted = cost.estimate_plan(plan("random:vgg11", folder, AnalysisSettings(samples=2, max_width=width)))
    assert fitted.fits and fitted.widest_d <= width


def test_layers_and_max_width_select_layers_and_change_the_key(folder):
    base = plan(TINY_VIT, folder, AnalysisSettings(samples=4))
    subset = plan(TINY_VIT, folder, AnalysisSettings(samples=4, layers="blocks.0.*"))
    narrow = plan(TINY_VIT, folder, AnalysisSettings(samples=4, max_width=150))
    assert len({base.key, subset.key, narrow.key}) == 3

    result = analyze(TINY_VIT, folder, samples=4, layers="blocks.0.*,head", use_cache=False)
    assert set(result.layers["layer"]) == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                                           "blocks.0.mlp.fc2", "head"}
    left_out = {item["layer"]: item["reason"] for item in result.not_applicable}
    assert "blocks.1.mlp.fc1" in left_out and "layer filter" in left_out["blocks.1.mlp.fc1"]

    result = analyze(TINY_VIT, folder, samples=4, max_width=150, use_cache=False)
    assert (result.layers[["d_in", "d_out"]].max(axis=1) <= 150).all()
    assert "width limit 150" in {item["layer"]: item["reason"] for item in result.not_applicable}["blocks.0.mlp.fc1"]
    assert 0 < result.meta.weights_analysed_fraction < 0.6
    assert "Linear (not selected)" in result.meta.skipped_module_types


def test_a_pattern_that_matches_nothing_is_a_clear_error(folder):
    with pytest.raises(SettingsError, match=r"no layer .* layer filter 'nothing\.here'.*named like patch_embed\.proj"):
        analyze(TINY_VIT, folder, samples=2, layers="nothing.here", use_cache=False)
    with pytest.raises(SettingsError, match="max_width must be a positive integer"):
        analyze(TINY_VIT, folder, samples=2, max_width=0, use_cache=False)


def test_cli_prints_the_analysed_weights_and_takes_the_options(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["run", "--model", TINY_VIT, "--dataset", folder, "--samples", "2", "--quiet",
                 "--layers", "blocks.*", "--max-width", "150", "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("weights"))
    assert "of the parameters analysed" in line and "Linear (not selected)" in line
    assert "blocks.1.attn.qkv" in out and "patch_embed.proj" not in out.split("not analysed")[0]


def test_a_wide_head_costs_its_small_problem_and_is_not_refused(folder, monkeypatch):
    """tiny_vit_5m_224's default head maps 320 features to 21,841 classes: C_out has rank <= 321, so its
    spectrum needs the 321-sized problem and 21,841 x 321 eigenvectors, not two 21,841^2 matrices (7.6 GB);
    before, the run was refused ("would need about 23.3 GB")."""
    monkeypatch.setattr(cost, "available_memory", lambda: 16 * 10 ** 9)
    the_plan = plan("random:tiny_vit_5m_224", folder, AnalysisSettings(samples=2, batch_size=2))
    est = cost.guard_plan(the_plan)  # not refused
    head = next(layer for layer in est.layers if layer.name == "head.fc")
    assert (head.d_in, head.d_out, head.m) == (320, 21841, 321)
    # C_in in two halves (error bars) and its eigenvectors; G and the eigenvectors of the small problem
    assert head.memory_bytes == 8 * 3 * 320 ** 2 + 8 * (321 ** 2 + 21841 * 321)
    assert est.memory_bytes < 2 * 10 ** 9 and est.fits
