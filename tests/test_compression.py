"""Compression at the utilized rank: thin layers equal W', counts match the table, export round-trips,
budgets are met, fine-tuning runs, evaluation picks the right method."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.cli import main
from analysis.compression import (
    CompressionRequest, FinetuneSettings, choose_ranks, compress, energy_for_budget, factorize_model, kept_fraction,
)
from analysis.compression.accuracy import head_label_map
from analysis.compression.checkpoint import export_file
from analysis.compression.factorize import preservation_error
from analysis.compression.thin_layers import FactorizedConv2d, FactorizedLinear, factorized_layer
from analysis.compression.subspaces import LayerSubspace, measure
from analysis.engine import analyze
from analysis.errors import CheckpointError, DatasetError, SettingsError
from analysis.models import describe_layers, load, weight_matrix
from analysis.projection import factorize, project_weight
from analysis.spectra import eigen_batched, layer_output_second_moment
from analysis.statistics import MomentCollector

from .helpers import TINY_VIT, make_image_folder


@pytest.fixture(scope="module")
def folder_id(tmp_path_factory):
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('compress_images'), per_class=8)}"


def _subspaces(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, LayerSubspace]:
    """Subspaces of every applicable layer of ``model`` measured directly on ``batches``, each counted (these
    small models have no repeated blocks, so by the analysis's rule none would count; the maths under test
    does not depend on that)."""
    specs = [s for s in describe_layers(model) if s.applicable]
    with MomentCollector(specs) as collector, torch.no_grad():
        for x in batches:
            model(x)
            collector.next_batch()
        moments = collector.moments()
    c_in = {s.name: moments[s.name].second_moment for s in specs}
    c_out = {s.name: layer_output_second_moment(s, c_in[s.name], moments[s.name].column_sum, moments[s.name].count)
             for s in specs}
    eig_in, eig_out = eigen_batched(c_in)[0], eigen_batched(c_out)[0]
    return {s.name: LayerSubspace(s, eig_in[s.name], eig_out[s.name], counted=True) for s in specs}


def _low_rank_inputs(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=gen))[0]
    return torch.randn(n, k, generator=gen) @ basis.T + 0.01 * torch.randn(n, d, generator=gen)


def test_factorized_linear_equals_the_projected_weight_applied_to_the_input():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    x = _low_rank_inputs(2000, 40, 7, seed=1)
    sub = _subspaces(nn.Sequential(layer), [x])["0"]
    k_in, k_out = 9, 6
    left, right = factorize(layer.weight.detach(), sub.eig_in.vectors, sub.eig_out.vectors, k_in, k_out)
    thin = factorized_layer(layer, left, right)
    assert isinstance(thin, FactorizedLinear) and thin.rank == 6
    w_prime = project_weight(layer.weight.detach(), sub.eig_in.vectors, sub.eig_out.vectors, k_in, k_out)
    expected = x.double() @ w_prime.T + layer.bias.detach().double()
    torch.testing.assert_close(thin(x).double(), expected, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in thin.parameters()) == 6 * (40 + 30) + 30


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 0, False), (2, 2, True)])
def test_factorized_convolution_equals_the_convolution_with_the_projected_kernel(stride, padding, bias):
    torch.manual_seed(stride + padding)
    conv = nn.Conv2d(4, 12, kernel_size=3, stride=stride, padding=padding, bias=bias)
    images = torch.nn.functional.interpolate(torch.randn(16, 4, 4, 4), size=(11, 11), mode="bilinear")  # smooth
    sub = _subspaces(nn.Sequential(conv), [images])["0"]
    k_in, k_out = 10, 5
    left, right = factorize(weight_matrix(conv).detach(), sub.eig_in.vectors, sub.eig_out.vectors, k_in, k_out)
    thin = factorized_layer(conv, left, right)
    assert isinstance(thin, FactorizedConv2d)
    w_prime = project_weight(weight_matrix(conv).detach(), sub.eig_in.vectors, sub.eig_out.vectors, k_in, k_out)
    expected = F.conv2d(images.double(), w_prime.reshape(conv.weight.shape), conv.bias.double() if bias else None,
                        stride=stride, padding=padding)
    torch.testing.assert_close(thin(images).double(), expected, rtol=1e-4, atol=1e-4)


def test_factorized_model_equals_the_model_with_every_factorized_weight_projected():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    batches = [F.interpolate(torch.randn(32, 3, 3, 3), size=(8, 8), mode="bilinear") for _ in range(3)]
    subspaces = _subspaces(model, batches)
    ranks = choose_ranks(subspaces, 0.9, 0.95)
    assert any(r.factorized for r in ranks) and ranks
    compressed = factorize_model(model, subspaces, ranks)
    projected = copy.deepcopy(model)
    for r in ranks:
        if r.factorized:
            sub = subspaces[r.layer]
            module = projected.get_submodule(r.layer)
            w = project_weight(weight_matrix(module).detach(), sub.eig_in.vectors, sub.eig_out.vectors, r.k_in, r.k_out)
            with torch.no_grad():
                module.weight.copy_(w.reshape(module.weight.shape))
    x = batches[0]
    torch.testing.assert_close(compressed(x), projected(x), rtol=1e-4, atol=1e-5)
    saved = sum(r.params_dense - r.params_kept for r in ranks)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(model) - params(compressed) == saved


def test_measured_output_error_of_a_factorized_layer_equals_the_reported_preservation_error():
    torch.manual_seed(5)
    layer = nn.Linear(32, 24)
    x = _low_rank_inputs(3000, 32, 10, seed=6)
    sub = _subspaces(nn.Sequential(layer), [x])["0"]
    (decision,) = choose_ranks({"0": sub}, 0.9, 0.9)
    left, right = factorize(layer.weight.detach(), sub.eig_in.vectors, sub.eig_out.vectors, decision.k_in,
                            decision.k_out)
    w = layer.weight.detach().double()
    measured = ((x.double() @ (w - left @ right).T).square().sum() / (x.double() @ w.T).square().sum()).item()
    assert measured == pytest.approx(preservation_error(sub, decision.k_in, decision.k_out), rel=1e-6, abs=1e-12)
    assert 0 < measured < 0.2


def test_compressed_parameter_counts_match_the_analysis_table(folder_id):
    request = CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.9, energy_out=0.9)
    summary = compress(request).summary
    table = analyze(TINY_VIT, folder_id, energy_in=0.9, energy_out=0.9).parameters()
    assert summary["params_dense"] == table["params_dense"]
    assert summary["params_kept"] == table["params_factorized"]
    assert summary["model_params_dense"] - summary["model_params_compressed"] == \
        summary["params_dense"] - summary["params_kept"]
    assert summary["evaluation_method"] == "linear-probe"  # a random 5-way head says nothing about these classes
    assert summary["evaluated_on_analysis_data"] is True
    assert {"params_dense", "params_kept", "acc_dense", "acc_projected", "acc_finetuned", "layers"} <= set(summary)
    assert all({"layer", "rank", "k_in", "k_out", "factorized"} <= set(row) for row in summary["layers"])


def test_export_then_load_through_the_registry_reproduces_the_outputs(folder_id, tmp_path):
    path = tmp_path / "tiny-factorized.safetensors"
    report = compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.95, energy_out=0.95),
                      export=path)
    assert report.summary["export"] == str(path) and path.with_suffix(".ranks.json").is_file()
    loaded = load(f"file:{path}")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), report.model(x), rtol=0, atol=0)
    assert sum(p.numel() for p in loaded.model.parameters()) == report.summary["model_params_compressed"]
    # the same file through an explicit timm architecture
    explicit = load(f"file:{path}?arch=vit_tiny_patch16_224&{TINY_VIT.split('?', 1)[1]}")
    torch.testing.assert_close(explicit.model(x), report.model(x), rtol=0, atol=0)


def test_a_rank_map_that_does_not_fit_the_weights_is_refused(folder_id, tmp_path):
    report = compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.95, energy_out=0.95))
    ranks = {r.layer: r.rank + 1 for r in report.ranks if r.factorized}
    path = export_file(report.model, tmp_path / "bad.safetensors", TINY_VIT, ranks, {"input_size": (3, 32, 32)})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load(f"file:{path}")
    unknown = export_file(report.model, tmp_path / "unknown.safetensors", TINY_VIT, {"blocks.9.nothing": 3}, {})
    with pytest.raises(CheckpointError, match="does not have"):
        load(f"file:{unknown}")


@pytest.mark.parametrize("keep", [0.35, 0.6])
def test_a_parameter_budget_is_met_with_the_largest_energy_that_fits(folder_id, keep):
    measured = measure(TINY_VIT, folder_id)
    energy = energy_for_budget(measured.subspaces, keep)
    assert kept_fraction(choose_ranks(measured.subspaces, energy, energy)) <= keep
    if energy < 1.0:
        above = min(1.0, round(energy + 0.0005, 5))
        assert kept_fraction(choose_ranks(measured.subspaces, above, above)) > keep or above == energy
    summary = compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, keep=keep)).summary
    assert summary["kept_fraction"] <= keep and summary["energy_in"] == summary["energy_out"] == energy


def test_an_impossible_budget_is_a_clear_error(folder_id):
    measured = measure(TINY_VIT, folder_id)
    with pytest.raises(SettingsError, match="cannot keep only"):
        energy_for_budget(measured.subspaces, 1e-6)
    with pytest.raises(SettingsError, match=r"\(0, 1\]"):
        energy_for_budget(measured.subspaces, 1.5)


def test_the_second_compression_reads_the_moments_from_the_cache(folder_id):
    assert measure(TINY_VIT, folder_id, samples=10).from_cache is False
    assert measure(TINY_VIT, folder_id, samples=10).from_cache is True


def test_one_fine_tuning_step_runs_on_cpu_by_distillation(folder_id):
    request = CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.9, energy_out=0.9,
                                 finetune=FinetuneSettings(steps=1, batch_size=4))
    summary = compress(request).summary
    assert summary["finetune"]["objective"] == "distill" and summary["finetune"]["steps"] == 1
    assert summary["acc_finetuned"] is not None and np.isfinite(summary["finetune"]["loss_last"])


def test_zoo_model_is_evaluated_by_its_own_classifier_and_fine_tuned_on_labels():
    request = CompressionRequest(model="zoo:vit-fmnist-supervised", dataset="fashion-mnist:train", samples=256,
                                 eval_samples=300, finetune=FinetuneSettings(steps=1, batch_size=8))
    summary = compress(request).summary
    assert summary["evaluation_method"] == "head" and summary["eval_dataset"] == "fashion-mnist:test"
    assert summary["evaluated_on_analysis_data"] is False
    assert summary["acc_dense"] > 0.8  # the manifest's test top-1 is 87 %
    assert summary["finetune"]["objective"] == "labels" and summary["acc_finetuned"] is not None
    assert summary["kept_fraction"] < 1.0


def test_head_label_map_matches_class_names_and_falls_back_when_any_class_is_unknown():
    wnids = ["n01440764", "n01443537", "n02123045"]
    assert head_label_map(wnids, ["n02123045", "n01440764"]).tolist() == [2, 0]
    assert head_label_map(wnids, ["n02123045", "cat"]) is None
    assert head_label_map(None, ["a"]) is None


def test_an_unlabelled_evaluation_dataset_is_a_clear_error(folder_id):
    with pytest.raises(DatasetError, match="has no labels"):
        compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, eval_dataset="photos"))


def test_cli_compress_prints_and_stores_the_summary_and_sweeps(capsys, folder_id, tmp_path):
    out_json = tmp_path / "summary.json"
    code = main(["compress", "--model", TINY_VIT, "--dataset", folder_id, "--energy-in", "0.95", "--energy-out",
                 "0.95", "--finetune-steps", "1", "--finetune-batch-size", "4", "--export",
                 str(tmp_path / "m.safetensors"), "--summary", str(out_json), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert json.loads(out_json.read_text())["params_kept"] == printed["params_kept"]
    for key in ("params_dense", "params_kept", "acc_dense", "acc_projected", "acc_finetuned", "layers"):
        assert key in printed
    code = main(["compress", "--model", TINY_VIT, "--dataset", folder_id, "--sweep", "0.9,0.99,1.0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kept_fraction" in captured.out and "acc_projected" in captured.out
    assert main(["compress", "--model", TINY_VIT, "--dataset", folder_id, "--sweep", "0.9,abc", "--quiet"]) == 2
    assert "--sweep" in capsys.readouterr().err


def test_thin_layers_of_a_compressed_model_keep_their_original_kind(folder_id):
    report = compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.9, energy_out=0.9))
    kinds = {s.name: s.kind for s in describe_layers(report.model)}
    factorized = [r.layer for r in report.ranks if r.factorized]
    assert factorized
    for layer in factorized:
        original = next(r.kind for r in report.ranks if r.layer == layer)
        assert kinds[f"{layer}.reduce"] == kinds[f"{layer}.expand"] == original


# ------------------------------------------------------------------------- reading summaries honestly
def test_wilson_interval_matches_the_closed_form_and_known_values():
    from analysis.compression.summaries import Z95, wilson_interval

    low, high = wilson_interval(14, 16)
    assert (round(low, 4), round(high, 4)) == (0.6398, 0.9650)
    for successes, n in [(0, 5), (3, 7), (50, 100), (9022, 10000), (16, 16)]:
        p, z2 = successes / n, Z95 ** 2
        root = Z95 * np.sqrt(z2 + 4 * n * p * (1 - p))  # (2np + z^2 -+ z sqrt(z^2 + 4np(1-p))) / 2(n + z^2)
        expected = ((2 * n * p + z2 - root) / (2 * (n + z2)), (2 * n * p + z2 + root) / (2 * (n + z2)))
        assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)
        low, high = wilson_interval(successes, n)
        assert 0.0 <= low <= p <= high <= 1.0
    assert wilson_interval(0, 16)[0] == 0.0 and wilson_interval(16, 16)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_top1_is_shown_with_its_interval_and_evaluation_size():
    from analysis.compression.summaries import Top1, top1_text

    assert Top1.of(14 / 16, 16).text() == "87.5 % ± 16 (n = 16)"
    assert Top1.of(0.9022, 10_000).text() == "90.22 % ± 0.58 (n = 10,000)"
    assert Top1.of(0.5, 500).text() == "50.0 % ± 4.4 (n = 500)"
    assert top1_text(None, 16) == "n/a" and top1_text(0.5, 0) == "n/a"


def _summary(eval_samples: int, kept: float, acc: float, dense: float = 0.9, created: str = "2026-11-29T08:00",
             tuned: float | None = None, dataset: str = "fashion-mnist:test") -> dict:
    return {"eval_dataset": dataset, "eval_samples": eval_samples, "seed": 0, "evaluation_method": "head",
            "kept_fraction": kept, "acc_projected": acc, "acc_dense": dense, "acc_finetuned": tuned,
            "energy_in": 0.99, "energy_out": 0.99, "finetune": {"steps": 0 if tuned is None else 10},
            "created": created}


def test_runs_are_grouped_by_evaluation_set_and_each_set_has_its_dense_reference():
    from analysis.compression.summaries import accuracy_points, evaluation_set, set_labels

    summaries = [_summary(16, 0.3, 14 / 16, dense=15 / 16, created="1"), _summary(500, 0.3, 0.85, created="2"),
                 _summary(500, 0.5, 0.88, created="3", tuned=0.89), _summary(16, 0.5, 15 / 16, dense=1.0, created="4")]
    points = accuracy_points(summaries)
    assert set(points["evaluation_set"]) == {"fashion-mnist:test, n = 16", "fashion-mnist:test, n = 500"}
    small = points[points["evaluation_set"] == "fashion-mnist:test, n = 16"]
    assert list(small["stage"]) == ["dense", "factorized", "factorized"]
    assert list(small.loc[small["stage"] == "factorized", "kept_fraction"]) == [0.3, 0.5]
    assert small.loc[small["stage"] == "dense", "top1"].item() == 1.0  # the newest run's dense top-1
    assert small.loc[small["stage"] == "dense", "n"].item() == 16
    large = points[points["evaluation_set"] == "fashion-mnist:test, n = 500"]
    assert list(large["stage"]) == ["dense", "factorized", "factorized", "fine-tuned"]
    assert (points["low"] <= points["top1"]).all() and (points["top1"] <= points["high"]).all()
    assert "(n = 16)" in small["text"].iloc[1]
    # the same dataset and size with another seed is another set, and the labels say so
    other_seed = {**summaries[0], "seed": 1}
    labels = set_labels([evaluation_set(summaries[0]), evaluation_set(other_seed)])
    assert len(set(labels.values())) == 2 and all("seed" in label for label in labels.values())


def test_parameters_kept_has_one_definition_for_the_table_the_ranks_and_the_summary(folder_id):
    from analysis import metrics

    summary = compress(CompressionRequest(model=TINY_VIT, dataset=folder_id, energy_in=0.95, energy_out=0.9)).summary
    result = analyze(TINY_VIT, folder_id, energy_in=0.95, energy_out=0.9)
    ranks = choose_ranks(measure(TINY_VIT, folder_id).subspaces, 0.95, 0.9)
    expected = metrics.kept_fraction(summary["params_kept"], summary["params_dense"])
    assert summary["kept_fraction"] == expected == kept_fraction(ranks) == result.parameters()["kept"]
    assert summary["analysis_images"] == result.meta.n_images  # says which analysis the ranks came from
    # a layer that would not shrink is counted dense, never larger
    assert all(r.params_kept <= r.params_dense for r in ranks)
    assert metrics.kept_fraction(0, 0) != metrics.kept_fraction(0, 0)  # NaN without counted layers


def test_compression_request_round_trips_through_json_and_its_key_follows_the_request(folder_id):
    from analysis.compression.pipeline import request_key

    request = CompressionRequest(model=TINY_VIT, dataset=folder_id, samples=10, eval_samples=12,
                                 finetune=FinetuneSettings(steps=3, lr=3e-4))
    again = CompressionRequest.from_dict(json.loads(json.dumps(request.as_dict())))
    assert again == request
    assert request_key(again) == request_key(request)
    assert request_key(CompressionRequest(model=TINY_VIT, dataset=folder_id, samples=10, eval_samples=13)) != \
        request_key(request)
    with pytest.raises(SettingsError, match="unknown fields"):
        CompressionRequest.from_dict({**request.as_dict(), "colour": "red"})
    with pytest.raises(DatasetError):
        request_key(CompressionRequest(model=TINY_VIT, dataset="folder:/no/such/folder"))


def test_the_submitted_key_is_the_workers_while_another_thread_reads_a_dataset(folder_id, monkeypatch):
    """A compression's key is computed when it is submitted (the app's thread) and again in its worker process;
    a seeded ``random:`` model draws its weights from torch's one global RNG. Another thread of the app that
    iterates a loader meanwhile (the Compare page's background time estimate probes a model on a few images)
    must not draw from that RNG: it did (the DataLoader's base seed), so the submitted key named other weights
    and the worker refused the job ("the model or dataset changed since this compression was submitted").
    Here that read happens exactly inside the build's window: after the seed, before the weights are drawn."""
    import threading

    from analysis.compression.pipeline import request_key
    from analysis.data import load_dataset, make_loader
    from analysis.models import sources

    request = CompressionRequest(model=TINY_VIT, dataset=folder_id, samples=4)
    in_the_worker = request_key(request)  # a process with nothing else running
    data = load_dataset(folder_id, data_config=load(TINY_VIT).data_config, samples=4)
    build = sources.create_timm

    def build_while_another_thread_reads(arch: str, **kwargs) -> nn.Module:
        reader = threading.Thread(target=lambda: next(iter(make_loader(data, batch_size=2, num_workers=0))))
        reader.start()
        reader.join()
        return build(arch, **kwargs)

    monkeypatch.setattr(sources, "create_timm", build_while_another_thread_reads)
    assert request_key(request) == in_the_worker
