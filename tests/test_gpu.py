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
(with the quick tuning: one tiling per operand class and width) for this module's tests and restores the mode
it found afterwards.
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
    os.environ[module.CONFIGS_ENV] = "quick"  # one tiling per class and width: compiles in seconds
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
] + [(torch.bfloat16, "deterministic", d, n) for d, n in [(7, 13), (769, 1000), (768, 50_432), (3072, 25_216)]]


@pytest.mark.parametrize(("dtype", "mode", "d", "n"), CASES,
                         ids=[f"{str(c[0]).removeprefix('torch.')}-{c[1]}-d{c[2]}-n{c[3]}" for c in CASES])
def test_compiled_kernel_matches_float64(tsm, dtype: torch.dtype, mode: str, d: int, n: int) -> None:
    x = _x(n, d, dtype, mode)
    a0 = _poisoned(d)
    acc, colsum = a0.clone(), torch.zeros(d, device="cuda")
    kwargs = {"round_to": torch.bfloat16} if mode == "round-bf16" else {}
    if mode in ("ieee", "tf32x3"):
        kwargs["fp32_precision"] = mode
    kwargs["deterministic"] = mode == "deterministic"
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


def test_deterministic_mode_gives_the_same_bits_and_the_default_agrees(tsm) -> None:
    """Deterministic: two runs (and a run after the autotuned path has recorded other residencies) give the same
    bits, also with several splits; the default (atomic) path agrees to float32 accumulation."""
    x = _x(25_216, 3072, torch.bfloat16, "det-bits")
    config, splits = tsm.deterministic_plan(x.shape[0], 3072, "16bit", 2)
    assert splits > 1  # the partial tiles and the reduction kernel really run
    runs = []
    for _ in range(2):
        acc, colsum = torch.zeros(3072, 3072, device="cuda"), torch.zeros(3072, device="cuda")
        tsm.second_moment_triton(x, acc, colsum, deterministic=True)
        tsm.second_moment_triton(x, torch.zeros(3072, 3072, device="cuda"))  # autotuned path in between
        runs.append((acc.tril(), colsum))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    fast = tsm.second_moment_triton(x, torch.zeros(3072, 3072, device="cuda"), deterministic=False)
    assert _lower_err(runs[0][0], fast.double().tril()) <= RTOL_SMALL


def test_split_choice_fills_waves_at_3072(tsm) -> None:
    """d = 3072 at ViT-B batch 256: the 128-wide tiling's 300 tiles take several splits (the former cap forced
    S = 1, 3 waves for 2.27 waves of work) once the compiled residency is known."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tsm.prepare(3072, torch.bfloat16, 256 * 197)
    per_sm = [v for k, v in tsm._RESIDENCY.items() if k[0] == 128 and k[2] == "bfloat16"]
    if not per_sm:
        pytest.skip("the tuner chose a tiling narrower than 128 for d = 3072")
    chosen = tsm.choose_splits(256 * 197, 300, 64, torch.device("cuda"), per_sm[0])
    assert chosen == tsm.wave_splits(300, 788, sms * per_sm[0])
    assert tsm.wave_splits(300, 788, sms * per_sm[0]) > 1 or per_sm[0] * sms >= 300


def test_non_finite_statistics_are_caught_one_batch_late_and_at_finish() -> None:
    from torch import nn

    from analysis.errors import NumericalError
    from analysis.models import describe_layers
    from analysis.statistics import MomentCollector

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)).cuda()
    specs = [s for s in describe_layers(model) if s.applicable]
    with MomentCollector(specs, "cuda") as collector:
        model(torch.randn(256, 64, device="cuda"))
        collector.next_batch()
        x = torch.randn(256, 64, device="cuda")
        x[0, 0] = 1e20  # finite, but its square overflows float32
        model[0](x)
        collector.next_batch()  # queued: not read yet
        with pytest.raises(NumericalError, match="batch 1"):
            collector.finish()


def test_device_batches_copy_ahead_on_a_side_stream() -> None:
    """Every batch arrives on the GPU with its values, in order; the copies ran on another stream than the
    compute stream (the compute stream waits for each copy only when its batch is handed out)."""
    from analysis.data.loader import device_batches

    host = [(torch.randn(8, 3, 32, 32).pin_memory(), torch.tensor([i])) for i in range(5)]
    streams = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        streams.append(torch.cuda.current_stream().stream_id)
        return original(self, *args, **kwargs)

    torch.Tensor.to = spy
    try:
        got = [(b.clone(), label) for b, label in device_batches(host, "cuda")]
    finally:
        torch.Tensor.to = original
    assert [int(label) for _, label in got] == list(range(5))
    for (batch, _), (source, _) in zip(got, host):
        assert torch.equal(batch.cpu(), source)
    assert streams and all(s != torch.cuda.current_stream().stream_id for s in streams)


def test_one_cast_under_cuda_autocast(tsm) -> None:
    """Under CUDA bf16 autocast a hooked nn.Linear receives the statistics' bf16 cast of its float32 input: the
    output is the same bits as without statistics, and the statistics are those of the bf16 rounding."""
    import kernels
    from torch import nn

    from analysis.models import describe_layers
    from analysis.statistics import MomentCollector

    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(256), nn.Linear(256, 512)).cuda().eval()
    x = torch.randn(4, 197, 256, device="cuda")
    specs = [s for s in describe_layers(model) if s.applicable]
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16), kernels.layer_precision(torch.bfloat16):
        plain = model(x)
        collector = MomentCollector(specs, "cuda")
        with collector:
            for _ in range(2):
                collector.begin_batch(torch.arange(4))
                hooked = model(x)
                collector.next_batch()
            collector.finish()
        inputs = model[0](x).to(torch.bfloat16).reshape(-1, 256)
    assert torch.equal(plain, hooked)
    got = collector.moments()["1"].second_moment
    ref = 2 * _ref(inputs).cpu()
    assert float((got - ref).norm() / ref.norm()) <= RTOL_LARGE
