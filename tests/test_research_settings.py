"""Token sets, centred statistics, split-half error bars and the convergence curve: known answers.

- class token only on a ViT whose class token is constant at the first block (class token + its position
  embedding, the same for every image) gives k = 1 there;
- excluding registers changes nothing on a model without registers, and drops exactly the registers on one
  with them (checked against moments computed directly from the captured sequences);
- centred statistics equal the uncentred ones minus the mean direction, and do not move when the data are
  shifted by a large constant;
- split-half error bars shrink as samples grow (seeded Gaussian data with a decaying spectrum);
- the convergence curve's snapshot equals an analysis of exactly the images seen at that point, and its last
  point is the result itself.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from analysis import centring, uncertainty
from analysis.engine import analyze, plan
from analysis.errors import SettingsError
from analysis.models import describe_layers
from analysis.settings import AnalysisSettings
from analysis.spectra import AffineLayer
from analysis.statistics import MomentCollector
from analysis.tokens import TokenLayout, TokenSet
from tests.helpers import TINY_VIT, make_image_folder

DATASET = "fashion-mnist:test"
SAMPLES = 48
REGISTERS = 3
TINY_VIT_REGISTERS = f"{TINY_VIT}&reg_tokens={REGISTERS}"


def _run(model: str = TINY_VIT, **settings):
    settings.setdefault("use_cache", False)
    return analyze(model, DATASET, samples=SAMPLES, batch_size=16, **settings)


# ------------------------------------------------------------------------------------------- token sets


def test_token_set_specs_parse_to_canonical_text_and_reject_nonsense():
    assert TokenSet.parse("center").spec == "centre:0.5"
    assert TokenSet.parse("no-outliers:2.50").spec == "no-outliers:2.5"
    assert TokenSet.parse("CLS").spec == "cls"
    for bad in ("foo", "no-outliers", "no-outliers:0", "no-outliers:100", "centre:1.5", "cls:3", "", None, 3):
        with pytest.raises(SettingsError):
            TokenSet.parse(bad)


def test_class_token_only_gives_rank_one_where_the_class_token_is_constant():
    result = _run(token_set="cls")
    row = result.layers.set_index("layer").loc["blocks.0.attn.qkv"]
    assert row["n_samples"] == SAMPLES  # one vector per image
    assert (row["k_in"], row["k_out"]) == (1, 1)
    assert row["tokens"] == "class token"
    assert result.meta.token_set == "cls"
    # the patch embedding sees no class token: not reached, said so, and not in the MLU
    patch = result.layers.set_index("layer").loc["patch_embed.proj"]
    assert patch["status"] == "not reached" and "class token" in patch["status_reason"]
    assert not patch["in_mlu"]


def test_class_token_set_is_refused_at_once_for_a_model_without_one():
    with pytest.raises(SettingsError, match="class token"):
        plan("random:resnet18?num_classes=5", DATASET, AnalysisSettings(samples=8, token_set="cls"))


def test_excluding_registers_changes_nothing_without_registers():
    everything, no_registers = _run(), _run(token_set="no-registers")
    assert everything.key != no_registers.key  # the setting is part of the cache key
    for a, b in zip(everything.spectra, no_registers.spectra):
        assert a.n_samples == b.n_samples
        np.testing.assert_array_equal(a.eig_in, b.eig_in)
        np.testing.assert_array_equal(a.eig_out, b.eig_out)


def test_excluding_registers_drops_exactly_the_register_tokens():
    result = _run(TINY_VIT_REGISTERS, token_set="no-registers", keep_moments=True, uncertainty=False,
                  use_cache=True)
    layout = TokenLayout.of_model(plan(TINY_VIT_REGISTERS, DATASET, AnalysisSettings(samples=SAMPLES)).loaded.model)
    assert layout.n_registers == REGISTERS and layout.cls_index == 0
    tokens = layout.prefix + layout.n_patches
    table = result.layers.set_index("layer")
    assert table.loc["blocks.0.mlp.fc1", "n_samples"] == SAMPLES * (tokens - REGISTERS)
    assert table.loc["patch_embed.proj", "n_samples"] == SAMPLES * layout.n_patches  # no registers there

    # the same statistics directly: the sequences entering blocks.1.attn.qkv without the register positions
    the_plan = plan(TINY_VIT_REGISTERS, DATASET, AnalysisSettings(samples=SAMPLES, token_set="no-registers",
                                                                  keep_moments=True, uncertainty=False))
    model = the_plan.loaded.model
    seen = []
    handle = model.blocks[1].attn.qkv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for i in range(len(the_plan.dataset)):
            model(the_plan.dataset[i][0].unsqueeze(0))
    handle.remove()
    x = torch.cat(seen).to(torch.float64)
    start, stop = layout.registers
    keep = [t for t in range(tokens) if not start <= t < stop]
    rows = x[:, keep].reshape(-1, x.shape[-1])
    from analysis.cache import ResultCache

    moments = ResultCache().load_moments(result.key)
    expected = (rows.T @ rows).numpy()  # float32 forward at batch 1 against batch 16: agree to ~1e-5
    np.testing.assert_allclose(moments["blocks.1.attn.qkv|C_in"].numpy(), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    with_registers = x.reshape(-1, x.shape[-1])  # what keeping them would give: clearly different
    assert np.abs((with_registers.T @ with_registers).numpy() - expected).max() > 1e-2 * np.abs(expected).max()


def test_centre_crop_keeps_the_central_positions_of_convolutions_and_patch_grids():
    result = _run(token_set="centre:0.5")
    table = result.layers.set_index("layer")
    assert table.loc["patch_embed.proj", "n_samples"] == SAMPLES * 4  # 2x2 of the 4x4 patch grid
    assert table.loc["blocks.0.mlp.fc1", "n_samples"] == SAMPLES * 4  # prefix tokens dropped, 2x2 patches
    assert table.loc["blocks.0.mlp.fc1", "tokens"] == "centre 2x2 of 4x4"
    cnn = analyze("random:resnet18?num_classes=5", DATASET, samples=8, use_cache=False, token_set="centre:0.5",
                  uncertainty=False, layers="conv1,fc")  # the stem and the head suffice (and keep it quick)
    conv = cnn.layers.set_index("layer").loc["conv1"]
    # resnet18's stem on a 224x224 input: 112x112 output positions, the centre 56x56 kept
    assert conv["n_samples"] == 8 * 56 * 56 and conv["tokens"] == "centre 56x56 of 112x112"
    assert cnn.layers.set_index("layer").loc["fc", "tokens"].startswith("one pooled vector")


def test_dropping_the_highest_norm_tokens_removes_them_per_image():
    result = _run(token_set="no-outliers:10")
    row = result.layers.set_index("layer").loc["blocks.0.mlp.fc1"]
    assert row["n_samples"] == SAMPLES * (17 - 2)  # round(0.1 * 17) = 2 of 17 tokens per image
    assert "top 2 by norm dropped" in row["tokens"]


# ------------------------------------------------------------------------------------------- centring


def test_mlu_with_its_error_bar_reads_as_people_write_it():
    from ui.text import plus_minus

    assert plus_minus(0.388, 0.009) == "38.8% ± 0.9 pp"
    assert plus_minus(0.177, 0.0001) == "17.7% ± <0.1 pp"  # not zero, below the shown precision
    assert plus_minus(0.5, 0.0) == "50.0% ± <0.1 pp"  # halves that agree: below what is shown, not "± 0.0"
    assert plus_minus(0.5, float("nan")) == "50.0%"  # no halves: no error bar claimed


def test_centred_moments_are_the_uncentred_ones_minus_the_mean_direction():
    generator = torch.Generator().manual_seed(0)
    d, n = 12, 500
    z = torch.randn(n, d, generator=generator, dtype=torch.float64) @ torch.diag(0.7 ** torch.arange(d, dtype=torch.float64))
    weight = torch.randn(7, d, generator=generator, dtype=torch.float64)
    bias = torch.randn(7, generator=generator, dtype=torch.float64)

    def layer_of(x):
        return AffineLayer(weight, bias, x.T @ x, x.sum(0), n)

    shift = 50.0 * torch.randn(d, generator=generator, dtype=torch.float64)
    plain, shifted = centring.centred(layer_of(z)), centring.centred(layer_of(z + shift))
    mu = (z + shift).mean(0)
    expected = (z + shift).T @ (z + shift) - n * torch.outer(mu, mu)
    torch.testing.assert_close(shifted.c_in, expected, rtol=1e-10, atol=1e-8)
    # the spectra of the scatter do not see the shift; the uncentred ones are dominated by it
    in_plain, out_plain = uncertainty.eigenvalues(plain)
    in_shifted, out_shifted = uncertainty.eigenvalues(shifted)
    np.testing.assert_allclose(in_shifted, in_plain, rtol=1e-6, atol=1e-6 * in_plain[0])
    np.testing.assert_allclose(out_shifted, out_plain, rtol=1e-6, atol=1e-6 * out_plain[0])
    share_in, share_out = centring.mean_shares(layer_of(z + shift))
    assert share_in > 0.99 and share_out > 0.99
    share_in, _ = centring.mean_shares(layer_of(z - z.mean(0)))
    assert share_in < 1e-12


def test_a_centred_analysis_decomposes_the_scatter_of_the_stored_statistics():
    result = _run(centred=True, keep_moments=True, use_cache=True, uncertainty=False)
    from analysis.cache import ResultCache

    moments = ResultCache().load_moments(result.key)
    for name in ("blocks.0.attn.qkv", "blocks.1.mlp.fc2"):
        c, s, n = (moments[f"{name}|{part}"] for part in ("C_in", "s", "N"))
        expected = torch.linalg.eigvalsh(c - torch.outer(s, s) / int(n)).flip(0).clamp_min(0).numpy()
        got = result.layer(name).eig_in
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9 * expected[0])
    assert result.meta.centred


# ------------------------------------------------------------------------------------------- uncertainty


def _split_half_error(n: int, seed: int) -> float:
    """Mean over energies of |k_a - k_b| / 2 for Gaussian data with eigenvalues 0.8^i (d = 24)."""
    d = 24
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(n, d, generator=generator) * (0.8 ** (torch.arange(d) / 2))
    model = nn.Sequential(nn.Linear(d, d))
    collector = MomentCollector(describe_layers(model), halves=True)
    with collector, torch.no_grad():
        for start in range(0, n, 64):
            ids = torch.arange(start, min(n, start + 64))
            collector.begin_batch(ids)
            model(data[ids])
            collector.next_batch()
    halves = collector.half_moments()
    assert sum(h["0"].count for h in halves) == n and min(h["0"].count for h in halves) > 0.4 * n
    values = [torch.linalg.eigvalsh(h["0"].second_moment).flip(0).numpy() for h in halves]
    from analysis import metrics

    energies = np.linspace(0.5, 0.99, 25)
    return float(np.mean([abs(metrics.k_at_energy(values[0], e) - metrics.k_at_energy(values[1], e)) / 2
                          for e in energies]))


def test_each_half_holds_exactly_its_images_in_any_batch_order():
    """A batch ordered by half_order (each half one slice, the engine's way) and the same batch in its
    loader order (each half gathered) give each half exactly the moment of its own images' tokens."""
    n, tokens, d = 48, 5, 12
    generator = torch.Generator().manual_seed(7)
    data = torch.randn(n, tokens, d, generator=generator, dtype=torch.float64).float()
    model = nn.Sequential(nn.Linear(d, 3))
    ids = torch.arange(n)
    expected = []
    for half in (0, 1):
        rows = data[uncertainty.half_of(ids) == half].reshape(-1, d).double()
        expected.append((rows.T @ rows, rows.sum(0), rows.shape[0]))
    assert min(e[2] for e in expected) > 0
    order = uncertainty.half_order(ids)
    assert torch.equal(uncertainty.half_of(ids[order]), uncertainty.half_of(ids).sort().values)
    for batch_ids in (ids, ids[order]):
        collector = MomentCollector(describe_layers(model), halves=True)
        with collector, torch.no_grad():
            for part in batch_ids.split(20):
                collector.begin_batch(part)
                model(data[part])
                collector.next_batch()
        for half, (c, s, count) in zip(collector.half_moments(), expected):
            got = half["0"]
            assert got.count == count
            torch.testing.assert_close(got.second_moment, c, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(got.column_sum, s, rtol=1e-6, atol=1e-5)


def test_split_half_error_bars_shrink_as_samples_grow():
    for seed in (0, 1, 2):
        small, large = _split_half_error(96, seed), _split_half_error(12000, seed)
        assert large < small, (seed, small, large)
        assert large <= 0.2


def test_a_result_carries_error_bars_and_a_convergence_curve():
    result = _run()
    assert result.meta.uncertainty and np.isfinite(result.mlu_err) and result.mlu_err >= 0
    counted = result.layers[result.layers["in_mlu"]]
    assert counted["utilization_err"].notna().all()
    curve = uncertainty.convergence(result)
    mlu_curve = curve[curve["layer"] == "MLU"]
    assert list(mlu_curve["images"]) == list(result.meta.snapshot_images) == [16, 32, SAMPLES]
    assert mlu_curve["utilization"].iloc[-1] == pytest.approx(result.mlu)
    # re-thresholding moves the curve with the energy, from stored eigenvalues only
    lower = uncertainty.convergence(result.at_energy(0.9, 0.9))
    assert lower[lower["layer"] == "MLU"]["utilization"].iloc[-1] == pytest.approx(result.at_energy(0.9, 0.9).mlu)
    # without the setting: no error bars, no curve, and said so by NaN / empty
    plain = _run(uncertainty=False)
    assert np.isnan(plain.mlu_err) and uncertainty.convergence(plain).empty
    assert plain.mlu == pytest.approx(result.mlu)


def test_a_snapshot_equals_an_analysis_of_exactly_the_images_seen_then(tmp_path):
    folder = make_image_folder(tmp_path / "all", per_class=16, classes=2)
    first = tmp_path / "first" / "class_0"
    first.mkdir(parents=True)
    for path in sorted((folder / "class_0").iterdir())[:16]:
        shutil.copy(path, first / path.name)
    whole = analyze(TINY_VIT, f"folder:{folder}", batch_size=16, use_cache=False)
    assert whole.meta.snapshot_images == (16, 32)
    part = analyze(TINY_VIT, f"folder:{tmp_path / 'first'}", batch_size=16, use_cache=False, uncertainty=False)
    for spectrum in whole.spectra:
        snap_in = spectrum.extras["snap.eig_in"][0]
        expected = part.layer(spectrum.name).eig_in
        # float32 products summed in another order (two halves): equal to ~1e-7 of the top eigenvalue
        np.testing.assert_allclose(snap_in, expected, rtol=0, atol=1e-6 * expected[0])
        snap_out = spectrum.extras["snap.eig_out"][0]
        expected_out = part.layer(spectrum.name).eig_out
        np.testing.assert_allclose(snap_out, expected_out, rtol=0, atol=1e-6 * expected_out[0])


# ------------------------------------------------------------------------------------------- command line


def test_the_cli_takes_the_research_settings_and_says_what_it_counted(capsys):
    from analysis.cli import main

    code = main(["run", "--model", TINY_VIT, "--dataset", DATASET, "--samples", "32", "--tokens", "patch",
                 "--centred", "--quiet", "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0
    assert "vectors    patch tokens only, centred" in out
    assert "± " in out and "(split half)" in out
    code = main(["run", "--model", TINY_VIT, "--dataset", DATASET, "--samples", "32", "--tokens", "everything",
                 "--quiet", "--no-cache"])
    captured = capsys.readouterr()
    assert code == 2 and "unknown token set 'everything'" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_vectors_are_grouped_by_image_whatever_the_layout():
    from analysis.tokens import TokenSelector, arrange

    layout = TokenLayout(prefix=1, cls_index=0, registers=(1, 1), grid=(2, 2))
    batch = torch.arange(3 * 5 * 4, dtype=torch.float32).reshape(3, 5, 4)  # (B, 1 + 4 patches, d)
    seq = arrange(batch, batch, None, 3, layout)
    assert seq.kind == "sequence" and seq.grid == (2, 2)
    first = arrange(batch.transpose(0, 1), batch.transpose(0, 1), None, 3, layout)  # sequence-first (T, B, d)
    assert first.kind == "sequence" and torch.equal(first.rows, batch)
    windows = batch[:, 1:].reshape(6, 2, 4)  # (B * 2 windows, 2, d), batch-major
    grouped = arrange(windows, windows, None, 3, layout)
    assert grouped.kind == "grouped" and torch.equal(grouped.rows, batch[:, 1:])
    pooled = arrange(batch[:, 0], batch[:, 0].reshape(3, 1, 4), None, 3, layout)
    assert pooled.kind == "pooled"
    assert arrange(batch[:2], batch[:2], None, 3, layout) is None  # 2 groups for 3 images: unattributable

    selector = TokenSelector("centre:0.5", layout)
    assert selector.select("windowed", grouped) is None and "cannot be located" in selector.problems["windowed"]
    kept = selector.select("block", seq)
    assert torch.equal(kept, batch[:, [1]])  # centre 1x1 of the 2x2 patch grid (row 0, column 0 + prefix 1)
    assert torch.equal(TokenSelector("cls", layout).select("block", seq), batch[:, :1])
    assert torch.equal(TokenSelector("patch", layout).select("block", seq), batch[:, 1:])
    # a pooled vector keeps its one vector per image under every set
    assert torch.equal(TokenSelector("cls", layout).select("head", pooled), pooled.rows)
