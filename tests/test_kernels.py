"""Tests for ``kernels/``: ``acc += X^T X`` (lower triangle) and ``colsum += X^T 1``, both backends, on CPU.

Why the environment is touched before an import
    Triton decides whether a ``@triton.jit`` function runs in its CPU interpreter when the function is
    *defined*, i.e. when ``kernels.triton_second_moment`` is first imported. This module therefore sets
    ``TRITON_INTERPRET=1``, imports that module (reloading it if it was imported earlier without the
    interpreter), and then restores the variable, so that other test modules in the same pytest process
    keep ``backend=None`` -> torch on CPU. Triton also reads the variable while an interpreted kernel runs
    (e.g. a lazy import inside argument specialization asserts it), so an autouse fixture sets it again
    for each test of this module only. The Triton-path tests call ``backend="triton"`` (or the kernel
    wrapper) explicitly.

Reference and tolerances
    Every case draws fresh inputs from its own seed (a CRC of the case id): columns with random means and
    scales, like activations, never zeros. The reference is the float64 product of the SAME values that
    the kernel sees (``x.double().T @ x.double()`` after rounding to the input dtype), compared on the lower
    triangle and diagonal in relative Frobenius norm. bf16 (8-bit significand) and fp16 (11-bit) products
    are exact in float32, so their only error is float32 accumulation; float32 inputs add one rounding per
    product, small beside it. Accumulating n terms in float32 costs ~u sqrt(n) relative typically and at
    most n u (u = 2^-24 = 6e-8, n u = 6e-5 at n = 1000); how close a backend gets to either depends on its
    summation order (CPU BLAS sums a 1 x 1 or 7 x 7 output sequentially). Measured maxima over the grid
    (fresh seeds, this machine): torch fp32 7.6e-7, fp16 1.7e-6, bf16 3.8e-6 (d=1, n=1000); Triton
    interpreter fp32 8.7e-8, fp16 9.9e-8, bf16 8.4e-8; column sums <= 4e-8. The tolerances (2e-5 for every
    dtype, as the accumulation, not the dtype, dominates) sit 5x above the worst measured and well below
    what a wrong kernel gives: one missing or doubled element of a 769 x 769 triangle ~1e-3, rounding the
    output or partial sums to 16 bits ~1e-3, TF32 products ~4e-5 (a GPU concern: the interpreter ignores
    ``input_precision``, so the precision each dtype compiles to is checked on the sm_90 PTX instead).

Poisoning
    The accumulator starts as a random lower triangle ``A0`` with NaN in the strict upper triangle, so
    ``acc - A0`` checks that every lower element was accumulated (not overwritten, not skipped) and that
    nothing in the lower triangle reads the upper one. Guard regions of -0.0 around strided
    ``acc``/``colsum`` views check that no store lands outside them (adding even 0.0 flips the sign).

Sizes
    d in {1, 7, 64, 200, 769} x n in {1, 13, 1000} x {fp32, fp16, bf16} for both backends, except that
    the interpreter runs d=769 (13 x 13 column tiles = 91 tile programs per token split, several seconds
    per case on a shared 2-core machine) only as fp32 and fp16 at n=13 and bf16 (the production dtype) at
    n=1000, whose second token split ends in a ragged row block too. Every d <= 200 runs every dtype and
    every n, which exercises the same tiling, masking and split code.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
import zlib

import pytest
import torch

_previous_interpret = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import kernels.triton_second_moment as tsm

    if not tsm.INTERPRETED:
        tsm = importlib.reload(tsm)
except ImportError:  # Triton missing: the torch backend still has to pass everything
    tsm = None
finally:
    if _previous_interpret is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _previous_interpret

import kernels  # noqa: E402
from kernels import backend as kernel_backend  # noqa: E402

#: Relative Frobenius tolerance, lower triangle, vs float64 of the same rounded inputs (see docstring).
RTOL_FP32 = 2e-5
RTOL_FP16 = 2e-5
RTOL_BF16 = 2e-5
RTOL: dict[torch.dtype, float] = {torch.float32: RTOL_FP32, torch.float16: RTOL_FP16, torch.bfloat16: RTOL_BF16}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DIMS = (1, 7, 64, 200, 769)
TOKENS = (1, 13, 1000)

needs_triton = pytest.mark.skipif(tsm is None, reason="Triton is not importable")


@pytest.fixture(autouse=True)
def _interpreter_for_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton consults TRITON_INTERPRET while running interpreted kernels; set it per test, not globally."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def _activations(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """n x d values with per-column mean and scale (like activations), rounded to ``dtype``; never zero."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g) * 0.5
    scale = torch.exp(torch.randn(d, generator=g) * 0.5)
    x = torch.randn(n, d, generator=g) * scale + mean
    x = x.to(dtype)
    assert n == 0 or bool(x.abs().sum() > 0)
    return x


def _poisoned_acc(d: int, seed: int, scale: float) -> torch.Tensor:
    """Random lower triangle + diagonal of magnitude ``scale``; NaN strictly above the diagonal."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.randn(d, d, generator=g) * scale
    upper = torch.triu(torch.ones(d, d, dtype=torch.bool), diagonal=1)
    return acc.masked_fill(upper, float("nan"))


def _lower_rms(m: torch.Tensor) -> float:
    """Root-mean-square of the lower triangle: the scale for a poison that is neither negligible nor huge."""
    mask = torch.tril(torch.ones(m.shape, dtype=torch.bool))
    return float(m.double()[mask].pow(2).mean().sqrt())


def _lower_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    mask = torch.tril(torch.ones(ref.shape, dtype=torch.bool))
    diff = (got.double() - ref.double())[mask]
    scale = ref.double()[mask].norm()
    return float(diff.norm() / scale)


def _vec_rel_err(got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> float:
    # Column sums of signed data can cancel; scale by the sum of magnitudes, the accumulation's own scale.
    scale = x.double().abs().sum(dim=0).norm()
    return float((got.double() - ref.double()).norm() / scale)


def _run(backend: str, x: torch.Tensor, acc=None, colsum=None, **triton_kwargs):
    if backend == "triton":
        return tsm.second_moment_triton(x, acc, colsum, **triton_kwargs)
    assert not triton_kwargs
    return kernels.second_moment(x, acc, colsum, backend="torch")


def _backends() -> list:
    return [pytest.param("triton", marks=needs_triton), "torch"]


def _grid_cases() -> list:
    cases = []
    for backend in ("triton", "torch"):
        for dtype in DTYPES:
            for d in DIMS:
                for n in TOKENS:
                    kept_769 = n == (1000 if dtype == torch.bfloat16 else 13)
                    if backend == "triton" and d == 769 and not kept_769:
                        continue  # interpreter time; see the module docstring
                    marks = [needs_triton] if backend == "triton" else []
                    name = f"{backend}-{str(dtype).removeprefix('torch.')}-d{d}-n{n}"
                    cases.append(pytest.param(backend, dtype, d, n, marks=marks, id=name))
    return cases


@pytest.mark.parametrize(("backend", "dtype", "d", "n"), _grid_cases())
def test_second_moment_matches_float64(backend: str, dtype: torch.dtype, d: int, n: int) -> None:
    seed = _seed("grid", backend, dtype, d, n)
    x = _activations(n, d, dtype, seed)
    ref = x.double().T @ x.double()
    a0 = _poisoned_acc(d, seed + 1, scale=_lower_rms(ref))
    c0 = torch.randn(d, generator=torch.Generator().manual_seed(seed + 2))
    acc, colsum = a0.clone(), c0.clone()

    out = _run(backend, x, acc, colsum)

    assert out is acc
    err = _lower_rel_err(acc.double() - a0.double(), ref)
    assert err <= RTOL[dtype], f"relative error {err:.3e} > {RTOL[dtype]:.1e} (seed {seed})"
    lower = torch.tril(torch.ones(d, d, dtype=torch.bool))
    assert torch.isfinite(acc[lower]).all(), "a lower-triangle element picked up the NaN poison"
    col_err = _vec_rel_err(colsum - c0, x.double().sum(dim=0), x)
    assert col_err <= RTOL[dtype], f"colsum relative error {col_err:.3e} (seed {seed})"


@pytest.mark.parametrize("backend", _backends())
def test_allocates_zeroed_float32_accumulator(backend: str) -> None:
    x = _activations(50, 33, torch.float16, _seed("alloc", backend))
    acc = _run(backend, x)
    assert acc.dtype == torch.float32 and acc.shape == (33, 33) and acc.device == x.device
    assert _lower_rel_err(acc, x.double().T @ x.double()) <= RTOL_FP16


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_chunked_accumulation_equals_one_call(backend: str, dtype: torch.dtype) -> None:
    n, d = 300, 70  # two column tiles of 64, the second ragged
    x = _activations(n, d, dtype, _seed("chunks", backend, dtype))
    whole, whole_sum = _run(backend, x), torch.zeros(d)
    _run(backend, x, torch.zeros(d, d), whole_sum)
    parts, parts_sum = torch.zeros(d, d), torch.zeros(d)
    for lo, hi in ((0, 0), (0, 1), (1, 100), (100, 100), (100, 300)):
        _run(backend, x[lo:hi], parts, parts_sum)
    ref = x.double().T @ x.double()
    assert _lower_rel_err(parts, ref) <= RTOL[dtype]
    assert _lower_rel_err(parts, whole.double()) <= 2 * RTOL[dtype]
    assert _vec_rel_err(parts_sum, whole_sum, x) <= 2 * RTOL[dtype]


@needs_triton
@pytest.mark.parametrize("splits", [1, 3, 12], ids=["store", "atomic", "empty-splits"])
def test_triton_store_and_atomic_epilogues(splits: int) -> None:
    """One split takes the load+add+store epilogue, several the atomic one; 12 splits of a 130-row input
    (3 row blocks of 64) leave 9 splits without rows, which must add nothing."""
    n, d = 130, 150
    x = _activations(n, d, torch.float32, _seed("splits", splits))
    a0 = _poisoned_acc(d, _seed("splits-acc", splits), scale=100.0)
    c0 = torch.full((d,), 3.0)
    acc, colsum = a0.clone(), c0.clone()
    tsm.second_moment_triton(x, acc, colsum, splits=splits)
    assert _lower_rel_err(acc.double() - a0.double(), x.double().T @ x.double()) <= RTOL_FP32
    assert _vec_rel_err(colsum - c0, x.double().sum(dim=0), x) <= RTOL_FP32


@pytest.mark.parametrize("backend", _backends())
def test_non_contiguous_inputs(backend: str) -> None:
    d = 90
    big = _activations(400, d + 11, torch.bfloat16, _seed("strided", backend))
    columns_major = _activations(d, 200, torch.bfloat16, _seed("strided-t", backend)).T  # 200 x d
    views = {
        "column-window": big[:, 5 : 5 + d],  # row stride d + 11, unit column stride
        "every-other-row": big[::2, :d],  # row stride 2 (d + 11)
        "repeated-row": big[:1, :d].expand(50, d),  # row stride 0
        "transpose-view": columns_major,  # stride(1) != 1 -> copied to contiguous
    }
    for name, x in views.items():
        acc = _run(backend, x)
        err = _lower_rel_err(acc, x.double().T @ x.double())
        assert err <= RTOL_BF16, f"{name}: strides {x.stride()} error {err:.3e}"


@pytest.mark.parametrize("backend", _backends())
def test_strided_outputs_stay_inside_their_views(backend: str) -> None:
    """acc and colsum are strided views into larger buffers whose other elements hold -0.0: any store
    outside the views, even one that adds 0.0 (a too-wide mask), turns -0.0 into +0.0 and is caught."""
    d = 75
    x = _activations(64, d, torch.float16, _seed("guard", backend))
    buf = torch.full((d + 4, d + 3), -0.0)
    acc = buf[2 : 2 + d, 1 : 1 + d]
    acc.zero_()
    cbuf = torch.full((2 * d + 5,), -0.0)
    colsum = cbuf[3 : 3 + 2 * d : 2]  # stride 2
    colsum.zero_()
    _run(backend, x, acc, colsum)
    inside = torch.zeros_like(buf, dtype=torch.bool)
    inside[2 : 2 + d, 1 : 1 + d] = True
    assert torch.signbit(buf[~inside]).all() and (buf[~inside] == 0).all(), "a store landed outside acc"
    cinside = torch.zeros_like(cbuf, dtype=torch.bool)
    cinside[3 : 3 + 2 * d : 2] = True
    assert torch.signbit(cbuf[~cinside]).all() and (cbuf[~cinside] == 0).all(), "a store landed outside colsum"
    assert _lower_rel_err(acc, x.double().T @ x.double()) <= RTOL_FP16
    assert _vec_rel_err(colsum, x.double().sum(dim=0), x) <= RTOL_FP16


@pytest.mark.parametrize("backend", _backends())
def test_zero_tokens_leave_accumulators_unchanged(backend: str) -> None:
    d = 40
    acc = torch.randn(d, d)
    colsum = torch.randn(d)
    acc_before, colsum_before = acc.clone(), colsum.clone()
    out = _run(backend, torch.empty(0, d, dtype=torch.bfloat16), acc, colsum)
    assert out is acc
    assert torch.equal(acc, acc_before) and torch.equal(colsum, colsum_before)
    fresh = _run(backend, torch.empty(0, d, dtype=torch.float32))
    assert fresh.shape == (d, d) and torch.count_nonzero(fresh) == 0


def test_torch_backend_accepts_float64_accumulators() -> None:
    x = _activations(500, 48, torch.float32, _seed("f64"))
    acc = torch.full((48, 48), 1.0, dtype=torch.float64)
    colsum = torch.zeros(48, dtype=torch.float64)
    kernels.second_moment(x, acc, colsum)  # auto -> torch on CPU; float64 also forces torch
    ref = x.double().T @ x.double() + 1.0
    assert acc.dtype == torch.float64
    assert _lower_rel_err(acc, ref) <= RTOL_FP32
    assert torch.allclose(kernels.symmetrize(acc), acc)  # the torch path fills the full matrix
    assert _vec_rel_err(colsum, x.double().sum(dim=0), x) <= RTOL_FP32


def test_symmetrize_mirrors_lower_triangle() -> None:
    d = 9
    base = torch.randn(d, d, dtype=torch.float64)
    acc = base.clone()
    acc[torch.triu(torch.ones(d, d, dtype=torch.bool), diagonal=1)] = float("nan")
    before = acc.clone()
    full = kernels.symmetrize(acc)
    assert full is not acc
    assert torch.equal(acc.isnan(), before.isnan())  # input untouched
    lower = torch.tril(base)
    expected = lower + torch.tril(base, -1).T
    assert torch.equal(full, expected)
    assert torch.equal(full, full.T)
    assert torch.equal(full.diagonal(), base.diagonal())
    for bad in (torch.zeros(3), torch.zeros(3, 4), torch.zeros(2, 2, 2)):
        with pytest.raises(ValueError, match="square 2-D"):
            kernels.symmetrize(bad)


def _bad_inputs() -> list:
    x = torch.randn(5, 4)
    return [
        pytest.param(torch.randn(2, 5, 4), None, None, "2-D", id="3-D x"),
        pytest.param(torch.randn(5), None, None, "2-D", id="1-D x"),
        pytest.param(torch.ones(5, 4, dtype=torch.int32), None, None, "bfloat16, float16 or float32", id="int x"),
        pytest.param(torch.randn(5, 4, dtype=torch.float64), None, None, "float32", id="float64 x"),
        pytest.param(torch.randn(5, 0), None, None, "d >= 1", id="d=0"),
        pytest.param([[1.0, 2.0]], None, None, "torch.Tensor", id="list x"),
        pytest.param(x, torch.zeros(4, 5), None, r"shape \(4, 4\)", id="acc shape"),
        pytest.param(x, torch.zeros(4, 4, dtype=torch.float16), None, "acc must be", id="acc dtype"),
        pytest.param(x, torch.zeros(4, 4, device="meta"), None, "one device", id="acc device"),
        pytest.param(x, None, torch.zeros(5), r"shape \(4,\)", id="colsum length"),
        pytest.param(x, None, torch.zeros(4, dtype=torch.int64), "colsum must be", id="colsum dtype"),
    ]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize(("x", "acc", "colsum", "message"), _bad_inputs())
def test_bad_inputs_raise_value_error(backend: str, x, acc, colsum, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _run(backend, x, acc, colsum)
    if backend == "torch":
        with pytest.raises(ValueError, match=message):
            kernels.second_moment(x, acc, colsum)


@needs_triton
def test_triton_rejects_float64_accumulator_and_bad_options() -> None:
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="float32"):
        tsm.second_moment_triton(x, torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32"):
        kernels.second_moment(x, torch.zeros(4, 4, dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError, match="fp32_precision"):
        tsm.second_moment_triton(x, fp32_precision="tf32")
    with pytest.raises(ValueError, match="splits"):
        tsm.second_moment_triton(x, splits=0)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(3, 2)
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.resolve_backend(x, None) == "torch"  # CPU, no interpreter
    assert kernels.resolve_backend(x, "auto") == "torch"
    assert kernels.resolve_backend(x, "torch") == "torch"
    assert "torch" in kernels.available_backends()
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.resolve_backend(x, "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.second_moment(x, backend="numpy")

    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.resolve_backend(x, None) == "torch"
    monkeypatch.setenv(kernels.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=kernels.ENV_VAR):
        kernels.resolve_backend(x, None)
    assert kernels.resolve_backend(x, "torch") == "torch"  # an explicit argument wins over the variable


@needs_triton
def test_backend_selection_with_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(3, 2)
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_backend.triton_module() is tsm
    assert kernels.resolve_backend(x, None) == "triton"
    assert kernels.resolve_backend(x, None, float64_accumulator=True) == "torch"
    assert kernels.available_backends() == ("triton", "torch")
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.resolve_backend(x, None) == "torch"  # the variable forces torch under auto
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    assert kernels.resolve_backend(x, None) == "triton"
    # auto really runs the kernel: Triton leaves the strict upper triangle outside diagonal tiles alone.
    monkeypatch.setenv(kernels.ENV_VAR, "auto")
    d = 150
    xs = _activations(20, d, torch.float16, _seed("auto-dispatch"))
    acc = _poisoned_acc(d, 5, scale=1.0)
    kernels.second_moment(xs, acc)
    assert acc[0, d - 1].isnan()  # tile (0, 2) is never touched by the kernel; torch would overwrite it


@pytest.fixture
def triton_hidden(monkeypatch: pytest.MonkeyPatch):
    """Make ``import triton`` fail for the duration of a test, as on a machine without Triton."""
    monkeypatch.setitem(sys.modules, "triton", None)
    kernel_backend.triton_module.cache_clear()
    yield
    kernel_backend.triton_module.cache_clear()


def test_missing_triton_falls_back_to_torch(triton_hidden, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = _activations(30, 12, torch.bfloat16, _seed("fallback"))
    assert kernel_backend.triton_module() is None
    assert kernels.available_backends() == ("torch",)
    assert kernels.resolve_backend(x, None) == "torch"
    with pytest.warns(RuntimeWarning, match="Triton cannot be imported"):
        acc = kernels.second_moment(x, backend="triton")
    assert _lower_rel_err(acc, x.double().T @ x.double()) <= RTOL_BF16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.second_moment(x)  # auto falls back silently


@needs_triton
def test_split_heuristic_and_candidate_tilings() -> None:
    cpu = torch.device("cpu")
    assert tsm.choose_splits(1, 10, 64, cpu) == 1
    assert tsm.choose_splits(10_000, 10, 64, cpu) == tsm.INTERPRETER_SPLITS
    assert [tsm.n_bucket(n) for n in (0, 1, 1024, 1025, 50_000, 10**9)] == [1024, 1024, 1024, 2048, 65536, 2**24]
    # every shipped tiling is a config of the autotuner, once
    configs = {tsm._tile_config(c) for c in tsm._gpu_configs()}
    assert configs == {c for shipped in tsm.SHIPPED.values() for c in shipped}
    assert len(tsm._gpu_configs()) == len(configs)
    assert [c.block_d for c in tsm.candidate_configs("16bit", 7, 2)] == [32, 32]
    assert {c.block_d for c in tsm.candidate_configs("16bit", 768, 2)} == {64, 128}
    assert {c.block_d for c in tsm.candidate_configs("16bit", 64, 2)} == {32, 64}
    for mode in tsm.OPERAND_MODES:
        elem = 2 if mode == "16bit" else 4
        for d in (1, 7, 64, 200, 769, 3072, 4096):
            for limit, capability in ((232_448, 90), (166_912, 80), (101_376, 86)):
                kept = tsm.candidate_configs(mode, d, elem, limit, capability)
                assert kept, (mode, d, limit)
                fits = [c for c in kept if tsm.shared_memory_bytes(mode, c, elem) <= limit]
                assert fits == kept or len(kept) == 1  # only the smallest is kept when nothing fits
                if capability < 90:
                    assert not {(mode, c) for c in kept} & tsm.SPILL_ON_AMPERE


@needs_triton
def test_the_prune_rule_knows_shared_memory() -> None:
    """The tf32x3 128 x 64 tiling of the former config set needed 233,472 B of shared memory on sm_90a (Triton
    3.8), above one block's 232,448 B, and the former rule (operand buffers <= 200 KiB) let it through to fail
    at launch. The estimate counts the staged TF32 pieces and drops it; every shipped tiling fits."""
    former = tsm.TileConfig(128, 64, 8, 3)
    assert tsm.shared_memory_bytes("tf32x3", former, 4) >= 233_472 > 232_448
    for mode, configs in tsm.SHIPPED.items():
        elem = 2 if mode == "16bit" else 4
        for config in configs:
            assert tsm.shared_memory_bytes(mode, config, elem) <= 232_448, (mode, config)


@pytest.mark.parametrize("method", ["blocked", "syrk", "gemm"])
@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32], ids=["acc64", "acc32"])
def test_torch_backend_keeps_float32_products_under_active_autocast(
    method: str, acc_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine runs the forward pass (and so the hooks) inside ``torch.autocast(cpu, bfloat16)``; the
    statistics must still be float32 products (~1e-7 relative), not bf16 ones (~2e-3, the old bug: a bare
    ``torch.mm`` under autocast multiplies in bf16)."""
    from kernels import reference

    monkeypatch.setattr(reference, "CPU_METHOD", method, raising=False)  # (absent before the fix)
    n, d = 2000, 96  # two column blocks for "blocked"
    x = _activations(n, d, torch.float32, _seed("autocast", method, acc_dtype))
    acc = torch.zeros(d, d, dtype=acc_dtype)
    colsum = torch.zeros(d, dtype=acc_dtype)
    rounded_acc, rounded_colsum = acc.clone(), colsum.clone()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        kernels.second_moment(x, acc, colsum, backend="torch", fp32_inputs="exact")
        kernels.second_moment(x[:7], acc, colsum, backend="torch", fp32_inputs="exact")
        kernels.second_moment(x, rounded_acc, rounded_colsum, backend="torch")  # default: what the layer multiplies
    both = torch.cat([x, x[:7]]).double()
    ref = both.T @ both
    err = _lower_rel_err(acc, ref)
    assert err <= 1e-6, f"{method}: relative error {err:.2e} under autocast (bf16 products give ~2e-3)"
    assert _vec_rel_err(colsum, both.sum(dim=0), both) <= 1e-6
    xr = x.to(torch.bfloat16).double()  # autocast rounds a layer's float32 input to bf16 (nearest even)
    assert _lower_rel_err(rounded_acc, xr.T @ xr) <= 1e-6
    assert _vec_rel_err(rounded_colsum, xr.sum(dim=0), xr) <= 1e-6
    assert _lower_rel_err(rounded_acc, ref) > 1e-5, "the default under autocast rounds float32 inputs to bf16"


@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32], ids=["acc64", "acc32"])
def test_cpu_methods_agree_on_the_lower_triangle(acc_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block rows (one GEMM per block row of the lower triangle), the rank-k update (one triangle,
    mirrored) and the full GEMM equal the float64 product on the lower triangle, for widths of one, two and
    several column blocks (ragged last block, both block sizes), a row-strided view and a single row. The
    block rows never write right of the diagonal blocks (a poisoned strict upper triangle stays as it was
    there), and the poison never reaches the lower triangle."""
    from kernels import reference

    big = _activations(333, 300, torch.bfloat16, _seed("cpu-methods", acc_dtype))
    for x in (big, big[:, :130], big[::3, 5:122], big[:1, :17], big[:, :64]):
        d = x.shape[1]
        ref = x.double().T @ x.double()
        poison = torch.triu(torch.full((d, d), float("nan"), dtype=acc_dtype), diagonal=1)
        for method in ("blocked", "syrk", "gemm"):
            monkeypatch.setattr(reference, "CPU_METHOD", method)
            start = poison.clone() if method == "blocked" else torch.zeros(d, d, dtype=acc_dtype)
            acc = kernels.second_moment(x, start, backend="torch")
            assert _lower_rel_err(acc, ref) <= 1e-6, (method, d)
            if method == "blocked":
                b = reference.block_columns(d)
                block_of = torch.arange(d) // b
                outside = block_of[None, :] > block_of[:, None]  # strictly right of each row's diagonal block
                assert torch.isnan(acc[outside]).all(), "block rows wrote outside the lower block triangle"
            if method == "syrk":
                assert torch.equal(acc, acc.T)


def test_cpu_pool_runs_each_task_on_one_thread_and_leaves_thread_counts_alone() -> None:
    """Workers run torch on one thread; the caller's count, and the count a new thread starts with, are unchanged
    (torch.set_num_threads in a worker also sets the latter); results come back in the tasks' order, and the
    first exception reaches the caller."""
    import threading

    from kernels import cpu_pool

    before = torch.get_num_threads()
    counts = cpu_pool.run_all([torch.get_num_threads] * 6, workers=3)
    assert counts == [1] * 6 and torch.get_num_threads() == before
    fresh: list[int] = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [before]
    assert cpu_pool.run_all([lambda i=i: i * i for i in range(7)], cost=[1, 5, 2, 7, 3, 0, 4], workers=2) == \
        [i * i for i in range(7)]
    with pytest.raises(ValueError, match="task 3"):
        cpu_pool.run_all([lambda i=i: i if i != 3 else (_ for _ in ()).throw(ValueError("task 3")) for i in range(6)],
                         workers=2)
    # a worker's task that maps again runs inline: no deadlock when every worker does it
    assert cpu_pool.run_all([lambda: sum(cpu_pool.run_all([lambda: 1] * 3, workers=2))] * 2, workers=2) == [3, 3]


@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32], ids=["acc64", "acc32"])
def test_blocked_statistics_give_the_same_bits_on_any_worker_count(acc_dtype: torch.dtype,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block row and column sum is one single-threaded task, so the sums are the same bits with 1, 2 or 3
    workers, and the two halves of a call given together (second_moments) equal two separate calls."""
    from kernels import cpu_pool

    halves = [_activations(700, 300, torch.float32, _seed("pool-bits", h)) for h in (0, 1)]
    runs = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(cpu_pool, "WORKERS", workers)
        parts = [(x, torch.zeros(300, 300, dtype=acc_dtype), torch.zeros(300, dtype=acc_dtype)) for x in halves]
        kernels.second_moments(parts, backend="torch")
        runs.append(parts)
    separate = [(torch.zeros(300, 300, dtype=acc_dtype), torch.zeros(300, dtype=acc_dtype)) for _ in halves]
    for x, (acc, colsum) in zip(halves, separate):
        kernels.second_moment(x, acc, colsum, backend="torch")
    for parts in runs[1:] + [[(None, *pair) for pair in separate]]:
        for (_, acc, colsum), (_, ref_acc, ref_colsum) in zip(parts, runs[0]):
            assert torch.equal(acc, ref_acc) and torch.equal(colsum, ref_colsum)
    for x, (_, acc, _) in zip(halves, runs[0]):
        assert _lower_rel_err(acc, x.double().T @ x.double()) <= RTOL_FP32


def test_block_columns_cover_every_width() -> None:
    """Every width is covered exactly once by the block rows, with the measured block sizes."""
    from kernels import reference

    assert [reference.block_columns(d) for d in (1, 192, 256, 257, 768, 1024, 1025, 4096)] == \
        [64, 64, 64, 128, 128, 128, 256, 256]


def test_cpu_syrk_falls_back_to_the_gemm_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import reference

    monkeypatch.setattr(reference, "CPU_METHOD", "syrk")
    monkeypatch.setattr(reference, "_scipy_syrk", lambda: None)
    x = _activations(50, 9, torch.float32, _seed("no-scipy"))
    acc = kernels.second_moment(x, backend="torch")
    assert _lower_rel_err(acc, x.double().T @ x.double()) <= RTOL_FP32


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("round_to", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_float32_inputs_rounded_on_load(backend: str, round_to: torch.dtype) -> None:
    """``round_to`` multiplies the 16-bit rounding of float32 inputs (what a layer under that autocast
    multiplies): equal to the float64 product of ``x.to(round_to)`` to float32 accumulation, and visibly
    different from the exact float32 statistic. Ragged n and d, two column tiles, two token splits."""
    n, d = 203, 77
    x = _activations(n, d, torch.float32, _seed("round", backend, round_to))
    a0 = _poisoned_acc(d, _seed("round-acc", backend), scale=10.0)
    acc, colsum = a0.clone(), torch.zeros(d)
    if backend == "triton":
        tsm.second_moment_triton(x, acc, colsum, round_to=round_to)
    else:
        kernels.reference.second_moment_torch(x, acc, colsum, round_to=round_to)
    xr = x.to(round_to).double()
    got = acc.double() - a0.double()
    assert _lower_rel_err(got, xr.T @ xr) <= RTOL_BF16
    assert _vec_rel_err(colsum, xr.sum(dim=0), xr) <= RTOL_BF16
    assert _lower_rel_err(got, x.double().T @ x.double()) > 1e-5  # the rounding really happened


@pytest.mark.parametrize("backend", _backends())
def test_dispatcher_rounds_float32_to_the_active_autocast_dtype(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.FP32_INPUTS_ENV, raising=False)
    x = _activations(150, 40, torch.float32, _seed("dispatch-round", backend))
    xr = x.to(torch.bfloat16).double()
    outside = kernels.second_moment(x, backend=backend)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert kernels.fp32_rounding(x) is torch.bfloat16
        assert kernels.fp32_rounding(x.to(torch.bfloat16)) is None  # 16-bit inputs are what they are
        inside = kernels.second_moment(x, backend=backend)
        exact = kernels.second_moment(x, backend=backend, fp32_inputs="exact")
        monkeypatch.setenv(kernels.FP32_INPUTS_ENV, "exact")
        by_env = kernels.second_moment(x, backend=backend)
        monkeypatch.setenv(kernels.FP32_INPUTS_ENV, "sometimes")
        with pytest.raises(ValueError, match=kernels.FP32_INPUTS_ENV):
            kernels.second_moment(x, backend=backend)
    monkeypatch.delenv(kernels.FP32_INPUTS_ENV, raising=False)
    # The statistics switch autocast off around their products; the engine declares its precision instead.
    with kernels.layer_precision(torch.bfloat16), torch.autocast(device_type="cpu", enabled=False):
        assert kernels.fp32_rounding(x) is torch.bfloat16
        declared = kernels.second_moment(x, backend=backend)
    assert kernels.fp32_rounding(x) is None
    exact_ref = x.double().T @ x.double()
    assert _lower_rel_err(declared, xr.T @ xr) <= RTOL_BF16
    assert _lower_rel_err(outside, exact_ref) <= RTOL_FP32  # no autocast: nothing rounded
    assert _lower_rel_err(inside, xr.T @ xr) <= RTOL_BF16
    assert _lower_rel_err(exact, exact_ref) <= RTOL_FP32
    assert _lower_rel_err(by_env, exact_ref) <= RTOL_FP32


@needs_triton
def test_wave_splits_fill_whole_waves() -> None:
    """The split count minimises waves x (row blocks per split + epilogue), checked by brute force over every
    S the search allows (at least 8 row blocks per split, at most MAX_WAVES waves, at least one split), and the
    ViT-B cases of issues 16 and 28 on 132 SMs with one program each at batch 256 (788 row blocks of 64):
    d = 768 (21 tiles of 128) runs in one full wave (S = 6) instead of the old rule's 2.07 waves; d = 3072
    (300 tiles) takes S = 3, 7 waves 97 % full, where the former cap of 4 waves allowed only S = 1 (3 waves,
    76 % full), about 21 % more time in the cost model."""
    assert tsm.wave_splits(21, 788, 132) == 6 and 21 * 6 <= 132
    assert tsm.wave_splits(300, 788, 132) == 3
    assert tsm.split_cost(300, 788, 132, 1) / tsm.split_cost(300, 788, 132, 3) > 1.2
    for pairs, row_blocks, slots in [(21, 788, 132), (300, 788, 132), (300, 394, 132), (528, 394, 132),
                                     (78, 6250, 264), (1, 10_000, 132), (300, 40, 132), (6, 97, 396), (2080, 900, 132)]:
        s = tsm.wave_splits(pairs, row_blocks, slots)
        most = max(1, min(row_blocks // tsm.MIN_ROW_BLOCKS_PER_SPLIT, tsm.MAX_WAVES * slots // pairs))
        assert 1 <= s <= most

        def cost(k: int) -> float:
            return -(-pairs * k // slots) * (-(-row_blocks // k) + tsm.EPILOGUE_ROW_BLOCKS)

        assert cost(s) == min(cost(k) for k in range(1, most + 1)) == tsm.split_cost(pairs, row_blocks, slots, s)
    # Occupancy from compiled resources: 255 registers x 8 warps leaves room for one program, 163 x 4 for 3.
    assert tsm.residency(255, 100_352, 8) == 1
    assert tsm.residency(163, 51_200, 4) == 3
    assert tsm.residency(32, 200_000, 4) == 1  # shared memory bound
    # before compiling: the sm_90a builds (kernels.aot) have 216 registers at 128 x 64 x 8 warps, 118 at 64 x 64 x 4
    assert tsm.residency(216, 98_304, 8) == tsm.estimated_residency(tsm.TileConfig(128, 64, 8, 3), "16bit", 2) == 1
    assert tsm.residency(118, 49_152, 4) == tsm.estimated_residency(tsm.TileConfig(64, 64, 4, 3), "16bit", 2) == 4


@needs_triton
@pytest.mark.parametrize(("dtype", "n", "d"), [(torch.bfloat16, 13, 7), (torch.float32, 300, 150),
                                              (torch.float16, 1000, 70), (torch.bfloat16, 300, 150)],
                         ids=["bf16-tiny", "fp32-two-tiles", "fp16-ragged", "bf16-two-tiles"])
def test_deterministic_mode_sums_the_splits_in_order(dtype: torch.dtype, n: int, d: int) -> None:
    """The deterministic mode stores each split's partial tiles and adds them in split order: the result is
    exactly ``acc + (T_0 + T_1)`` with ``T_s`` the same kernel's sum over split ``s``'s rows alone (whatever
    order the splits ran in), matches float64 like every path, leaves the NaN-poisoned upper triangle alone
    outside the diagonal tiles, and gives the same bits again."""
    x = _activations(n, d, dtype, _seed("det", dtype, n, d))
    a0 = _poisoned_acc(d, _seed("det-acc", n, d), scale=10.0)
    c0 = torch.randn(d, generator=torch.Generator().manual_seed(_seed("det-c", n, d)))
    runs = []
    for _ in range(2):
        acc, colsum = a0.clone(), c0.clone()
        tsm.second_moment_triton(x, acc, colsum, deterministic=True)
        runs.append((acc, colsum))
    assert torch.equal(runs[0][0].nan_to_num(7.0), runs[1][0].nan_to_num(7.0)) and torch.equal(runs[0][1], runs[1][1])
    acc, colsum = runs[0]
    assert _lower_rel_err(acc.double() - a0.double(), x.double().T @ x.double()) <= RTOL[dtype]
    assert _vec_rel_err(colsum - c0, x.double().sum(dim=0), x) <= RTOL[dtype]
    rows = -(-(-(-n // 64)) // tsm.INTERPRETER_SPLITS) * 64  # rows of each split (whole 64-row blocks)
    parts = []
    for chunk in (x[:rows], x[rows:]):
        part, part_sum = torch.zeros(d, d), torch.zeros(d)
        if chunk.shape[0]:
            tsm.second_moment_triton(chunk, part, part_sum, splits=1, deterministic=True)
        parts.append((part, part_sum))
    lower = torch.tril(torch.ones(d, d, dtype=torch.bool))
    expected = a0 + (parts[0][0] + parts[1][0])
    assert torch.equal(acc[lower], expected[lower])
    assert torch.equal(colsum, c0 + (parts[0][1] + parts[1][1]))


@needs_triton
def test_deterministic_plan_depends_on_the_shape_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiling and split count come from n, d and the operand class (a reference of 132 SMs), not the device:
    ViT-B at batch 256 gets the first 16-bit tiling and the same splits as the wave model on an H100/H200."""
    config, splits = tsm.deterministic_plan(256 * 197, 768, "16bit", 2)
    assert config == tsm.SHIPPED["16bit"][0] and splits == tsm.wave_splits(21, 788, 132) == 6
    assert tsm.deterministic_plan(256 * 197, 3072, "16bit", 2) == (config, 3)
    assert tsm.deterministic_plan(5, 768, "16bit", 2)[1] == 1
    monkeypatch.delenv(tsm.DETERMINISTIC_ENV, raising=False)
    assert tsm.deterministic_requested() is torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv(tsm.DETERMINISTIC_ENV, "1")
    assert tsm.deterministic_requested() is True
    monkeypatch.setenv(tsm.DETERMINISTIC_ENV, "0")
    assert tsm.deterministic_requested() is False
    monkeypatch.setenv(tsm.DETERMINISTIC_ENV, "sometimes")
    with pytest.raises(ValueError, match=tsm.DETERMINISTIC_ENV):
        tsm.deterministic_requested()


@needs_triton
def test_autotune_key_covers_every_switch_and_not_the_exact_n() -> None:
    keys = set(tsm._second_moment_kernel.keys)
    assert {"d", "n_class", "HAS_COLSUM", "FP32_PRECISION", "ROUND_TO", "DETERMINISTIC"} <= keys
    assert "n" not in keys  # (that n is not specialised either is checked on the compiled kernel: test_kernel_aot)
    # a ragged last batch stays in its class: ViT-B batches of 256 and 100 images (197 tokens each)
    assert tsm.n_class(256 * 197) == tsm.n_class(100 * 197) == tsm.n_class(21 * 197) == 1
    assert [tsm.n_class(n) for n in (1, 256, 4095, 4096, 10**9)] == [0, 0, 0, 1, 1]
