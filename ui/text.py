"""Number formatting and the short teaching texts of each page (no Streamlit here)."""

from __future__ import annotations

import math

from analysis.durations import duration, duration_range  # noqa: F401 (the pages' one import)
from analysis.plots.numbers import dims_error, error_bar, pct, plus_minus  # noqa: F401

PAPER_URL = "https://arxiv.org/abs/2407.04797"
PAPER_TITLE = "Garg et al. (2024), Revealing the Utilized Rank of Subspaces of Learning in Neural Networks"


def count(value: int | float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{int(value):,}"


def energy(value: float) -> str:
    """Energies as typed by people: 0.99, 0.999, 1."""
    return f"{value:g}"


def formula(expression: str) -> str:
    """``expression`` as inline markdown math that never wraps inside: KaTeX breaks an inline formula after a
    relation or an operator (``d_out =`` at a line's end, ``288`` on the next); in braces it is one group."""
    return "${" + expression + "}$"


def whole(value) -> str:
    """A count inside a formula: ``34`` (also from a float column), or "undefined" for a missing k."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return r"\text{undefined}"
    return str(int(value))


def short_key(key: str | None) -> str:
    return (key or "")[:8]


ID_BREAK_AFTER = ":./?&="
"""Where a long id may wrap (:func:`breakable_id`): after the separators of its parts, never inside a part."""
ID_PART_MOST = 24
"""A part longer than this (about a narrow sidebar's line of code text) may still wrap inside, as a last resort."""


def _html_literal(part: str) -> str:
    """``part`` HTML-escaped, with nothing Markdown reads as emphasis, a link or math (as character references)."""
    import html

    return html.escape(part).translate({ord(c): f"&#{ord(c)};" for c in "\\`*_[]~$"})


def breakable_id(value: str) -> str:
    """``value`` (a model or dataset id, a layer name) as inline HTML code that wraps only between its parts
    (``zoo:`` | ``vit-fmnist-supervised``, ``blocks.`` | ``3.`` | ``mlp.`` | ``fc1``), never mid-word at a hyphen
    as the browser does, for a narrow column such as the presentation-mode sidebar. With the frame's CSS
    (:data:`ui.frame.ID_STYLE`) the code is one inline block, so it moves to its own line whole when it fits there,
    and each part is kept on one line; it copies as the plain id (``<wbr>`` adds no character). Needs
    ``unsafe_allow_html``; ``value`` is escaped."""
    import re

    parts = [p for p in re.split(f"(?<=[{re.escape(ID_BREAK_AFTER)}])", value) if p]
    held = ("<span>{}</span>", "{}")  # the frame's CSS keeps a span on one line; a part too long for a line wraps
    return "<code class='lu-id'>" + "<wbr>".join(held[len(p) > ID_PART_MOST].format(_html_literal(p)) for p in parts) + "</code>"


ID_FIT_MOST = 36
"""An id up to this long (``zoo:vit-fmnist-supervised?step=1872`` is 35) is shown whole on one line by
:func:`fitted_id`, its text made as small as that needs; a longer one (a file path) wraps between its parts."""


def fitted_id(value: str) -> str:
    """``value`` (a model or dataset id) as inline HTML code that never breaks: on one line, whole, its text
    scaled down just enough to fit the line when it is wider (the frame's CSS, :data:`ui.frame.ID_STYLE`, sizes
    it from the line's width and the id's length ``--n``). The narrow presentation-mode sidebar broke
    ``zoo:`` | ``vit-fmnist-supervised`` over two lines, which read as two things. An id longer than
    :data:`ID_FIT_MOST` would become too small to read: it wraps between its parts (:func:`breakable_id`)."""
    if len(value) > ID_FIT_MOST:
        return breakable_id(value)
    return f"<code class='lu-id'><span class='lu-fit' style='--n:{max(len(value), 1)}'>{_html_literal(value)}</span></code>"


def analysis_note(meta) -> str:
    """Which vectors an analysis counted, for chart titles: ``"patch tokens only · centred"``."""
    from analysis.tokens import label

    words = label(meta.token_set)
    return f"{words} · centred" if meta.centred else words


def analyses_note(metas) -> str:
    """:func:`analysis_note` of several analyses: one note when they agree, else each one's."""
    notes = [analysis_note(m) for m in metas]
    if not notes:
        return ""
    if len(set(notes)) == 1:
        return notes[0]
    return "; ".join(f"{i + 1}: {n}" for i, n in enumerate(notes))


def convergence_verdict(curve, mlu_err: float) -> str:
    """One sentence on whether the MLU has settled: its change over the last doubling of the images against
    the split-half error bar."""
    mlu = curve[curve["layer"] == "MLU"]
    if len(mlu) < 2:
        return "Too few snapshots to judge convergence (the run had fewer than two batches)."
    (first_images, before), (last_images, now) = mlu[["images", "utilization"]].iloc[-2], mlu[["images", "utilization"]].iloc[-1]
    change = abs(float(now) - float(before))
    step = f"from {int(first_images):,} to {int(last_images):,} images the MLU moved {100 * change:.1f} points"
    if isinstance(mlu_err, float) and not math.isnan(mlu_err) and change <= max(2 * mlu_err, 0.005):
        return f"Settled: {step}, within twice its error bar (± {100 * mlu_err:.1f}); more images would barely change it."
    return f"Still moving: {step}; more images would likely change the answer."


# ------------------------------------------------------------------------------------------ teaching texts
LAYERS_INTRO = (
    "Each bar is one layer `y = W x + b` of the network, in depth order. Its **utilization** is the dimension "
    "of the subspace the layer actually uses on this dataset, as a fraction of the most it could use: the inputs "
    "need $k_{in}$ directions and the outputs $k_{out}$ directions to hold a fraction $e$ of their energy, so"
)
LAYERS_FORMULA = r"u = \frac{r}{\min(d_{in}, d_{out})}, \qquad r = \min(k_{in}, k_{out}), \qquad \mathrm{MLU} = \frac{1}{L}\sum_{\ell} u_\ell"
LAYERS_OUTRO = (
    "The dashed line is the mean layer utilization (MLU) over the layers inside the blocks; the patch embedding "
    "and classifier head (hatched) are shown but not counted. Click a bar to select that layer on every page. "
    "Whiskers are split-half error bars: half the difference between the two halves of the images."
)

CONVERGENCE_TEXT = (
    "The same analysis after 1/64, 1/32, ... of the images, from snapshots of the running sums. If the MLU is "
    "still moving at the right end, more images would change the answer; if it is flat within the error bar, "
    "they would not."
)

SPECTRA_INTRO = (
    "The trained weight matrix $W$ usually looks full rank (left: its singular values decay slowly). "
    "Projecting it onto the subspaces the data really occupies, ${W' = P_{out} W P_{in}}$ with "
    "${P = V_k V_k^\\top}$ from the top eigenvectors, leaves at most $r$ non-zero singular values: that is the "
    "paper's point. Below, the eigenvalues of the input and output second moments and how many directions "
    "$k$ hold the chosen energy $e$:"
)
SPECTRA_FORMULA = (
    r"C_{in} = \sum_n x_n x_n^\top, \quad C_{out} = W C_{in} W^\top + W s b^\top + b s^\top W^\top + N b b^\top,"
    r"\quad k(e) = \min\Big\{k : \sum_{i \le k} \lambda_i \ge e \sum_i \lambda_i\Big\}"
)

COMPARE_INTRO = (
    "Two to four analyses side by side, at the same energies: different pre-training regimes of one "
    "architecture (supervised against self-supervised), different models, or one model on different datasets. "
    "The paper reports that self-supervised pre-training uses much more of each layer (MLU up to 70 %) than "
    "supervised training (35 % for ViT-B/16 on ImageNet); here you can check it on your own models and data."
)

COMPRESS_INTRO = (
    "If a layer only uses $r$ directions, $W'$ can be stored as two thin factors, ${r(d_{in} + d_{out})}$ "
    "parameters instead of $d_{in} d_{out}$ (only where that is smaller). The price is the output-preservation "
    "error on the data, exact from the stored statistics:"
)
COMPRESS_FORMULA = (
    r"\varepsilon = \frac{\lVert (W - W') X \rVert_F^2}{\lVert W X \rVert_F^2} "
    r"= \frac{\operatorname{tr}\big((W - W') C_{in} (W - W')^\top\big)}{\operatorname{tr}\big(W C_{in} W^\top\big)}"
)

ANALYZE_INTRO = (
    "Choose a network and a dataset; the analysis runs every image through the network once and accumulates, "
    "for each layer, the second moment of its inputs ${C_{in} = \\sum x x^\\top}$ (the outputs' follows exactly "
    "from $W$). Everything else, at any energy, is computed from the eigenvalues of these matrices, so the "
    "energy sliders never need the data again."
)

LIBRARY_INTRO = (
    "Every finished analysis is kept on disk under a content key (model weights, dataset selection, settings "
    "and code version), so opening it again is instant and a repeated request never recomputes. Open one to "
    "make it the current analysis, download its per-layer table, or delete it."
)


# ------------------------------------------------------------------------------------------ one-line leads
# What each page shows, in one or two sentences above its charts; the theory sits in a collapsible panel.
LAYERS_LEAD = (
    "**How much of its space each layer uses** on this dataset: bars are layers in depth order, the dashed line "
    "is the mean (MLU). Click a bar, or step with the arrows, to select a layer for every page."
)
SPECTRA_LEAD = (
    "**Why a full-rank W uses few directions**: W's singular values decay slowly, while W' (W restricted to the "
    "directions the data occupies) drops to zero beyond rank r. Press ▶ Play to sweep the energy."
)
COMPARE_LEAD = (
    "**Pre-training regimes side by side** on one architecture and one dataset: MLU beside each model's regime, "
    "training budget and accuracy; differences in percentage points (pp)."
)
COMPRESS_LEAD = (
    "**What a layer's few directions save**: parameters kept if every counted layer is stored as two thin "
    "factors of its utilized rank, against the error that costs on the data; then factorize, evaluate, fine-tune."
)
TIMELINE_LEAD = (
    "**Utilization as a model trains**: every checkpoint of a series is analysed like any model, then drawn "
    "against its training step and its accuracy."
)
LIBRARY_LEAD = "**Every finished analysis**: open one for every page, download its table, or delete it."
ANALYZE_LEAD = ("**Run a new analysis**: pick a model and a dataset; the time estimate and the progress appear below "
                "the Run button.")
