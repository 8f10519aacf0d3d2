"""Known answers for the method (README, section Method), on synthetic layers with exactly known structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import metrics
from analysis.models.layers import LayerSpec, describe_layers, weight_matrix
from analysis.projection import factorize, project_weight, rotated_weight
from analysis.result import LayerSpectrum
from analysis.spectra import eigen_batched, output_second_moment
from analysis.statistics import MomentCollector


def _linear_spec(layer: nn.Linear, name: str = "layer") -> LayerSpec:
    return LayerSpec(name=name, kind="linear", block=0, module=layer, d_in=layer.in_features,
                     d_out=layer.out_features, has_bias=layer.bias is not None)


def _collect(layer: nn.Module, spec: LayerSpec, batches: list[torch.Tensor]):
    with MomentCollector([spec]) as collector:
        for x in batches:
            layer(x)
            collector.next_batch()
    return collector.moments()[spec.name]


def _spectrum(layer: nn.Module, spec: LayerSpec, batches: list[torch.Tensor]) -> LayerSpectrum:
    m = _collect(layer, spec, batches)
    w = weight_matrix(layer).detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    c_out = output_second_moment(w, m.second_moment, m.column_sum, m.count, bias)
    (eig_in,), (eig_out,) = (
        eigen_batched({"x": m.second_moment})[0].values(),
        eigen_batched({"x": c_out})[0].values(),
    )
    return LayerSpectrum.from_statistics(spec, m.count, eig_in, eig_out)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_inputs_in_a_k_dimensional_subspace_give_k_in_equal_k(k):
    gen = torch.Generator().manual_seed(100 + k)
    d = 48
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    x = torch.randn(4000, k, generator=gen) @ basis.T  # every row lies in span(basis)
    layer = nn.Linear(d, 64)
    spectrum = _spectrum(layer, _linear_spec(layer), list(x.split(500)))
    # any energy short of 1 by more than float32 rounding (~1e-7 of the trace here) needs exactly the k
    # directions that carry variance; each holds about 1/k of it, so fewer than k never suffice
    for energy in (0.99999, 0.999999):
        assert metrics.k_at_energy(spectrum.eig_in, energy) == k
    # the (k+1)-th eigenvalue is float32 rounding noise relative to the k-th
    assert spectrum.eig_in[k] < 1e-6 * spectrum.eig_in[k - 1]


@pytest.mark.parametrize("q", [1, 3, 10])
def test_rank_q_weight_on_full_rank_inputs_gives_k_out_at_most_q(q):
    gen = torch.Generator().manual_seed(7 + q)
    d_in, d_out = 32, 40
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, q, generator=gen) @ torch.randn(q, d_in, generator=gen))
    x = torch.randn(3000, d_in, generator=gen)
    spectrum = _spectrum(layer, _linear_spec(layer), [x])
    for energy in (0.9, 0.99, 1.0):
        assert metrics.k_at_energy(spectrum.eig_out, energy) <= q
    assert metrics.k_at_energy(spectrum.eig_in, 0.999) > q  # inputs are full rank


def test_utilization_and_parameter_counts_match_hand_computation():
    eig_in = np.array([8.0, 1.0, 0.5, 0.5])  # trace 10: k(0.8) = 1, k(0.9) = 2, k(0.95) = 3
    eig_out = np.array([5.0, 3.0, 1.0, 0.5, 0.5, 0.0])  # trace 10: k(0.9) = 3
    assert metrics.k_at_energy(eig_in, 0.8) == 1
    assert metrics.k_at_energy(eig_in, 0.9) == 2
    assert metrics.k_at_energy(eig_in, 0.95) == 3
    assert metrics.k_at_energy(eig_in, 1.0) == 4
    assert metrics.k_at_energy(eig_out, 0.9) == 3
    assert metrics.k_at_energy(np.zeros(3), 0.9) == 0
    r = metrics.utilized_rank(2, 3)
    assert r == 2 and metrics.utilization(r, 4, 6) == pytest.approx(0.5)
    assert metrics.factorized_params(2, 4, 6, has_bias=True) == 2 * (4 + 6) + 6
    # factorizing at rank 3 of a 4 x 6 layer would cost 30 > 24: stays dense
    assert metrics.factorized_params(3, 4, 6, has_bias=False) == 24
    assert metrics.dense_params(4, 6, has_bias=True) == 30
    s = np.array([3.0, 1.0])
    assert metrics.stable_rank(s) == pytest.approx(10 / 9)
    p = s / 4
    assert metrics.effective_rank(s) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_rotating_the_data_and_counter_rotating_the_weight_leaves_everything_unchanged():
    gen = torch.Generator().manual_seed(3)
    d_in, d_out = 24, 20
    scales = torch.logspace(0, -3, d_in)
    x = torch.randn(5000, d_in, generator=gen, dtype=torch.float64).float() * scales
    layer = nn.Linear(d_in, d_out)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
    rotated_layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        rotated_layer.weight.copy_(layer.weight @ q.T)  # W' (Q x) = W x
        rotated_layer.bias.copy_(layer.bias)
    a = _spectrum(layer, _linear_spec(layer), [x])
    b = _spectrum(rotated_layer, _linear_spec(rotated_layer), [x @ q.T])
    for e_in, e_out in [(0.9, 0.9), (0.99, 0.99), (0.95, 0.999)]:
        ra, rb = a.row(e_in, e_out), b.row(e_in, e_out)
        for column in ("k_in", "k_out", "rank", "utilization", "params_factorized"):
            assert ra[column] == rb[column], column
        assert ra["preservation_error"] == pytest.approx(rb["preservation_error"], rel=1e-4, abs=1e-9)


def test_analytic_output_second_moment_equals_direct_accumulation():
    gen = torch.Generator().manual_seed(11)
    layer = nn.Linear(16, 12).double()
    with torch.no_grad():
        layer.bias.copy_(torch.randn(12, generator=gen, dtype=torch.float64) * 3)
    x = torch.randn(700, 16, generator=gen, dtype=torch.float64) + 0.5  # non-zero mean: the cross terms matter
    c_in, s, n = x.T @ x, x.sum(0), x.shape[0]
    y = layer(x)
    direct = y.T @ y
    analytic = output_second_moment(layer.weight.detach(), c_in, s, n, layer.bias.detach())
    torch.testing.assert_close(analytic, direct.detach(), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(3, 5, (3, 2), padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(6, 7, 1),
        nn.Conv2d(6, 7, 1, stride=2),
    ],
    ids=["3x3", "stride2-nobias", "rect-dilated", "reflect-pad", "1x1", "1x1-stride2"],
)
def test_unfolded_convolution_statistics_equal_the_equivalent_linear_layer(conv):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, conv.in_channels, 11, 10, generator=gen)
    conv_spec = describe_layers(nn.Sequential(conv))[0]
    conv_moments = _collect(conv, conv_spec, [x[:3], x[3:]])

    # the equivalent linear layer on explicitly unfolded patches reproduces the convolution's output ...
    padded = F.pad(x, conv._reversed_padding_repeated_twice,
                   mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    patches = F.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    linear = nn.Linear(rows.shape[1], conv.out_channels, bias=conv.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight_matrix(conv))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    expected = conv(x).permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(linear(rows), expected, rtol=1e-4, atol=1e-5)

    # ... and its statistics are the convolution's statistics
    linear_moments = _collect(linear, _linear_spec(linear), [rows])
    assert conv_moments.count == linear_moments.count == rows.shape[0]
    # equal up to float32 rounding of the per-batch products (the two runs batch the rows differently)
    for a, b in [(conv_moments.second_moment, linear_moments.second_moment),
                 (conv_moments.column_sum, linear_moments.column_sum)]:
        assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_timm_same_padding_convolution_is_unfolded_like_its_forward():
    from timm.layers import Conv2dSame

    conv = Conv2dSame(3, 4, 3, stride=2)
    x = torch.randn(2, 3, 9, 8)
    spec = describe_layers(nn.Sequential(conv))[0]
    with MomentCollector([spec]) as collector:
        captured = {}
        conv.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
        conv(x)
    m = collector.moments()[spec.name]
    y = captured["y"].permute(0, 2, 3, 1).reshape(-1, 4).double()
    # the accumulated rows must be the patches the layer actually multiplies: check via C_out
    c_out = output_second_moment(weight_matrix(conv).detach(), m.second_moment, m.column_sum, m.count, conv.bias.detach())
    torch.testing.assert_close(c_out, y.T @ y, rtol=1e-5, atol=1e-5)
    assert m.count == y.shape[0]


def test_projected_layer_reproduces_outputs_within_the_reported_preservation_error():
    gen = torch.Generator().manual_seed(21)
    d_in, d_out = 40, 30
    scales = torch.logspace(0, -2.5, d_in)
    x = (torch.randn(6000, d_in, generator=gen) * scales) @ torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))[0]
    layer = nn.Linear(d_in, d_out)
    spec = _linear_spec(layer)
    m = _collect(layer, spec, [x])
    w = layer.weight.detach()
    c_out = output_second_moment(w, m.second_moment, m.column_sum, m.count, layer.bias.detach())
    eig_in = eigen_batched({"a": m.second_moment})[0]["a"]
    eig_out = eigen_batched({"a": c_out})[0]["a"]
    spectrum = LayerSpectrum.from_statistics(spec, m.count, eig_in, eig_out)
    x64 = x.double()
    for energy in (0.9, 0.99, 0.999):
        row = spectrum.row(energy, energy)
        w_proj = project_weight(w, eig_in.vectors, eig_out.vectors, row["k_in"], row["k_out"])
        measured = ((x64 @ (w.double() - w_proj).T).square().sum() / (x64 @ w.double().T).square().sum()).item()
        # equal up to the float32 rounding of the accumulated statistics (the direct value is float64)
        assert row["preservation_error"] == pytest.approx(measured, rel=1e-4, abs=1e-10)
        assert 0 < measured < 1
        left, right = factorize(w, eig_in.vectors, eig_out.vectors, row["k_in"], row["k_out"])
        assert left.shape == (d_out, row["rank"]) and right.shape == (row["rank"], d_in)
        torch.testing.assert_close(left @ right, w_proj, rtol=1e-9, atol=1e-9)
        # W' singular values stored at this energy are those of the projected matrix
        expected_sv = torch.linalg.svdvals(w_proj)[: len(spectrum.wprime_singular[energy])].numpy()
        np.testing.assert_allclose(spectrum.wprime_singular[energy], expected_sv, rtol=1e-8, atol=1e-10)
    # the data-free view: W itself is full rank
    assert metrics.stable_rank(spectrum.w_singular) > 1 and len(spectrum.w_singular) == min(d_in, d_out)


def test_rotated_weight_preserves_frobenius_norm():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    v_in = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=torch.float64))[0]
    v_out = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0]
    assert rotated_weight(w, v_in, v_out).norm() == pytest.approx(w.norm().item())


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, Boom())
    spec = _linear_spec(layer)
    with pytest.raises(RuntimeError, match="boom"):
        with MomentCollector([spec]):
            assert len(layer._forward_pre_hooks) == 1
            model(torch.randn(2, 4))
    assert len(layer._forward_pre_hooks) == 0


def test_non_finite_activations_raise_a_specific_error():
    from analysis.errors import NumericalError

    layer = nn.Linear(4, 4)
    spec = _linear_spec(layer, "blocks.0.mlp.fc1")
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="blocks.0.mlp.fc1"):
        with MomentCollector([spec]) as collector:
            layer(x)
            collector.next_batch()


def test_token_subsampling_is_seeded_and_bounded():
    layer = nn.Linear(8, 8)
    spec = _linear_spec(layer)
    x = torch.randn(4, 50, 8)

    def run(seed):
        with MomentCollector([spec], tokens_per_image=10, seed=seed) as collector:
            layer(x)
            collector.next_batch()
        return collector.moments()[spec.name]

    a, b, c = run(0), run(0), run(1)
    assert a.count == 40
    torch.testing.assert_close(a.second_moment, b.second_moment)
    assert not torch.allclose(a.second_moment, c.second_moment)
