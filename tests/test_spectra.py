"""Eigen-decompositions of the output moment through the small ``m = d_in + 1`` problem, against the direct one.

``C_out = M G M^T`` (``M = [W b]``, ``G = [[C_in, s], [s^T, N]]``) has rank at most ``m``; for
``d_out > m`` :func:`analysis.spectra.output_eigen` decomposes it from ``m``-sized problems. The reference is
the direct float64 ``eigh`` of the explicitly formed ``C_out`` (:func:`analysis.spectra.eigen_batched`).

Tolerances: eigenvalues to ``1e-10 * lambda_max`` absolute (both routes are float64 and backward stable, so
their difference is rounding, ~1e-15 measured; the jitter is removed from both); eigenvectors as subspaces, by the
Frobenius (>= spectral) norm of the difference of the projectors ``V_k V_k^T`` onto the top ``k`` eigenvectors, for every
``k`` whose eigengap ``lambda_k - lambda_{k+1}`` exceeds ``1e-6 lambda_max`` (Davis-Kahan: the error is at
most rounding over the gap, <= ~1e-9 here); the tolerance 1e-6 is far below what a wrong vector gives (a
swapped or missing direction moves the projector by 1).
"""

from __future__ import annotations

import pytest
import torch

from analysis import spectra
from analysis.spectra import AffineLayer, Eigen, eigen_batched, layer_eigen, output_eigen, output_second_moment

VALUE_TOL = 1e-10
PROJECTOR_TOL = 1e-6
GAP = 1e-6


def _layer(d_out: int, d_in: int, n: int, bias: bool, seed: int, rank: int | None = None) -> AffineLayer:
    """Random affine layer and statistics of ``n`` inputs with random means and scales (``rank`` limits the
    inputs to a subspace, making C_in and G singular)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    b = torch.randn(d_out, generator=g) if bias else None
    if rank is None:
        x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, d_in, generator=g, dtype=torch.float64)
    x = x * torch.exp(torch.randn(d_in, generator=g, dtype=torch.float64)) + torch.randn(d_in, generator=g, dtype=torch.float64)
    return AffineLayer(weight, b, x.T @ x, x.sum(dim=0), n)


def _direct(layer: AffineLayer) -> Eigen:
    c_out = output_second_moment(layer.weight, layer.c_in, layer.column_sum, layer.count, layer.bias)
    return eigen_batched({"x": c_out})[0]["x"]


def _check_against_direct(got: Eigen, ref: Eigen, layer: AffineLayer) -> None:
    """The small problem gives all ``d_out`` values and the ``d_out x m`` eigenvectors of the first ``m`` (the
    rest are 0: no ``d_out x d_out`` matrix is built)."""
    d_out, cols = layer.d_out, min(layer.d_out, layer.m)
    assert got.values.shape == (d_out,) and got.vectors.shape == (d_out, cols)
    assert got.values.dtype == torch.float64 and got.vectors.dtype == torch.float64
    top = float(ref.values[0])
    assert float((got.values - ref.values).abs().max()) <= VALUE_TOL * top
    assert bool((got.values[:-1] >= got.values[1:]).all()), "eigenvalues must be descending"
    eye = torch.eye(cols, dtype=torch.float64)
    assert float((got.vectors.T @ got.vectors - eye).abs().max()) <= 1e-10, "eigenvectors must be orthonormal"
    c_out = output_second_moment(layer.weight, layer.c_in, layer.column_sum, layer.count, layer.bias)
    residual = c_out @ got.vectors - got.vectors * got.values[:cols]
    assert float(residual.norm() / c_out.norm()) <= 1e-10
    # ||P_got,k - P_ref,k||_F^2 = 2 k - 2 ||V_ref[:, :k]^T V_got[:, :k]||_F^2 (both bases orthonormal; the
    # Frobenius norm bounds the spectral one)
    overlap = ref.vectors[:, :cols].T @ got.vectors
    gaps = ref.values[:-1] - ref.values[1:]
    checked = 0
    for k in range(1, cols):
        if gaps[k - 1] > GAP * top:
            inside = float(overlap[:k, :k].square().sum())
            diff = max(0.0, 2 * (k - inside)) ** 0.5
            assert diff <= PROJECTOR_TOL, f"top-{k} subspace differs by {diff:.2e}"
            checked += 1
    assert checked >= min(layer.m, d_out) // 2, "too few well-separated subspaces to compare"


@pytest.mark.parametrize(
    ("d_out", "d_in", "n", "bias", "rank"),
    [
        pytest.param(50, 12, 400, True, None, id="bias"),
        pytest.param(50, 12, 400, False, None, id="no-bias"),
        pytest.param(60, 16, 9, True, None, id="fewer-samples-than-features"),
        pytest.param(40, 10, 300, True, 4, id="inputs-in-a-subspace"),
        pytest.param(14, 12, 200, True, None, id="d_out-just-above-m"),
        pytest.param(576, 192, 1500, True, None, id="vit-tiny-qkv"),
    ],
)
def test_output_eigen_small_problem_matches_direct(d_out: int, d_in: int, n: int, bias: bool, rank: int | None) -> None:
    layer = _layer(d_out, d_in, n, bias, seed=d_out * 1000 + d_in + n, rank=rank)
    assert layer.uses_small_problem()
    got = output_eigen(layer.weight, layer.bias, layer.c_in, layer.column_sum, layer.count)
    _check_against_direct(got, _direct(layer), layer)
    zero_count = d_out - layer.m
    assert float(got.values[-zero_count:].max()) <= VALUE_TOL * float(got.values[0]), "the padded zeros"


@pytest.mark.parametrize(("d_out", "d_in", "bias"), [(13, 12, True), (12, 12, False), (5, 12, True)])
def test_output_eigen_direct_when_output_is_not_wider(d_out: int, d_in: int, bias: bool) -> None:
    layer = _layer(d_out, d_in, 100, bias, seed=7 + d_out)
    assert not layer.uses_small_problem()
    got = output_eigen(layer.weight, layer.bias, layer.c_in, layer.column_sum, layer.count)
    ref = _direct(layer)
    assert torch.equal(got.values, ref.values) and torch.equal(got.vectors, ref.vectors)


def test_batched_small_problem_equals_one_at_a_time() -> None:
    """The GPU groups same-shaped layers into one stacked call; the stacked arithmetic (run here on the CPU)
    gives each layer its own decomposition."""
    layers = {f"l{i}": _layer(30, 8, 50 + 10 * i, True, seed=100 + i) for i in range(3)}
    stacked = spectra._decompose_small(layers, torch.device("cpu"))
    for name, layer in layers.items():
        _check_against_direct(stacked[name], _direct(layer), layer)
    direct = spectra._decompose_direct({n: l.c_in for n, l in layers.items()}, torch.device("cpu"))
    for name, layer in layers.items():
        single = eigen_batched({"x": layer.c_in})[0]["x"]
        assert torch.allclose(direct[name].values, single.values, rtol=1e-12, atol=0)


def test_layer_eigen_reports_progress_per_layer_and_matches_direct() -> None:
    layers = {
        "wide": _layer(40, 9, 120, True, seed=1),
        "narrow": _layer(6, 9, 120, True, seed=2),
        "no-bias": _layer(25, 9, 120, False, seed=3),
    }
    calls: list[tuple[int, int, float]] = []
    eig_in, eig_out, seconds = layer_eigen(layers, "cpu", progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(b[2] >= a[2] >= 0 for a, b in zip(calls, calls[1:])) and seconds >= calls[-1][2]
    for name, layer in layers.items():
        ref_in = eigen_batched({"x": layer.c_in})[0]["x"]
        assert torch.equal(eig_in[name].values, ref_in.values)
        _check_against_direct(eig_out[name], _direct(layer), layer)


def test_cpu_workers_give_the_same_bits_in_the_layers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Independent layers decomposed side by side (``CPU_WORKERS`` threads, one LAPACK thread each) give exactly
    the bits of one worker, in the order of ``layers`` whatever order they finish in; progress counts up."""
    layers = {f"l{i}": _layer(20 + 37 * (i % 4), 9 + 23 * (i % 3), 400, i % 2 == 0, seed=40 + i) for i in range(9)}
    runs = {}
    for workers in (1, 2, 3):
        monkeypatch.setattr(spectra, "CPU_WORKERS", workers)
        calls: list[tuple[int, int, float]] = []
        runs[workers] = layer_eigen(layers, "cpu", progress=lambda *a: calls.append(a))
        assert [c[:2] for c in calls] == [(i, len(layers)) for i in range(1, len(layers) + 1)]
    for workers, (eig_in, eig_out, _) in runs.items():
        assert list(eig_in) == list(eig_out) == list(layers)
        for name in layers:
            for got, ref in ((eig_in[name], runs[1][0][name]), (eig_out[name], runs[1][1][name])):
                assert torch.equal(got.values, ref.values) and torch.equal(got.vectors, ref.vectors), (workers, name)


def test_cpu_map_runs_in_parallel_and_reraises_the_first_failure() -> None:
    """Keys start largest cost first; two workers really overlap (each call waits for the other to start);
    an exception in one call reaches the caller and the keys not yet started are dropped."""
    import threading

    barrier = threading.Barrier(2, timeout=30)
    started: list[str] = []

    def meet(key: str) -> str:
        started.append(key)
        barrier.wait()  # would time out (BrokenBarrierError) if the two calls ran one after the other
        return key.upper()

    got = list(spectra.cpu_map(meet, ["a", "b", "c", "d"], cost={"a": 1, "b": 4, "c": 3, "d": 2}.get, workers=2))
    assert sorted(got) == [(k, k.upper()) for k in "abcd"]
    assert set(started[:2]) == {"b", "c"}

    ran: list[int] = []

    def fail_on_two(key: int) -> int:
        ran.append(key)
        if key == 2:
            raise ValueError("layer 2 is broken")
        return key

    with pytest.raises(ValueError, match="layer 2 is broken"):
        list(spectra.cpu_map(fail_on_two, list(range(2, 40)), workers=1))
    assert ran == [2]
    ran.clear()
    with pytest.raises(ValueError, match="layer 2 is broken"):
        list(spectra.cpu_map(fail_on_two, list(range(2, 40)), workers=2))
    assert 2 in ran and len(ran) <= 4


def test_spectra_never_reads_module_parameters() -> None:
    """The caller passes the effective weight; AffineLayer holds tensors only (nothing to read a module from)."""
    layer = _layer(20, 5, 50, True, seed=11)
    assert all(isinstance(getattr(layer, f), (torch.Tensor, int, type(None)))
               for f in ("weight", "bias", "c_in", "column_sum", "count"))
    halved = AffineLayer(layer.weight * 0.5, layer.bias * 0.5, layer.c_in, layer.column_sum, layer.count)
    full = output_eigen(layer.weight, layer.bias, layer.c_in, layer.column_sum, layer.count)
    half = output_eigen(halved.weight, halved.bias, halved.c_in, halved.column_sum, halved.count)
    assert torch.allclose(half.values, full.values / 4, rtol=1e-9, atol=1e-12 * float(full.values[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_layer_eigen_matches_cpu() -> None:
    layers = {f"l{i}": _layer(300, 64, 2000, i % 2 == 0, seed=200 + i) for i in range(4)}
    layers["narrow"] = _layer(32, 64, 2000, True, seed=300)
    gpu_in, gpu_out, _ = layer_eigen(layers, "cuda")
    for name, layer in layers.items():
        ref_in = eigen_batched({"x": layer.c_in})[0]["x"]
        assert float((gpu_in[name].values - ref_in.values).abs().max()) <= VALUE_TOL * float(ref_in.values[0])
        _check_against_direct(gpu_out[name], _direct(layer), layer)


def test_engine_reports_the_spectra_stage_layer_by_layer(tmp_path) -> None:
    """The eigen phase reports ``layer i of n`` with the elapsed time (issue 13 item 7) as stage "spectra"."""
    from analysis import analyze

    from .helpers import TINY_VIT, make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=2)
    seen = []
    result = analyze(TINY_VIT, f"folder:{folder}", samples=4, use_cache=False, progress=seen.append)
    spectra_steps = [p for p in seen if p.stage == "spectra"]
    layers = len(result.layers)
    assert [p.done for p in spectra_steps] == list(range(1, layers + 1))
    assert all(p.total == layers for p in spectra_steps)
    assert spectra_steps[-1].eta_s == 0.0 and spectra_steps[0].elapsed_s <= spectra_steps[-1].elapsed_s
    assert seen.index(spectra_steps[0]) > max(i for i, p in enumerate(seen) if p.stage == "statistics")


def test_preservation_error_through_the_small_problem_is_the_measured_one() -> None:
    """With the ``d_out x m`` eigenvectors of the small problem, the stored preservation error is the error
    of the projected weight measured on the data (its denominator from the input side: rows of ``A`` past
    ``m`` are not formed), and equals the one from the direct decomposition."""
    from analysis.models.layers import LayerSpec
    from analysis.projection import project_weight
    from analysis.result import LayerSpectrum

    g = torch.Generator().manual_seed(21)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 10, generator=g, dtype=torch.float64)
    x = x + 0.05 * torch.randn(300, 10, generator=g, dtype=torch.float64)
    module = torch.nn.Linear(10, 60)
    weight, bias = module.weight.detach().double(), module.bias.detach().double()
    layer = AffineLayer(weight, bias, x.T @ x, x.sum(0), 300)
    assert layer.uses_small_problem()
    spec = LayerSpec.of("fc", module)
    eig_in = eigen_batched({"x": layer.c_in})[0]["x"]
    thin = output_eigen(weight, bias, layer.c_in, layer.column_sum, layer.count)
    assert thin.vectors.shape == (60, 11)
    small = LayerSpectrum.from_statistics(spec, 300, eig_in, thin, weight=weight)
    direct = LayerSpectrum.from_statistics(spec, 300, eig_in, _direct(layer), weight=weight)
    for e in (0.9, 0.99):
        row = small.row(e, e)
        projected = project_weight(weight, eig_in.vectors, thin.vectors, row["k_in"], row["k_out"])
        measured = float(((x @ (weight - projected).T).square().sum() / (x @ weight.T).square().sum()))
        assert row["preservation_error"] == pytest.approx(measured, rel=1e-8, abs=1e-14)
        assert row["preservation_error"] == pytest.approx(direct.row(e, e)["preservation_error"], rel=1e-8, abs=1e-14)
        assert row["k_out"] == direct.row(e, e)["k_out"]


def test_eigenvalue_only_decompositions_agree_with_torchs_solver(monkeypatch):
    """The halves' and snapshots' eigenvalues come from SciPy's LAPACK on one thread when it is there (faster
    than torch's here); they agree with torch's to rounding, on a stack, a singular and a float32 matrix."""
    import analysis.spectra as spectra

    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    assert spectra._lapack_eigvalsh() is not None  # SciPy's solver is the one in use here
    torch.manual_seed(3)
    a = torch.randn(3, 40, 90, dtype=torch.float64)
    singular = torch.randn(50, 7, dtype=torch.float64)
    cases = [a @ a.transpose(-1, -2), singular @ singular.T, (a[0] @ a[0].T).float()]
    fast = [spectra.eigvalsh_without_jitter(m) for m in cases]
    monkeypatch.setattr(spectra, "_lapack_eigvalsh", lambda: None)
    for values, m in zip(fast, cases):
        reference = spectra.eigvalsh_without_jitter(m)
        assert values.dtype == torch.float64 and values.shape == reference.shape
        assert torch.all(values[..., :-1] >= values[..., 1:])  # descending
        assert torch.allclose(values, reference, rtol=0, atol=1e-12 * float(reference.max()))
    assert int((fast[1] > 1e-9 * fast[1][0]).sum()) == 7  # the singular one keeps its rank
