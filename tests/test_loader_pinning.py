"""Pinned host memory for batches bound for a CUDA device (issue 16): chosen from the device, never on CPU."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from analysis.data import make_loader


def _data() -> TensorDataset:
    return TensorDataset(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.int64))


def test_pinning_follows_the_device() -> None:
    assert make_loader(_data(), batch_size=2, device="cpu").pin_memory is False
    assert make_loader(_data(), batch_size=2).pin_memory is False
    assert make_loader(_data(), batch_size=2, device="cuda").pin_memory is torch.cuda.is_available()
    assert make_loader(_data(), batch_size=2, pin_memory=False, device="cuda").pin_memory is False
