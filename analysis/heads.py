"""Attention in detail: q, k and v as separate output subspaces of one layer, and per-head utilization.

**Layout.** An attention module is any module with an integer ``num_heads`` H (timm ``Attention``,
``EvaAttention``, BEiT's ``Attention``, Swin's ``WindowAttention``, PVT-v2's and Twins' ``Attention``,
CaiT's ``ClassAttn``/``TalkingHeadAttn``, ...), found from the analysed layers of an attention kind and
their parent module, never from the model's name. Its children give the structure:

- a fused Linear ``qkv`` (or ``to_qkv``) of ``3 D`` outputs, ``D = H dh``; two arrangements of its rows
  are possible and the forward code alone knows which one it uses:
  *part-major* ``[q; k; v]``, each ``H`` heads of ``dh`` rows (timm ``reshape(B, N, 3, H, dh)``), row of
  (part i, head h, j) = ``i D + h dh + j``; *head-major* ``[q_0 k_0 v_0 q_1 ...]`` (timm MaxViT
  ``view(B, N, H, 3 dh)``), row = ``h 3 dh + i dh + j``;
- or separate Linears ``q``/``k``/``v`` (``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``,
  ``to_q``...), heads-major rows ``h dh + j`` each, optionally with ``k``/``v`` fused into ``kv``
  (``[k; v]`` part-major like PVT-v2's ``reshape(B, N, 2, H, dh)``, or head-major);
- an output projection ``proj`` (``out_proj``, ``o_proj``) whose input is the concatenation of the heads'
  outputs, ``H`` heads of ``dv = d_in(proj) / H`` columns, heads-major (``transpose(1, 2).reshape``).

**Verification (the probe).** Which arrangement a module uses is checked, not assumed: the model runs on
one seeded random batch of two images (:data:`PROBE_IMAGES`, float32 without TF32) three times at most,
capturing the projection's input: unchanged, then with the rows a candidate says are head t's ``v`` set to
zero (weight rows zeroed, and the layer's output rows zeroed by a forward hook where the layer's own forward
runs, so its bias goes too). Head t's output ``sum_j A_ij v_j`` is then ``sum_j A_ij b = b`` (attention
rows sum to one; ``b`` the v bias applied, or 0) for every token of every image: its ``dv`` columns of the
projection's input become constant, whatever relative-position bias, mask, rotary embedding or q/k norm the
module applies. Zeroing the wrong rows instead changes other heads' ``v`` (head t keeps varying) or head
t's ``q``/``k`` (its attention becomes uniform or shifted, but its output still differs between images).
Head t is, of heads 0 .. H-2, the one whose output varies most (relative to its size) on the unchanged
forward: the v rows of head H-1 are the same in both fused arrangements (``2 D + (H-1) dh``), those of any
other head differ. A module passes if head t varied before (spread > :data:`VARYING` of its magnitude) and
is constant after (spread <= :data:`CONSTANT` of it).
That ``q`` precedes ``k`` is the convention of every fused layout we know (timm reshapes ``3`` as q, k, v);
it is assumed, not probed (q and k enter the scores symmetrically). Where the structure is unknown, sizes
do not divide, the module has grouped key/value heads (``num_kv_heads != num_heads``), or no candidate
passes the probe, the layer gets no head numbers and a reason (``heads.reason``): the tool never guesses.

**Maths.** For a q/k/v-producing layer with effective ``W`` (``d_out x d_in``), bias ``b`` and input
statistics ``C``, ``s``, ``N`` (exactly the :class:`~analysis.spectra.AffineLayer` the spectra are computed
from: centred when the analysis is, then with ``b = None`` and ``s = 0``), the output moment of part
``p`` (rows ``R_p``, in head order) is

    C_p = W_p C W_p^T + W_p s b_p^T + b_p s^T W_p^T + N b_p b_p^T,     W_p = W[R_p], b_p = b[R_p]

(:func:`analysis.spectra.output_second_moment`), a ``D x D`` diagonal block of the layer's ``C_out``, and
head ``h``'s moment is the ``dh x dh`` diagonal block of ``C_p`` at rows ``h dh ... (h+1) dh - 1``. So the
traces add up: ``sum_p tr C_p = tr C_out`` (fused qkv) and ``sum_h tr C_p,h = tr C_p``. For the output
projection the per-head INPUT moment is the ``dv x dv`` diagonal block of its ``C_in``. Stored per layer in
:attr:`~analysis.result.LayerSpectrum.extras` (float64 eigenvalues, descending, clipped at 0; ``eigvalsh``):

- ``part.<q|k|v>.eig`` (``D,``) and ``part.<q|k|v>.heads`` (``H x dh``) on the layer producing that part;
- ``part.proj_in.heads`` (``H x dv``) on the output projection;
- ``heads.attention`` (the attention module's name) and ``heads.layout`` (the arrangement) with them;
- ``heads.reason`` (0-d string) on an attention layer without head numbers.

**Per-head utilization** (:func:`head_table`, re-thresholded from the stored eigenvalues at any energies):

- q/k/v head h: ``k = k_out,h(e_out)`` from head h's eigenvalues, ``r = min(k_in, k)`` with ``k_in`` the
  layer's (all parts and heads read the one input subspace, so a head cannot use more directions than the
  input offers), ``u = r / min(d_in, dh)``; the whole part likewise with ``D``: ``u = min(k_in, k_out,p) /
  min(d_in, D)``;
- the projection's input head h: ``k = k_in,h(e_in)``, ``u = k / dv``. Only the input side is per head:
  the output is one sum over the heads, so it has no per-head subspace; the whole-part row is the layer's
  own input side, ``u = k_in / d_in``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import metrics
from .capture import LayerCapture
from .models.kinds import Kind
from .models.layers import LayerSpec, find_layer, functional_layers
from .spectra import CPU_EIGH_THREADS, AffineLayer, cpu_threads, output_second_moment

__all__ = [
    "ATTENTION_KINDS", "HEAD_PARTS", "AttentionLayout", "AttentionLayouts", "add_head_extras",
    "attention_layouts", "candidate_layouts", "has_head_data", "head_layouts", "head_reasons", "head_table",
    "layouts_line", "probe_layouts", "reasons_by_text",
]

HEAD_PARTS: tuple[str, ...] = ("q", "k", "v", "proj_in")
"""The parts :func:`head_table` reports, in the order a token meets them."""

ATTENTION_KINDS = frozenset({Kind.ATTN_QKV.value, Kind.ATTN_PROJ.value, Kind.CLASS_ATTN_QKV.value,
                             Kind.CLASS_ATTN_PROJ.value})
"""Layer kinds that should get head numbers, or a reason why not."""

FUSED_NAMES = ("qkv", "to_qkv", "in_proj")
Q_NAMES = ("q", "q_proj", "query", "to_q", "wq")
K_NAMES = ("k", "k_proj", "key", "to_k", "wk")
V_NAMES = ("v", "v_proj", "value", "to_v", "wv")
KV_NAMES = ("kv", "to_kv")
PROJ_NAMES = ("proj", "out_proj", "o_proj")

PROBE_IMAGES = 2
PROBE_SEED = 1234
VARYING = 1e-2
"""The probed head must vary before zeroing: spread (max - min over rows, largest over its columns) above
this fraction of its largest absolute value."""
CONSTANT = 1e-4
"""... and be constant after: spread at most this fraction of the largest absolute value (float32 sums
``sum_j A_ij b`` round at about 1e-6 of ``|b|``; TF32 is switched off while probing)."""


@dataclass(frozen=True)
class AttentionLayout:
    """Where the heads of one attention module sit (a candidate until :func:`probe_layouts` confirms it).

    ``outputs``: layer name -> {part: ``H x dh`` int array of that layer's output rows, head by head};
    ``proj``/``proj_heads``: the output projection and its ``H x dv`` input columns, head by head."""

    attention: str
    num_heads: int
    arrangement: str
    outputs: dict[str, dict[str, np.ndarray]]
    proj: str
    proj_heads: np.ndarray

    def v_rows(self, head: int) -> tuple[str, np.ndarray]:
        """(layer, rows) of head ``head``'s ``v``: what the probe zeroes."""
        for layer, parts in self.outputs.items():
            if "v" in parts:
                return layer, parts["v"][head]
        raise ValueError(f"{self.attention}: no v part")

    def layers(self) -> list[str]:
        return [*self.outputs, self.proj]


@dataclass
class AttentionLayouts:
    """Verified layouts, and ``{layer: reason}`` for the attention layers that get no head numbers."""

    layouts: list[AttentionLayout] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ discovery
def _child(module: nn.Module, names: Iterable[str]) -> tuple[str, nn.Module] | None:
    children = {**dict(module.named_children()), **dict(functional_layers("", module))}
    for name in names:
        if name in children:
            return name, children[name]
    return None


def _rows_part_major(parts: tuple[str, ...], heads: int, dh: int) -> dict[str, np.ndarray]:
    width = heads * dh
    return {p: i * width + np.arange(width).reshape(heads, dh) for i, p in enumerate(parts)}


def _rows_head_major(parts: tuple[str, ...], heads: int, dh: int) -> dict[str, np.ndarray]:
    stride = len(parts) * dh
    return {p: (np.arange(heads)[:, None] * stride + i * dh + np.arange(dh)[None, :]) for i, p in enumerate(parts)}


def _split(width: int, count: int, heads: int, what: str) -> int:
    """Head size ``width / (count * heads)``, or a ValueError saying why the sizes do not divide."""
    if width % (count * heads):
        raise ValueError(f"{what} has {width} outputs, not {count} x num_heads ({heads}) x a head size")
    return width // (count * heads)


def candidate_layouts(attention: str, module: nn.Module) -> list[AttentionLayout]:
    """The layouts the structure of ``module`` allows (unverified), most common first; a ValueError with
    the reason where the structure does not determine one (see the module docstring)."""
    cls = type(module).__name__
    heads = getattr(module, "num_heads", None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"{attention} ({cls}) has no integer num_heads")
    kv_heads = getattr(module, "num_kv_heads", heads)
    if isinstance(kv_heads, int) and kv_heads != heads:
        raise ValueError(f"{attention} ({cls}) has grouped key/value heads ({kv_heads} for {heads} query heads)")
    linear = {}
    for role, names in (("fused", FUSED_NAMES), ("q", Q_NAMES), ("k", K_NAMES), ("v", V_NAMES),
                        ("kv", KV_NAMES), ("proj", PROJ_NAMES)):
        found = _child(module, names)
        if found is not None:
            if not isinstance(found[1], nn.Linear):
                raise ValueError(f"{attention}.{found[0]} is a {type(found[1]).__name__}, not a Linear")
            linear[role] = found
    if "proj" not in linear:
        raise ValueError(f"{attention} ({cls}) has no output projection (proj/out_proj) to check the heads against")
    full = lambda role: f"{attention}.{linear[role][0]}"  # noqa: E731
    width = lambda role: int(linear[role][1].out_features)  # noqa: E731
    declared = getattr(module, "head_dim", None)
    if "fused" in linear:
        dh = _split(width("fused"), 3, heads, full("fused"))
        arrangements = {"part-major [q; k; v]": _rows_part_major(("q", "k", "v"), heads, dh),
                        "head-major [q_h k_h v_h]": _rows_head_major(("q", "k", "v"), heads, dh)}
        candidates = [{full("fused"): rows} for rows in arrangements.values()]
        names = list(arrangements)
        dv = dh
    elif "q" in linear and "kv" in linear and "k" not in linear and "v" not in linear:
        dh = _split(width("q"), 1, heads, full("q"))
        dkv = _split(width("kv"), 2, heads, full("kv"))
        if dkv != dh:
            raise ValueError(f"{full('kv')} heads of {dkv} do not match the q heads of {dh}")
        q_rows = _rows_part_major(("q",), heads, dh)
        arrangements = {"q; part-major [k; v]": _rows_part_major(("k", "v"), heads, dh),
                        "q; head-major [k_h v_h]": _rows_head_major(("k", "v"), heads, dh)}
        candidates = [{full("q"): q_rows, full("kv"): rows} for rows in arrangements.values()]
        names = list(arrangements)
        dv = dh
    elif all(role in linear for role in ("q", "k", "v")):
        dh = _split(width("q"), 1, heads, full("q"))
        dk = _split(width("k"), 1, heads, full("k"))
        dv = _split(width("v"), 1, heads, full("v"))
        if dk != dh:
            raise ValueError(f"{full('k')} heads of {dk} do not match the q heads of {dh}")
        candidates = [{full(p): {p: np.arange(heads * d).reshape(heads, d)} for p, d in (("q", dh), ("k", dk), ("v", dv))}]
        names = ["separate q, k, v"]
    else:
        children = ", ".join(name for name, _ in module.named_children()) or "none"
        raise ValueError(f"{attention} ({cls}): q, k, v not found among its children ({children})")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != dh:
        raise ValueError(f"{attention} ({cls}) declares head_dim {declared}, but its sizes give {dh}")
    proj_in = int(linear["proj"][1].in_features)
    if proj_in != heads * dv:
        raise ValueError(f"{full('proj')} takes {proj_in} inputs, not num_heads ({heads}) x the v head size ({dv})")
    proj_heads = np.arange(proj_in).reshape(heads, dv)
    return [AttentionLayout(attention, heads, name, outputs, full("proj"), proj_heads)
            for name, outputs in zip(names, candidates)]


# ------------------------------------------------------------------------------------------ the probe
def _spread(values: torch.Tensor) -> tuple[float, float]:
    """(max over columns of (max - min over rows), largest absolute value) of a ``rows x cols`` block."""
    if values.numel() == 0:
        return 0.0, 0.0
    return float((values.max(0).values - values.min(0).values).max()), float(values.abs().max())


def _forward_capturing(model: nn.Module, batch: torch.Tensor, layouts: list[AttentionLayout],
                       zeroed: dict[str, int]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``batch`` with the v rows of head ``zeroed[attention]`` of those layouts set to zero
    (weights, and outputs where the layer's own forward runs); return the input each layout's projection
    really multiplies (``rows x d_in``, float64 CPU, captured by :class:`analysis.capture.LayerCapture`, so
    also where the projection's weight is applied functionally, as in ``nn.MultiheadAttention``; absent if
    the projection never ran)."""
    captured: dict[str, list[torch.Tensor]] = {}
    attention_of = {layout.proj: layout.attention for layout in layouts}
    projections = [LayerSpec.of(layout.proj, find_layer(model, layout.proj)) for layout in layouts]
    handles, restore = [], []

    def capture(name: str, x: torch.Tensor, _geometry) -> None:
        captured.setdefault(attention_of[name], []).append(x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64))

    def zero_output(rows: torch.Tensor):
        def hook(_module, _args, output):
            output = output.clone()
            output[..., rows] = 0
            return output
        return hook

    try:
        with torch.no_grad(), _exact_float32():
            for layout in layouts:
                if layout.attention not in zeroed:
                    continue
                layer_name, rows = layout.v_rows(zeroed[layout.attention])
                layer = find_layer(model, layer_name)
                index = torch.as_tensor(rows, dtype=torch.long, device=layer.weight.device)
                restore.append((layer.weight, index, layer.weight[index].clone()))
                layer.weight[index] = 0
                handles.append(layer.register_forward_hook(zero_output(index)))
            with LayerCapture(projections, capture, check=False):
                model(batch)
    finally:
        with torch.no_grad():
            for weight, index, saved in reversed(restore):
                weight[index] = saved
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


@contextmanager
def _exact_float32() -> Iterator[None]:
    """float32 matmuls and convolutions without TF32 while probing (TF32 rounds at 1e-3, near the test's
    tolerance); the previous settings come back afterwards."""
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def _test_head(layout: AttentionLayout, before: torch.Tensor | None) -> tuple[int | None, str]:
    """The head the probe zeroes: of heads 0 .. H-2 (head H-1's v rows are the same in both fused
    arrangements), the one whose output varies most, relative to its size, on the unchanged forward; None
    and the reason if no head varies enough."""
    if before is None or before.shape[0] < 2:
        return None, f"{layout.proj} did not run as a module on enough tokens, so its input could not be observed"
    best, best_ratio = None, 0.0
    for h in range(max(1, layout.num_heads - 1)):
        spread, size = _spread(before[:, torch.as_tensor(layout.proj_heads[h])])
        ratio = spread / size if size > 0 else 0.0
        if ratio > best_ratio:
            best, best_ratio = h, ratio
    if best is None or best_ratio <= VARYING:
        return None, "no head's output varies on the probe input, so the layouts cannot be told apart"
    return best, ""


def probe_layouts(model: nn.Module, candidates: dict[str, list[AttentionLayout]],
                  input_size: Iterable[int], device: torch.device | str = "cpu") -> AttentionLayouts:
    """Keep, for each attention module, the first candidate that passes the probe (module docstring);
    modules none of whose candidates passes get a reason on each of their layers."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    batch = torch.randn(PROBE_IMAGES, *[int(v) for v in input_size], generator=generator).to(device)
    firsts = [options[0] for options in candidates.values()]
    out = AttentionLayouts()

    def refuse(name: str, reason: str) -> None:
        for layer in candidates[name][0].layers():
            out.reasons[layer] = reason

    try:
        baseline = _forward_capturing(model, batch, firsts, {})
    except Exception as exc:  # noqa: BLE001 - any failure of the model on the probe input: no head numbers
        for name in candidates:
            refuse(name, f"the layout probe's forward failed ({type(exc).__name__}: {str(exc).strip()[:120]})")
        return out
    undecided: dict[str, int] = {}
    for layout in firsts:
        head, why = _test_head(layout, baseline.get(layout.attention))
        if head is None:
            refuse(layout.attention, f"head layout of {layout.attention} not checked: {why}")
        else:
            undecided[layout.attention] = head
    failures: dict[str, list[str]] = {name: [] for name in undecided}
    round_index = 0
    while undecided:
        trying = {name: candidates[name][round_index] for name in undecided if round_index < len(candidates[name])}
        if not trying:
            break
        modified = _forward_capturing(model, batch, list(trying.values()), {n: undecided[n] for n in trying})
        for name, layout in trying.items():
            verdict = _verdict(layout, undecided[name], baseline[name], modified.get(name))
            if verdict is None:
                out.layouts.append(layout)
                undecided.pop(name)
            else:
                failures[name].append(f"{layout.arrangement}: {verdict}")
        round_index += 1
    for name in undecided:
        refuse(name, f"head layout of {name} not confirmed by the probe ({'; '.join(failures[name])})")
    return out


def _verdict(layout: AttentionLayout, head: int, before: torch.Tensor, after: torch.Tensor | None) -> str | None:
    """None if zeroing head ``head``'s v rows made that head's projection input constant; else why not."""
    if after is None or after.shape != before.shape:
        return f"{layout.proj}'s input could not be observed again"
    columns = torch.as_tensor(layout.proj_heads[head])
    _, size_before = _spread(before[:, columns])
    spread_after, size_after = _spread(after[:, columns])
    if spread_after > CONSTANT * max(size_before, size_after):
        return (f"zeroing the v rows of head {head} left its output varying "
                f"(spread {spread_after / size_before:.1e} of its size)")
    return None


def _attention_ancestor(model: nn.Module, name: str) -> str | None:
    """The nearest module enclosing layer ``name`` that has an integer ``num_heads`` (None if none does)."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:depth])
        heads = getattr(model.get_submodule(candidate), "num_heads", None)
        if isinstance(heads, int) and not isinstance(heads, bool):
            return candidate
    return None


def attention_layouts(model: nn.Module, specs: Iterable, input_size: Iterable[int] | None,
                      device: torch.device | str = "cpu") -> AttentionLayouts:
    """The verified head layout of every attention module that holds an analysed layer of an attention
    kind (:data:`ATTENTION_KINDS`), and a reason for each such layer that gets none. ``specs``: the analysed
    :class:`~analysis.models.layers.LayerSpec` list; ``input_size``: the model's ``(C, H, W)``."""
    attention_specs = [s for s in specs if s.kind in ATTENTION_KINDS]
    out = AttentionLayouts()
    candidates: dict[str, list[AttentionLayout]] = {}
    for spec in attention_specs:
        parent = _attention_ancestor(model, spec.name)
        if parent is None:
            out.reasons[spec.name] = f"no module enclosing {spec.name} has an integer num_heads"
            continue
        if parent in candidates:
            continue
        try:
            options = candidate_layouts(parent, model.get_submodule(parent))
        except ValueError as exc:
            out.reasons[spec.name] = str(exc)
            continue
        candidates[parent] = options
    if candidates:
        if input_size is None:
            probed = AttentionLayouts(reasons={layer: "the model's input size is unknown, so the layout probe "
                                               "could not run" for opts in candidates.values()
                                               for layer in opts[0].layers()})
        else:
            probed = probe_layouts(model, candidates, input_size, device)
        out.layouts.extend(probed.layouts)
        out.reasons.update(probed.reasons)
    analysed = {s.name for s in attention_specs}
    covered = {layer for layout in out.layouts for layer in layout.layers()}
    for spec in attention_specs:  # e.g. a layer nested deeper, or a "qk" child: no q/k/v/projection role
        if spec.name not in covered and spec.name not in out.reasons:
            parent = _attention_ancestor(model, spec.name)
            out.reasons[spec.name] = f"{spec.name} is not one of {parent}'s q/k/v/projection Linears"
    out.reasons = {k: v for k, v in out.reasons.items() if k in analysed}
    return out


# ------------------------------------------------------------------------------------------ spectra
def _eigvalsh(matrices: torch.Tensor) -> np.ndarray:
    """Descending, clipped float64 eigenvalues of a symmetric matrix or a stack of them (CPU, symmetrized)."""
    m = matrices.to("cpu", torch.float64)
    m = 0.5 * (m + m.transpose(-1, -2))
    return torch.linalg.eigvalsh(m).flip(-1).clamp_min(0.0).numpy()


def _diagonal_blocks(matrix: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """The ``heads`` diagonal ``size x size`` blocks of a ``(heads size) x (heads size)`` matrix: ``heads x size x size``."""
    return matrix.reshape(heads, size, heads, size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def part_extras(layer: AffineLayer, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``part.<p>.eig`` and ``part.<p>.heads`` of a q/k/v-producing layer (``parts``: part -> ``H x dh`` rows)."""
    extras: dict[str, np.ndarray] = {}
    for part, rows in parts.items():
        heads, size = rows.shape
        index = torch.as_tensor(rows.reshape(-1), dtype=torch.long, device=layer.weight.device)
        weight = layer.weight[index].to(layer.c_in.device)
        bias = None if layer.bias is None else layer.bias[index].to(layer.c_in.device)
        moment = output_second_moment(weight, layer.c_in, layer.column_sum, layer.count, bias)
        extras[f"part.{part}.eig"] = _eigvalsh(moment)
        extras[f"part.{part}.heads"] = _eigvalsh(_diagonal_blocks(moment, heads, size))
    return extras


def proj_in_extras(layer: AffineLayer, proj_heads: np.ndarray) -> dict[str, np.ndarray]:
    """``part.proj_in.heads``: eigenvalues of the diagonal blocks of the projection's ``C_in``, head by head."""
    heads, size = proj_heads.shape
    index = torch.as_tensor(proj_heads.reshape(-1), dtype=torch.long, device=layer.c_in.device)
    c_in = layer.c_in.to(torch.float64)[index][:, index]
    return {"part.proj_in.heads": _eigvalsh(_diagonal_blocks(c_in, heads, size))}


def add_head_extras(spectra: list, affine: dict[str, AffineLayer], attention: AttentionLayouts | None) -> None:
    """Add the per-part and per-head eigenvalues (and the reasons) to the ``extras`` of ``spectra`` in place."""
    if attention is None:
        return
    by_name = {s.name: s for s in spectra}
    with cpu_threads(CPU_EIGH_THREADS):  # the same LAPACK threads as every other eigenvalue: reproducible bits
        for layout in attention.layouts:
            tags = {"heads.attention": np.array(layout.attention), "heads.layout": np.array(layout.arrangement)}
            for layer, parts in layout.outputs.items():
                if layer in by_name and layer in affine:
                    by_name[layer].extras.update({**part_extras(affine[layer], parts), **tags})
            if layout.proj in by_name and layout.proj in affine:
                by_name[layout.proj].extras.update({**proj_in_extras(affine[layout.proj], layout.proj_heads), **tags})
    for layer, reason in attention.reasons.items():
        if layer in by_name:
            by_name[layer].extras["heads.reason"] = np.array(reason)


# ------------------------------------------------------------------------------------------ the table
TABLE_COLUMNS = ["layer", "block", "block_label", "attention", "part", "head", "d", "k", "rank", "utilization",
                 "energy", "status"]


def has_head_data(result) -> bool:
    """Whether any layer of ``result`` carries per-head eigenvalues."""
    return any(name.startswith("part.") for s in result.spectra for name in s.extras)


def head_layouts(result) -> dict[str, str]:
    """``{attention module: its confirmed arrangement}`` (e.g. ``"part-major [q; k; v]"``), in depth order."""
    found: dict[str, str] = {}
    for s in result.spectra:
        if "heads.attention" in s.extras and "heads.layout" in s.extras:
            found.setdefault(str(s.extras["heads.attention"]), str(s.extras["heads.layout"]))
    return found


def layouts_line(result) -> str:
    """``part-major [q; k; v] in 12 attention layers`` (every arrangement found, with its count); empty if none."""
    counts: dict[str, int] = {}
    for arrangement in head_layouts(result).values():
        counts[arrangement] = counts.get(arrangement, 0) + 1
    return ", ".join(f"{a} in {n} attention layer{'s' if n != 1 else ''}" for a, n in counts.items())


def reasons_by_text(result) -> dict[str, list[str]]:
    """``{reason: [layers]}``: :func:`head_reasons` grouped, for short listings."""
    grouped: dict[str, list[str]] = {}
    for layer, reason in head_reasons(result).items():
        grouped.setdefault(reason, []).append(layer)
    return grouped


def head_reasons(result) -> dict[str, str]:
    """``{layer: why it has no head numbers}`` for the attention layers of ``result`` that have none."""
    return {s.name: str(s.extras["heads.reason"]) for s in result.spectra if "heads.reason" in s.extras}


def head_table(result, energy_in: float | None = None, energy_out: float | None = None) -> pd.DataFrame:
    """Per-part and per-head numbers of every layer with head data, long format (:data:`TABLE_COLUMNS`).

    One row per (layer, part, head) and one per (layer, part) with ``head`` missing (the whole part); ``d``
    is the head's (or part's) width, ``k`` its k at the part's energy (``e_out`` for q/k/v, ``e_in`` for the
    projection's input, recorded in ``energy``), ``rank`` and ``utilization`` as defined in the module
    docstring; ``status`` is the layer's (:mod:`analysis.status`: numbers of a flagged layer are shown, not
    trusted). Energies default to the result's; everything comes from stored eigenvalues (no data pass)."""
    e_in = result.energy_in if energy_in is None else float(energy_in)
    e_out = result.energy_out if energy_out is None else float(energy_out)
    rows = []
    for s in result.spectra:
        base = {"layer": s.name, "block": s.block, "block_label": s.block_label,
                "attention": str(s.extras.get("heads.attention", "")), "status": s.status}
        k_in = metrics.k_at_energy(s.eig_in, e_in)
        for part in ("q", "k", "v"):
            if f"part.{part}.heads" not in s.extras:
                continue
            whole = s.extras[f"part.{part}.eig"]
            k = metrics.k_at_energy(whole, e_out)
            rank = min(k_in, k)
            rows.append({**base, "part": part, "head": None, "d": len(whole), "k": k, "rank": rank,
                         "utilization": rank / min(s.d_in, len(whole)), "energy": e_out})
            for h, values in enumerate(s.extras[f"part.{part}.heads"]):
                k = metrics.k_at_energy(values, e_out)
                rank = min(k_in, k)
                rows.append({**base, "part": part, "head": h, "d": len(values), "k": k, "rank": rank,
                             "utilization": rank / min(s.d_in, len(values)), "energy": e_out})
        if "part.proj_in.heads" in s.extras:
            rows.append({**base, "part": "proj_in", "head": None, "d": s.d_in, "k": k_in, "rank": k_in,
                         "utilization": k_in / s.d_in, "energy": e_in})
            for h, values in enumerate(s.extras["part.proj_in.heads"]):
                k = metrics.k_at_energy(values, e_in)
                rows.append({**base, "part": "proj_in", "head": h, "d": len(values), "k": k, "rank": k,
                             "utilization": k / len(values), "energy": e_in})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("block", "head"):
        table[column] = table[column].astype("Int64")
    return table
