"""The COMPILED Triton kernel on a CUDA GPU (marker ``gpu``; skipped cleanly without CUDA).

``tests/test_kernels.py`` checks the same contract in Triton's CPU interpreter; these tests run what the
GPU really executes (tensor-core ``wgmma`` for 16-bit and rounded inputs, FMA or TF32x3 for float32, the
wave-filling split choice, the autotuner) against a float64 reference of the same (rounded) inputs, in
relative Frobenius norm of the lower triangle. Tolerance: float32 accumulation of n terms,
``2e-5`` for n <= 1000 as in test_kernels, ``1e-4`` for n = 50 000 (typical error ``sqrt(n) 2^-24`` =
1.3e-5; the worst case ``n 2^-24`` is far above, but a tile accumulates only its own split's rows).
``scripts/gpu_check.sh`` runs this file on the device machine.

Module state: ``tests/test_kernels.py`` reloads :mod:`kernels.triton_second_moment` in interpreter mode
(reload keeps the module object, so every holder sees the change). The fixture here reloads it compiled
(with the three-config quick tuning) for this module's tests and restores the mode it found afterwards.
"""

from __future__ import annotations

import importlib
import os
import zlib

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

RTOL_SMALL = 2e-5
RTOL_LARGE = 1e-4


@pytest.fixture(scope="module")
def tsm():
    pytest.importorskip("triton")
    import kernels.triton_second_moment as module

    was_interpreted = module.INTERPRETED
    saved = os.environ.pop("TRITON_INTERPRET", None)
    saved_configs = os.environ.get(module.CONFIGS_ENV)
    os.environ[module.CONFIGS_ENV] = "quick"  # three configs: compiles in seconds (see the module)
    module = importlib.reload(module)
    assert not module.INTERPRETED
    try:
        yield module
    finally:
        if saved_configs is None:
            os.environ.pop(module.CONFIGS_ENV, None)
        else:
            os.environ[module.CONFIGS_ENV] = saved_configs
        if was_interpreted:
            os.environ["TRITON_INTERPRET"] = "1"
        importlib.reload(module)
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _x(n: int, d: int, dtype: torch.dtype, *key: object) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(zlib.crc32(repr((n, d, dtype, key)).encode()))
    mean = torch.randn(d, generator=g, device="cuda") * 0.5
    scale = torch.exp(torch.randn(d, generator=g, device="cuda") * 0.5)
    return (torch.randn(n, d, generator=g, device="cuda") * scale + mean).to(dtype)


def _ref(x: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    return xd.T @ xd


def _lower_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    mask = torch.ones_like(ref, dtype=torch.bool).tril_()
    return float((got.double() - ref)[mask].norm() / ref[mask].norm())


def _poisoned(d: int) -> torch.Tensor:
    acc = torch.randn(d, d, device="cuda")
    return acc.masked_fill(torch.ones(d, d, dtype=torch.bool, device="cuda").triu(1), float("nan"))


CASES = [
    (dtype, mode, d, n)
    for dtype, mode in [(torch.bfloat16, "native"), (torch.float16, "native"), (torch.float32, "ieee"),
                        (torch.float32, "tf32x3"), (torch.float32, "round-bf16")]
    for d, n in [(7, 13), (64, 1000), (200, 1), (769, 1000), (768, 50_000), (3072, 4099)]
]


@pytest.mark.parametrize(("dtype", "mode", "d", "n"), CASES,
                         ids=[f"{str(c[0]).removeprefix('torch.')}-{c[1]}-d{c[2]}-n{c[3]}" for c in CASES])
def test_compiled_kernel_matches_float64(tsm, dtype: torch.dtype, mode: str, d: int, n: int) -> None:
    x = _x(n, d, dtype, mode)
    a0 = _poisoned(d)
    acc, colsum = a0.clone(), torch.zeros(d, device="cuda")
    kwargs = {"round_to": torch.bfloat16} if mode == "round-bf16" else {}
    if mode in ("ieee", "tf32x3"):
        kwargs["fp32_precision"] = mode
    tsm.second_moment_triton(x, acc, colsum, **kwargs)
    xs = x.to(torch.bfloat16) if mode == "round-bf16" else x
    tol = RTOL_SMALL if n <= 1000 else RTOL_LARGE
    lower = torch.ones(d, d, dtype=torch.bool, device="cuda").tril_()
    assert torch.isfinite(acc[lower]).all(), "a lower element read the NaN poison"
    assert _lower_err(acc.double() - a0.double(), _ref(xs)) <= tol
    ref_sum = xs.double().sum(dim=0)
    assert float((colsum.double() - ref_sum).norm() / xs.double().abs().sum(dim=0).norm()) <= tol


@pytest.mark.parametrize("splits", [1, 3, 40])
def test_compiled_store_and_atomic_epilogues(tsm, splits: int) -> None:
    x = _x(2000, 300, torch.bfloat16, "splits", splits)
    acc = torch.zeros(300, 300, device="cuda")
    tsm.second_moment_triton(x, acc, splits=splits)
    assert _lower_err(acc, _ref(x)) <= RTOL_SMALL


def test_ragged_last_batch_neither_recompiles_nor_retunes(tsm) -> None:
    d = 384
    tsm.prepare(d, torch.bfloat16, 256 * 197)
    tuned = dict(tsm._second_moment_kernel.cache)
    jit = tsm._second_moment_kernel.fn
    compiled = sum(len(cache[0]) for cache in jit.device_caches.values())
    acc = torch.zeros(d, d, device="cuda")
    colsum = torch.zeros(d, device="cuda")
    for n in (256 * 197, 100 * 197 + 3, 37_411):
        tsm.second_moment_triton(_x(n, d, torch.bfloat16, "ragged"), acc, colsum)
    assert dict(tsm._second_moment_kernel.cache) == tuned, "a ragged batch re-tuned"
    assert sum(len(cache[0]) for cache in jit.device_caches.values()) == compiled, "a ragged batch recompiled"
    assert tsm._RESIDENCY, "the compiled kernel's residency was recorded for the split choice"


def test_dispatcher_under_bf16_autocast_uses_rounded_inputs(tsm) -> None:
    import kernels

    x = _x(5000, 192, torch.float32, "autocast")
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        acc = kernels.second_moment(x)
    assert _lower_err(acc, _ref(x.to(torch.bfloat16))) <= RTOL_LARGE
