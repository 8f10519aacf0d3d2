"""One shape-only forward of a model: every parameter and buffer on the meta device, no memory, no arithmetic.

:func:`meta_forward` runs ``model`` once on a meta-device input of ``(1, C, H, W)`` with each module's own
tensors replaced by meta tensors of the same shape and dtype (module by module, so a module shared by several
parents, as CoaT's convolutional position encodings, is swapped once and put back exactly; a Parameter tied
between modules stays one tensor), and puts every original tensor back afterwards, also on error. Hooks the
caller registered see the real module order and the shapes, never data. A model that cannot run on the meta
device (data-dependent Python control flow, tensors kept as plain attributes) makes it return False. The
swap changes the module objects for its duration: no other thread may run the same model object meanwhile
(the analysis runs it in its own job process).

Used for the call order of the blocks (:mod:`analysis.models.blocks`) and the vectors per image of the cost
estimate (:mod:`analysis.cost`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def on_meta(model: nn.Module) -> Iterator[None]:
    """Within the block, every parameter and buffer of ``model`` is a meta tensor (see the module docstring)."""
    saved: list[tuple[dict, str, torch.Tensor]] = []
    replacement: dict[int, torch.Tensor] = {}
    try:
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in replacement:
                        replacement[id(tensor)] = torch.empty_like(tensor, device="meta")
                    saved.append((store, name, tensor))
                    store[name] = replacement[id(tensor)]
        yield
    finally:
        for store, name, tensor in reversed(saved):
            store[name] = tensor


def meta_forward(model: nn.Module, input_size: tuple[int, int, int]) -> bool:
    """Run ``model`` once on a meta input of shape ``(1, *input_size)``; False if it cannot run there."""
    try:
        with on_meta(model), torch.no_grad():
            model(torch.empty(1, *(int(v) for v in input_size), device="meta"))
    except Exception:  # noqa: BLE001 - any model that cannot run on the meta device
        return False
    return True
