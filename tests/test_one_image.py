"""One image against the dataset's subspaces (:mod:`analysis.one_image`): known answers.

- a planted k-dimensional subspace: an image inside it puts all its energy there (fraction 1, own rank k);
  one with a known orthogonal part puts exactly ``||inside||^2 / ||all||^2`` there;
- the per-vector losses sum to the image's preservation error computed directly from W, a dense W' and X;
- on a real (tiny) ViT analysis, every image of the analysed set has fraction 1 and loss 0 at energy 1, and the
  per-image losses, weighted by each image's ``||W X||^2``, add up to the dataset's stored preservation error;
- a bright patch planted in one cell of an image whose every other patch the dataset has seen is where the
  residual heatmap peaks: for a ViT (its sequence with a class token, and its patch embedding) and for a CNN
  (a strided, padded convolution);
- prefix tokens are named from timm's models; unknown layers, indices and keys are clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from analysis.compression.subspaces import layer_subspaces
from analysis.engine import analyze, raw_moments
from analysis.errors import AnalysisError, SettingsError
from analysis.models import describe_layers
from analysis.one_image import (
    TokenGrid, analyse_image, display_image, one_image, open_analysis, prefix_token_names, token_grid,
)
from analysis.projection import project_weight
from analysis.statistics import MomentCollector
from tests.helpers import TINY_VIT

DATASET = "fashion-mnist:test"


def subspaces_of(model: nn.Module, inputs: torch.Tensor, centred: bool = False) -> dict:
    """The production path on a hand-made dataset: streamed moments -> raw moments -> layer subspaces."""
    specs = [s for s in describe_layers(model) if s.applicable]
    with MomentCollector(specs) as collector, torch.inference_mode():
        model(inputs)
        collector.next_batch()
    moments = raw_moments(collector.moments())
    dataset = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.long))
    return layer_subspaces(model, dataset, None, moments, centred=centred)


# ------------------------------------------------------------------------------------------ planted subspace
@pytest.fixture(scope="module")
def planted():
    """A linear layer on sequences of 16-d vectors that all lie in a 4-d subspace (equal energy per direction)."""
    torch.manual_seed(0)
    d, k = 16, 4
    basis = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    inside, outside = basis[:, :k], basis[:, k:]
    layer = nn.Sequential(nn.Linear(d, 12))
    coefficients = torch.linalg.qr(torch.randn(600, k, dtype=torch.float64))[0] * 30  # equal energies
    data = (coefficients @ inside.T).reshape(60, 10, d).float()  # 60 "images" of 10 vectors each (float32)
    return layer, inside, outside, subspaces_of(layer, data)


def test_an_image_inside_the_planted_subspace_puts_all_its_energy_there(planted):
    layer, inside, _, subspaces = planted
    image = torch.randn(10, 4, dtype=torch.float64) @ inside.T
    (item,), missing = analyse_image(layer, subspaces, image, 0.99, 0.99)
    assert not missing
    assert item.k_in == 4  # the dataset's subspace is the planted one
    assert item.energy_fraction == pytest.approx(1.0, abs=1e-12)
    assert item.own_rank == 4  # ten generic vectors of a 4-d space, not held at 99 % by fewer
    assert item.vectors == 10


def test_the_energy_fraction_of_a_mixed_image_is_its_inside_share(planted):
    layer, inside, outside, subspaces = planted
    part_in = torch.randn(10, 4, dtype=torch.float64) @ inside.T
    part_out = 0.5 * torch.randn(10, 12, dtype=torch.float64) @ outside.T
    image = (part_in + part_out).float()  # the model's dtype
    (item,), _ = analyse_image(layer, subspaces, image, 0.99, 0.99)
    x = image.double()
    expected = float((x @ inside).square().sum() / x.square().sum())
    assert item.energy_fraction == pytest.approx(expected, rel=1e-6)
    assert 0.3 < expected < 0.95


@pytest.mark.parametrize("energy_out", [0.5, 0.9, 1.0])
def test_the_per_vector_losses_sum_to_the_images_exact_preservation_error(planted, energy_out):
    layer, inside, outside, subspaces = planted
    x = torch.randn(10, 4, dtype=torch.float64) @ inside.T + 0.3 * torch.randn(10, 12, dtype=torch.float64) @ outside.T
    x = x.float().double()  # what the float32 model multiplies
    (item,), _ = analyse_image(layer, subspaces, x.float(), 0.99, energy_out)
    subspace = subspaces["0"]
    w = layer[0].weight.detach().to(torch.float64)
    w_projected = project_weight(w, subspace.eig_in.vectors, subspace.eig_out.vectors, item.k_in, item.k_out)
    direct = float(((x @ (w - w_projected).T).square().sum()) / (x @ w.T).square().sum())
    assert item.loss == pytest.approx(direct, rel=1e-10)
    assert float(np.sum(item.losses)) == pytest.approx(direct, rel=1e-10)
    assert item.norm == pytest.approx(float((x @ w.T).square().sum()), rel=1e-12)
    assert direct > 1e-3  # the off-subspace part is lost: a real error, not zero against zero


def test_a_centred_analysis_measures_the_image_around_the_dataset_mean(planted):
    """Data = a constant shift + the planted subspace: centred, the shift is gone and an image made of the
    shift plus a subspace vector lies wholly in the (centred) subspace."""
    layer, inside, outside, _ = planted
    shift = 5.0 * outside[:, 0]
    data = (torch.randn(600, 4, dtype=torch.float64) @ inside.T + shift).reshape(60, 10, 16).float()
    subspaces = subspaces_of(layer, data, centred=True)
    assert subspaces["0"].mean is not None
    image = (torch.randn(10, 4, dtype=torch.float64) @ inside.T + shift).float()
    (item,), _ = analyse_image(layer, subspaces, image, 0.999, 0.999)
    assert item.k_in <= 4
    assert item.energy_fraction == pytest.approx(1.0, abs=1e-6)
    uncentred = subspaces_of(layer, data)
    (plain,), _ = analyse_image(layer, uncentred, image, 0.999, 0.999)
    assert plain.k_in == 5  # uncentred, the mean direction is one more


# ------------------------------------------------------------------------------------------ a real analysis
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("one-image-cache"))
    result = analyze(TINY_VIT, DATASET, samples=12, cache_dir=cache_dir)
    return result, open_analysis(result.key[:10], cache_dir=cache_dir), cache_dir


FLOAT32_MOMENTS = 1e-6
"""The stored C_in sums float32 Gram products (relative error ~1e-7), so a direction it calls empty may still
hold ~1e-7 of an image's energy (measured: 4e-8 on the tiny ViT's attn.proj, whose inputs span 44 of 48)."""


def test_every_image_of_the_analysed_set_lies_in_the_subspace_at_energy_one(tiny):
    _, measured, _ = tiny
    for index in (0, 7):
        report = one_image(measured, index, 1.0, 1.0)
        assert len(report.layers) == len(measured.subspaces) and not report.missing
        for item in report.layers:
            assert item.energy_fraction == pytest.approx(1.0, abs=FLOAT32_MOMENTS), item.layer
            assert item.loss < FLOAT32_MOMENTS, item.layer
    at_99 = one_image(measured, 0, 0.9, 0.9)
    assert min(item.energy_fraction for item in at_99.layers) < 0.999  # the known answer is not a tautology


def test_per_image_losses_add_up_to_the_datasets_preservation_error(tiny):
    """sum_images loss_i ||W X_i||^2 / sum_images ||W X_i||^2 = ||(W - W')X||^2 / ||WX||^2 over the dataset:
    the image's capture is the analysis' capture."""
    result, measured, _ = tiny
    reports = [one_image(measured, i, 0.9, 0.95) for i in range(len(measured.dataset))]
    table = result.at_energy(0.9, 0.95).layers.set_index("layer")
    for j, item in enumerate(reports[0].layers):
        lost = sum(r.layers[j].loss * r.layers[j].norm for r in reports)
        total = sum(r.layers[j].norm for r in reports)
        assert lost / total == pytest.approx(float(table.at[item.layer, "preservation_error"]), rel=1e-4, abs=1e-9), item.layer
        assert item.dataset_error == float(table.at[item.layer, "preservation_error"])


def test_the_keep_moments_twin_is_stored_once_and_its_absence_is_a_clear_error(tiny, tmp_path):
    result, measured, cache_dir = tiny
    assert not measured.from_cache  # the analysis had no moments: its twin was computed
    again = open_analysis(result.key, cache_dir=cache_dir, compute_missing=False)
    assert again.from_cache and again.result.key == result.key
    other = str(tmp_path / "other-cache")
    fresh = analyze(TINY_VIT, DATASET, samples=12, cache_dir=other)
    with pytest.raises(AnalysisError, match="raw moments"):
        open_analysis(fresh.key, cache_dir=other, compute_missing=False)
    with pytest.raises(AnalysisError, match="no cached analysis"):
        open_analysis("abcdef", cache_dir=other)


def test_subspaces_of_an_analysis_that_cannot_be_reproduced_are_refused(tiny):
    """The moments' key comes from the stored key parts (no model load); planning that gives another key
    (other weights, data or code) is refused rather than giving another analysis' subspaces."""
    from analysis.compression.subspaces import checked_plan, moments_key, result_plan
    from analysis.one_image import subspaces_ready

    result, _, cache_dir = tiny
    assert moments_key(result) == result_plan(result).key
    assert subspaces_ready(result, cache_dir) == (True, moments_key(result))
    parts = dict(result.meta.key_parts, weights="0" * 64)
    changed = type(result)(meta=result.meta.replace(key_parts=parts), spectra=result.spectra,
                           not_applicable=result.not_applicable, energy_in=result.energy_in,
                           energy_out=result.energy_out)
    assert subspaces_ready(changed, cache_dir)[0] is False
    with pytest.raises(AnalysisError, match="cannot be reproduced here.*weights"):
        checked_plan(changed)


def test_bad_index_and_layer_are_clear_errors(tiny):
    _, measured, _ = tiny
    with pytest.raises(SettingsError, match="out of range: the analysis has 12 images"):
        one_image(measured, 12)
    with pytest.raises(SettingsError, match="out of range"):
        one_image(measured, -1)
    with pytest.raises(SettingsError, match="unknown layer 'blocks.9.mlp.fc1'"):
        one_image(measured, 0, layers=["blocks.9.mlp.fc1"])
    with pytest.raises(SettingsError, match="energy_in"):
        one_image(measured, 0, 1.5)


def test_cli_prints_the_table_and_one_layers_heatmap(tiny, monkeypatch, capsys):
    from analysis.cli import main

    result, measured, cache_dir = tiny
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", cache_dir)
    assert main(["image", result.key[:8], "--index", "3", "--energy-in", "0.9"]) == 0
    out = capsys.readouterr().out
    expected = one_image(measured, 3, 0.9, result.energy_out)
    assert "image      3 of 12 in fashion-mnist:test" in out and "energies   in 0.9  out 0.99" in out
    for item in expected.layers:
        line = next(line for line in out.splitlines() if line.split()[:1] == [item.layer])
        assert f"{item.energy_fraction:.4g}" in line and f" {item.own_rank} " in line, line
    assert main(["image", result.key, "--index", "3", "--layer", "blocks.1.mlp.fc1"]) == 0
    out = capsys.readouterr().out
    assert "class      loss" in out and "per-vector loss on the 4x4 grid" in out
    assert main(["image", result.key, "--index", "12"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["image", result.key, "--index", "0", "--layer", "nope"]) == 2
    assert "unknown layer 'nope'" in capsys.readouterr().err
    assert main(["image", "0000000", "--index", "0"]) == 2
    assert "no cached analysis" in capsys.readouterr().err


def test_the_thumbnail_is_the_de_normalised_input(tiny):
    result, measured, _ = tiny
    image, _ = measured.dataset[0]
    picture = display_image(image, result.meta.data_config)
    assert picture.shape == (image.shape[1], image.shape[2], 3) and picture.dtype == np.uint8
    mean = np.array(result.meta.data_config["mean"])[:, None, None]
    std = np.array(result.meta.data_config["std"])[:, None, None]
    expected = np.clip(image.numpy() * std + mean, 0, 1).transpose(1, 2, 0) * 255
    assert np.abs(picture - expected).max() <= 0.51


# ------------------------------------------------------------------------------------------ grids
def _vit(**options) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                             embed_dim=64, num_heads=2, num_classes=3, **options).eval()


def _constant_images(levels: list[list[float]], size: int) -> torch.Tensor:
    return torch.tensor(levels, dtype=torch.float32)[:, :, None, None].expand(-1, -1, size, size).contiguous()


def test_a_planted_patch_peaks_at_its_cell_in_a_vit():
    model = _vit()
    # four affinely independent colours: the outputs W x + b then span b too, so W' = W on every seen patch
    dataset = _constant_images([[0.2, -0.1, 0.4], [-0.5, 0.3, 0.1], [0.9, 0.8, -0.7], [0.1, 0.1, 0.6]], 32)
    subspaces = subspaces_of(model, dataset)
    image = dataset[1].clone()
    image[0, 16:24, 8:16] += torch.linspace(-2, 2, 64).reshape(8, 8)  # patch row 2, column 1
    found, _ = analyse_image(model, subspaces, image, 0.999999, 1.0, layers=["patch_embed.proj", "blocks.0.attn.qkv"])
    embed, qkv = found
    assert embed.grid == TokenGrid(shape=(4, 4))
    assert qkv.grid == TokenGrid(prefix=("class",), shape=(4, 4))
    for item in (embed, qkv):
        heatmap = item.heatmap()
        assert np.unravel_index(np.argmax(heatmap), heatmap.shape) == (2, 1), item.layer
        others = np.delete(heatmap.ravel(), 2 * 4 + 1)
        assert others.max() < 1e-3 * heatmap[2, 1], item.layer
        assert heatmap[2, 1] == pytest.approx(item.loss, rel=1e-3)
    assert qkv.prefix_losses()["class"] < 1e-3 * qkv.heatmap()[2, 1]


def test_a_planted_pixel_peaks_at_its_output_cell_in_a_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()
    dataset = _constant_images([[0.2, -0.1, 0.4], [-0.5, 0.3, 0.1], [0.9, 0.8, -0.7], [0.1, 0.1, 0.6]], 16)
    subspaces = subspaces_of(model, dataset)
    image = dataset[2].clone()
    image[0, 10, 6] += 3.0  # only output position (5, 3) of the stride-2, padding-1 3x3 convolution sees it
    found, _ = analyse_image(model, subspaces, image, 0.999999, 1.0, layers=["0", "4"])
    conv, head = found
    assert conv.grid == TokenGrid(shape=(8, 8)) and conv.vectors == 64
    heatmap = conv.heatmap()
    assert np.unravel_index(np.argmax(heatmap), heatmap.shape) == (5, 3)
    assert np.delete(heatmap.ravel(), 5 * 8 + 3).max() < 1e-6 * heatmap[5, 3]
    assert head.heatmap() is None and "pooled" in head.grid.reason


def test_grids_from_shapes():
    assert token_grid((1, 7, 7, 96), None, 49) == TokenGrid(shape=(7, 7))  # a linear layer on (B, H, W, C)
    assert token_grid((1, 19, 48), None, 19, ("class", "distillation", "register 1"), (4, 4)).shape == (4, 4)
    assert token_grid((1, 16, 48), None, 16, ("class",), (4, 4)) == TokenGrid(shape=(4, 4))  # no prefix here
    assert token_grid((4, 49, 96), None, 196, (), (14, 14)).shape is None  # windowed attention
    assert "2 times" in token_grid((1, 17, 48), None, 34, ("class",), (4, 4), calls=2).reason
    assert token_grid((1, 30, 48), None, 30, ("class",), (4, 4)).shape is None


def test_prefix_tokens_are_named_from_the_model():
    import timm

    assert prefix_token_names(_vit()) == ("class",)
    assert prefix_token_names(_vit(reg_tokens=2)) == ("class", "register 1", "register 2")
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                  depth=1, embed_dim=48, num_heads=2, num_classes=3)
    assert prefix_token_names(distilled) == ("class", "distillation")
    assert prefix_token_names(_vit(class_token=False, global_pool="avg")) == ()
    assert prefix_token_names(nn.Linear(2, 2)) == ()
