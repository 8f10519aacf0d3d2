"""The statistics' checks and casts (issue 28): the finiteness check covers ``C`` as well as the column sums, and
under autocast a hooked layer and its statistics share one cast of a float32 input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from analysis.errors import NumericalError
from analysis.models import describe_layers
from analysis.statistics import MomentCollector


def _specs(model: nn.Module) -> list:
    return [s for s in describe_layers(model) if s.applicable]


def test_an_overflowing_square_is_caught_although_the_column_sums_are_finite() -> None:
    """Finite inputs whose squares overflow float32 (1e20^2 = 1e40) leave the column sums finite but put inf on
    the diagonal of C: the check must raise, naming the layer (the former check read only the column sums)."""
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    x = torch.randn(10, 6)
    x[3, 2] = 1e20
    with torch.no_grad():
        model[0].weight.zero_()  # the second layer's inputs stay small: only the first layer's C overflows
    with MomentCollector(_specs(model)) as collector:
        collector._acc = {k: v.to(torch.float32) for k, v in collector._acc.items()}  # the GPU's float32 sums
        collector._sum = {k: v.to(torch.float32) for k, v in collector._sum.items()}
        with pytest.raises(NumericalError, match=r"'0'.*square"):
            model(x)
            assert all(torch.isfinite(s).all() for s in collector._sum.values())
            collector.next_batch()


def test_nan_inputs_are_caught_at_the_batch_and_finish_reads_the_last_check() -> None:
    model = nn.Sequential(nn.Linear(5, 5))
    with MomentCollector(_specs(model)) as collector:
        model(torch.randn(8, 5))
        collector.next_batch()
        collector.finish()  # finite: nothing raised
        x = torch.randn(8, 5)
        x[0, 0] = float("nan")
        model(x)
        with pytest.raises(NumericalError, match="batch 1"):
            collector.finish()


class _CastCounter(TorchDispatchMode):
    """Counts float32 -> bfloat16 casts of tensors with ``rows`` leading rows (activations, not weights)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows, self.casts = rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default):
            tensor, dtype = args[0], (args[1] if len(args) > 1 else kwargs.get("dtype"))
            if tensor.dtype == torch.float32 and dtype == torch.bfloat16 and tensor.shape[0] == self.rows:
                self.casts += 1
        return func(*args, **kwargs)


def test_hooked_layers_and_their_statistics_share_one_cast_under_autocast() -> None:
    """bf16 autocast, float32 activations (LayerNorm's output, a convolution's input): in steady state a plain
    Linear/Conv2d gets the input the statistics cast, so a forward makes exactly the casts it makes without
    statistics (one per layer input), its outputs are the same bits, and the statistics are those of the bf16
    rounding of each input (what the layer multiplies)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 2, stride=2)
            self.norm = nn.LayerNorm(8)
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x).flatten(2).transpose(1, 2).float()
            return self.fc2(torch.relu(self.fc1(self.norm(h))).float())

    model = Net().eval()
    images = 6
    x = torch.randn(images, 3, 8, 8)
    specs = _specs(model)

    def forward(collector: MomentCollector | None) -> tuple[torch.Tensor, int]:
        with _CastCounter(images) as counter:
            out = model(x)
            if collector is not None:
                collector.next_batch()
        return out, counter.casts

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), kernels.layer_precision(torch.bfloat16):
        plain, plain_casts = forward(None)
        collector = MomentCollector(specs)
        with collector:
            collector.begin_batch(torch.arange(images))
            forward(collector)  # discovery batch (self-check; the capture's own casts)
            collector.begin_batch(torch.arange(images))
            hooked, hooked_casts = forward(collector)
    assert plain_casts == 3 and hooked_casts == plain_casts  # conv, fc1, fc2 inputs: once each
    assert torch.equal(plain, hooked)
    # the statistics of fc1 are those of the bf16 rounding of its inputs (over both batches)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = model.norm(model.conv(x).flatten(2).transpose(1, 2).float()).to(torch.bfloat16)
    inputs = inputs.double().reshape(-1, 8)
    expected = 2 * inputs.T @ inputs
    got = collector.moments()["fc1"].second_moment
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_a_layer_with_more_than_the_call_keeps_its_float32_input() -> None:
    """Only plain Linear/Conv2d modules receive the cast input: a subclass whose forward also uses its input
    another way gets the original float32 tensor, so its output is unchanged."""

    class Residual(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + x.sum(-1, keepdim=True)  # the float32 x, not its bf16 rounding

    model = nn.Sequential(nn.LayerNorm(8), Residual(8, 8)).eval()
    x = torch.randn(5, 8) * 3
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(x)
        collector = MomentCollector(_specs(model))
        with collector:
            for _ in range(2):
                hooked = model(x)
                collector.next_batch()
    assert torch.equal(plain, hooked)


def test_an_input_that_needs_its_gradient_is_not_replaced() -> None:
    """Outside inference mode, an input that requires grad keeps its autograd graph: the hook's cast is made
    without autograd, so the layer gets the original tensor and the gradient reaches the input."""
    model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4))
    x = torch.randn(6, 8, requires_grad=True)
    collector = MomentCollector(_specs(model))
    with torch.autocast("cpu", dtype=torch.bfloat16), collector:
        for _ in range(2):
            out = model(x)
            collector.next_batch()
    out.float().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
