"""Attention in detail (:mod:`analysis.heads`): head layouts found and probed on real timm modules, per-part
and per-head spectra with known answers (planted low-rank heads through the real ``analyze``), trace
identities, re-thresholding, reasons where no layout can be determined, and the CLI's head table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import heads
from analysis.engine import analyze
from analysis.models.layers import describe_layers
from analysis.spectra import AffineLayer

from .helpers import TINY_VIT_OPTIONS

DATASET = "fashion-mnist:test"
SAMPLES = 64
EMBED, HEADS = 48, 2
HEAD_DIM = EMBED // HEADS


def _low_rank(rows: int, cols: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator) / cols**0.5


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny timm ViT (2 heads of 24) whose block-0 q rows of head 0 have rank 2, k rows of head 1 rank 3
    and v rows of head 1 rank 4 (their biases zero), saved as a ``file:`` checkpoint and analysed."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=EMBED, num_heads=HEADS, num_classes=5)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    weight, bias = state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"]
    for part, head, rank in (("q", 0, 2), ("k", 1, 3), ("v", 1, 4)):
        start = "qkv".index(part) * EMBED + head * HEAD_DIM
        rows = slice(start, start + HEAD_DIM)
        weight[rows] = _low_rank(HEAD_DIM, EMBED, rank, g)
        bias[rows] = 0.0
    path = tmp_path_factory.mktemp("planted") / "planted.safetensors"
    save_file(state, str(path))
    model_id = f"file:{path}?arch=vit_tiny_patch16_224&{TINY_VIT_OPTIONS}"
    cache = tmp_path_factory.mktemp("heads-cache")
    result = analyze(model_id, DATASET, samples=SAMPLES, energy_in=1.0, energy_out=1.0, cache_dir=str(cache))
    return result, cache, model_id


def _k(table, layer, part, head):
    rows = table[(table["layer"] == layer) & (table["part"] == part)]
    rows = rows[rows["head"].isna()] if head is None else rows[rows["head"] == head]
    assert len(rows) == 1, (layer, part, head, rows)
    return rows.iloc[0]


def test_planted_low_rank_heads_are_recovered_through_analyze(planted):
    result, _, _ = planted
    table = heads.head_table(result)  # at the result's energies, 1.0 / 1.0
    layer = "blocks.0.attn.qkv"
    assert _k(table, layer, "q", 0)["k"] == 2
    assert _k(table, layer, "k", 1)["k"] == 3
    assert _k(table, layer, "v", 1)["k"] == 4
    # every other head keeps its full head size (1088 tokens of a 48-wide input: full rank)
    for part, head in (("q", 1), ("k", 0), ("v", 0)):
        assert _k(table, layer, part, head)["k"] == HEAD_DIM
    # utilization of a head: min(k_in, k_h) / min(d_in, dh); k_in of the layer is its full 48
    row = _k(table, layer, "q", 0)
    assert row["rank"] == 2 and row["utilization"] == pytest.approx(2 / HEAD_DIM)
    # the projection's input head 1 is a mix of head 1's v vectors: the same 4 dimensions (measured data, so
    # float32 rounding of the statistics, about 1e-7 of the trace per direction, is left out by e_in < 1)
    proj_row = _k(heads.head_table(result, energy_in=0.99999), "blocks.0.attn.proj", "proj_in", 1)
    assert proj_row["k"] == 4 and proj_row["utilization"] == pytest.approx(4 / HEAD_DIM)
    assert _k(table, "blocks.0.attn.proj", "proj_in", 0)["k"] == HEAD_DIM
    # the whole q part: head 0 (rank 2) beside head 1 (rank 24) spans 26 directions
    assert _k(table, layer, "q", None)["k"] == 2 + HEAD_DIM
    # block 1 was left alone: full heads
    assert _k(table, "blocks.1.attn.qkv", "q", 0)["k"] == HEAD_DIM
    spectrum = result.layer(layer)
    assert str(spectrum.extras["heads.layout"]) == "part-major [q; k; v]"
    assert str(spectrum.extras["heads.attention"]) == "blocks.0.attn"


def test_part_and_head_traces_add_up(planted):
    result, _, _ = planted
    for block in (0, 1):
        spectrum = result.layer(f"blocks.{block}.attn.qkv")
        total = spectrum.eig_out.sum()  # includes the eigen jitter 1e-12 trace
        parts = [spectrum.extras[f"part.{p}.eig"] for p in "qkv"]
        # eig_out came through the (d_in + 1) problem, whose clipped eigenvalues round at ~1e-9 of the trace;
        # a part in the wrong place would be off by its whole share
        assert sum(p.sum() for p in parts) == pytest.approx(total, rel=1e-8)
        for p in "qkv":
            per_head = spectrum.extras[f"part.{p}.heads"]
            assert per_head.shape == (HEADS, HEAD_DIM)
            assert per_head.sum() == pytest.approx(spectrum.extras[f"part.{p}.eig"].sum(), rel=1e-9)
            assert np.all(np.diff(per_head, axis=1) <= 0) and per_head.min() >= 0
        proj = result.layer(f"blocks.{block}.attn.proj")
        assert proj.extras["part.proj_in.heads"].sum() == pytest.approx(proj.eig_in.sum(), rel=1e-9)


def test_head_data_survive_the_cache_and_rethreshold_without_data(planted):
    result, cache, model_id = planted
    again = analyze(model_id, DATASET, samples=SAMPLES, energy_in=0.9, energy_out=0.9, cache_dir=str(cache))
    assert again.key == result.key  # read back from the cache entry (spectra.npz)
    for name in ("part.q.heads", "part.v.eig"):
        np.testing.assert_array_equal(again.layer("blocks.1.attn.qkv").extras[name],
                                      result.layer("blocks.1.attn.qkv").extras[name])
    low = heads.head_table(again)
    assert set(low["energy"]) == {0.9}
    assert low.equals(heads.head_table(result, 0.9, 0.9))
    high = heads.head_table(result)
    assert (low["k"].to_numpy() <= high["k"].to_numpy()).all() and (low["k"] < high["k"]).any()
    assert list(low.columns) == heads.TABLE_COLUMNS
    assert set(low["part"]) == set(heads.HEAD_PARTS)
    # one whole-part row and two head rows per (layer, part)
    assert len(low) == 2 * (3 + 1) * (1 + HEADS)
    assert heads.has_head_data(result) and heads.head_reasons(result) == {}


def test_part_moments_equal_the_outputs_second_moment_computed_from_data():
    """Known answer independent of the formula: eigenvalues of Y_p^T Y_p from explicit outputs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) + 2.0  # a mean: the bias terms matter
    weight = torch.randn(12, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(12, generator=g, dtype=torch.float64)
    layer = AffineLayer(weight, bias, x.T @ x, x.sum(0), x.shape[0])
    rows = {"q": np.array([[0, 1], [2, 3]]), "v": np.array([[8, 9], [10, 11]])}
    extras = heads.part_extras(layer, rows)
    y = x @ weight.T + bias
    for part, index in rows.items():
        y_p = y[:, index.reshape(-1)]
        expected = torch.linalg.eigvalsh(y_p.T @ y_p).flip(0).numpy()
        np.testing.assert_allclose(extras[f"part.{part}.eig"], expected, rtol=1e-9)
        for h, head_rows in enumerate(index):
            y_h = y[:, head_rows]
            np.testing.assert_allclose(extras[f"part.{part}.heads"][h],
                                       torch.linalg.eigvalsh(y_h.T @ y_h).flip(0).numpy(), rtol=1e-9)
    # centred statistics (C - s s^T / N, no bias, s = 0, as the engine passes them): the centred outputs' moment
    centred = AffineLayer(weight, None, x.T @ x - torch.outer(x.sum(0), x.sum(0)) / 500, torch.zeros(6), 500)
    y_c = y - y.mean(0)
    q_rows = rows["q"].reshape(-1)
    np.testing.assert_allclose(heads.part_extras(centred, rows)["part.q.eig"],
                               torch.linalg.eigvalsh(y_c[:, q_rows].T @ y_c[:, q_rows]).flip(0).numpy(), rtol=1e-8)
    proj = heads.proj_in_extras(AffineLayer(weight[:4], None, x[:, :4].T @ x[:, :4], x[:, :4].sum(0), 500),
                                np.array([[0, 1], [2, 3]]))
    block = x[:, 2:4]
    np.testing.assert_allclose(proj["part.proj_in.heads"][1], torch.linalg.eigvalsh(block.T @ block).flip(0).numpy(),
                               rtol=1e-9)


# ------------------------------------------------------------------------------------------ layouts
class Attention(nn.Module):
    """A token-input attention with ``heads`` heads whose fused qkv rows are arranged by ``order``; it
    declares ``declared`` (default ``heads``) as the attribute ``heads_attr``."""

    def __init__(self, dim: int, heads: int, order: str = "part-major", heads_attr: str = "num_heads",
                 declared: int | None = None):
        super().__init__()
        setattr(self, heads_attr, declared or heads)
        self._heads = heads
        self.order = order
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        h = self._heads
        qkv = self.qkv(x)
        if self.order == "part-major":
            qkv = qkv.reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        else:  # head dimension innermost: (3, dh, H), a layout neither candidate describes
            qkv = qkv.reshape(b, n, 3, c // h, h).permute(2, 0, 4, 1, 3)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) / (c // h) ** 0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return x + self.attn(x)


class Toy(nn.Module):
    """Four blocks on token inputs ``(B, N, 12)``: a good layout, a layout no candidate describes, no
    ``num_heads`` (the module calls it ``heads``), and a head count that does not divide the width."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(Attention(12, 2)), Block(Attention(12, 2, order="strided")),
                                    Block(Attention(12, 2, heads_attr="heads")), Block(Attention(12, 2, declared=5)))

    def forward(self, x):
        return self.blocks(x)


def test_layers_without_a_determinable_layout_say_why():
    torch.manual_seed(0)
    model = Toy().eval()
    specs = describe_layers(model)
    assert {s.kind for s in specs} == {"attn_qkv", "attn_proj"}
    found = heads.attention_layouts(model, specs, input_size=(7, 12))
    assert [layout.attention for layout in found.layouts] == ["blocks.0.attn"]
    reasons = found.reasons
    assert set(reasons) == {f"blocks.{i}.attn.{p}" for i in (1, 2, 3) for p in ("qkv", "proj")}
    assert "not confirmed by the probe" in reasons["blocks.1.attn.qkv"]
    assert "no module enclosing blocks.2.attn.qkv has an integer num_heads" == reasons["blocks.2.attn.qkv"]
    assert "not 3 x num_heads (5)" in reasons["blocks.3.attn.qkv"]


def test_reasons_reach_the_result_and_no_head_numbers_are_made_up():
    from analysis.result import LayerSpectrum

    model = Toy().eval()
    specs = describe_layers(model)
    found = heads.attention_layouts(model, specs, input_size=(7, 12))
    spectra = [LayerSpectrum(name=s.name, kind=s.kind, block=s.block, d_in=s.d_in, d_out=s.d_out, has_bias=True,
                             in_mlu=True, n_samples=1, eig_in=np.ones(s.d_in), eig_out=np.ones(s.d_out),
                             w_singular=np.ones(1), wprime_singular={}, pres_k_out=np.array([1]),
                             pres_k_in=np.array([1]), pres_error=np.zeros((1, 1))) for s in specs]
    g = torch.Generator().manual_seed(0)
    affine = {}
    for s in specs:
        x = torch.randn(40, s.d_in, generator=g, dtype=torch.float64)
        affine[s.name] = AffineLayer(s.module.weight.detach().double(), s.module.bias.detach().double(), x.T @ x,
                                     x.sum(0), 40)
    heads.add_head_extras(spectra, affine, found)
    with_data = {s.name for s in spectra if any(k.startswith("part.") for k in s.extras)}
    assert with_data == {"blocks.0.attn.qkv", "blocks.0.attn.proj"}
    for s in spectra:
        assert ("heads.reason" in s.extras) == (s.name not in with_data)


# (arch, options, input size) -> the arrangement every attention module must be found with
TIMM_LAYOUTS = [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3), 32,
     {"part-major [q; k; v]"}),
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=2), 28, {"part-major [q; k; v]"}),
    ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3), 32,
     {"part-major [q; k; v]"}),
    ("swin_tiny_patch4_window7_224", dict(img_size=56, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
     56, {"part-major [q; k; v]"}),
    ("cait_xxs24_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3), 32,
     {"part-major [q; k; v]", "separate q, k, v"}),
    ("maxvit_nano_rw_256", dict(img_size=64), 64, {"head-major [q_h k_h v_h]"}),
    ("pvt_v2_b0", dict(), 64, {"q; part-major [k; v]"}),
]


@pytest.mark.parametrize("arch,options,size,arrangements", TIMM_LAYOUTS, ids=[t[0] for t in TIMM_LAYOUTS])
def test_real_timm_attention_layouts_are_found_and_probed(arch, options, size, arrangements):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **options).eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    found = heads.attention_layouts(model, specs, input_size=(3, size, size))
    assert found.reasons == {}
    assert {layout.arrangement for layout in found.layouts} == arrangements
    covered = {layer for layout in found.layouts for layer in layout.layers()}
    assert covered == {s.name for s in specs if s.kind in heads.ATTENTION_KINDS}
    for layout in found.layouts:  # the module's own head count
        assert layout.num_heads == model.get_submodule(layout.attention).num_heads


def test_levit_attention_gets_a_reason_not_a_guess():
    import timm

    model = timm.create_model("levit_128s", pretrained=False).eval()
    specs = [s for s in describe_layers(model) if s.applicable]
    found = heads.attention_layouts(model, specs, input_size=(3, 224, 224))
    assert found.layouts == []
    attention = [s.name for s in specs if s.kind in heads.ATTENTION_KINDS]
    assert attention and set(found.reasons) == set(attention)
    assert "LinearNorm, not a Linear" in found.reasons[attention[0]]


def test_cli_show_heads_prints_the_head_table(planted, capsys, monkeypatch):
    from analysis.cli import main

    result, cache, _ = planted
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache))
    assert main(["show", result.key[:10], "--heads", "--energy-out", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "per-head utilization" in out
    line = next(line for line in out.splitlines() if line.split()[:4] == ["blocks.0.attn.qkv", "q", "0", "24"])
    assert line.split()[4] == "2"  # k of the planted rank-2 head
    assert "head layouts: part-major [q; k; v] in 2 attention layers" in out


def test_the_probe_rejects_the_wrong_arrangement_of_a_real_vit():
    """Two heads: only head 0 tells the arrangements apart (head 1's v rows are the same in both)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              embed_dim=EMBED, num_heads=HEADS).eval()
    part_major, head_major = heads.candidate_layouts("blocks.0.attn", model.get_submodule("blocks.0.attn"))
    assert head_major.arrangement.startswith("head-major")
    wrong = heads.probe_layouts(model, {"blocks.0.attn": [head_major]}, (3, 32, 32))
    assert wrong.layouts == [] and "not confirmed by the probe" in wrong.reasons["blocks.0.attn.qkv"]
    right = heads.probe_layouts(model, {"blocks.0.attn": [head_major, part_major]}, (3, 32, 32))
    assert [layout.arrangement for layout in right.layouts] == [part_major.arrangement]
    torch.manual_seed(0)  # the probe put every weight back
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                                  embed_dim=EMBED, num_heads=HEADS).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name
