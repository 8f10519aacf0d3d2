"""One image: pick an image of the open analysis; per layer, the share of its input energy inside the dataset's
subspace at e_in and its own rank, and the residual heatmap of the selected layer over the image (what the
projected layer W' would lose there). The maths is :mod:`analysis.one_image`; the eigenvectors come from the
analysis' stored moments, computed as a background job when it kept none (:mod:`ui.one_image_view`)."""

from __future__ import annotations

import math

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis.errors import AnalysisError
from ui import frame, image_charts, one_image_view, state, text

frame.intro("One image", one_image_view.INTRO, one_image_view.FORMULA, one_image_view.OUTRO,
            lead=one_image_view.LEAD)
result = frame.require_result()
if result is None:
    st.stop()
if not one_image_view.ensure_subspaces(result):
    st.stop()

e_in, e_out = state.energies()
measured = one_image_view.measured(result)
n_images = len(measured.dataset)

pick, thumb = st.columns([3, 1])
with pick:
    index = int(st.number_input(f"Image (0 to {n_images - 1} of the {text.count(n_images)} analysed)", min_value=0,
                                max_value=n_images - 1, value=0, step=1, key="one_image_index"))
    name = frame.layer_stepper(result, "one_image_layer")
with st.spinner(f"Running image {index} through the model ..."):
    report = one_image_view.report(result, index, e_in, e_out)
picture = one_image_view.picture(result, report)
classes = getattr(measured.dataset, "class_names", None)
label = (classes[report.label] if classes and 0 <= report.label < len(classes)
         else "unlabelled" if report.label < 0 else report.label)
with thumb:
    st.image(picture, caption=f"image {index} · {label} · as the model sees it", width="stretch")

height = frame.chart_height()
frame.plot(image_charts.energy_fraction_chart(report, name, height=height), result.meta, key="one_image_fractions")
st.caption(
    f"Bars: the share of this image's input energy that falls outside the dataset's top k_in directions. Dashed "
    f"line: the *dataset's* share outside them, 1 − e_in = {1 - e_in:.3g}; a bar above it marks a layer where "
    "this image is less typical than the average. The image's "
    "own rank (red) against the dataset's k_in (grey): how many of the directions the dataset needs this one image "
    "uses. Over all the image's vectors, whichever token set the analysis counted."
)

try:
    item = report.layer(name)
except AnalysisError:  # a layer the image's forward never reached
    st.warning(f"{name}: {report.missing.get(name, 'not measured for this image')}.")
    st.stop()
cols = st.columns(4)
cols[0].metric("energy in subspace", f"{item.energy_fraction:.3%}", help="||X V_k||² / ||X||² at e_in")
cols[1].metric("own rank / dataset k_in", f"{item.own_rank} / {item.k_in}")
cols[2].metric("loss on this image", f"{item.loss:.2e}", help="||(W - W')X||² / ||WX||² over this image's vectors")
cols[3].metric("dataset's error", "n/a" if math.isnan(item.dataset_error) else f"{item.dataset_error:.2e}",
               help="the same ratio over the whole dataset (Layers table)")
if item.heatmap() is None:
    st.info(f"No heatmap for {name}: {item.grid.reason}.")
else:
    left, right = st.columns([3, 2])
    with left:
        frame.plot(image_charts.residual_heatmap(item, picture, height=height), result.meta, key="one_image_heatmap")
    with right:
        prefix = item.prefix_losses()
        if prefix:
            st.markdown("**Prefix tokens** (not on the grid): " + ", ".join(
                f"{token} {loss:.2e}" for token, loss in prefix.items()))
        st.caption(
            f"Each cell is one of the layer's {item.vectors} input vectors for this image, placed where it lies "
            f"({item.grid.label}); its colour is the share of this image's ||WX||² that W' (k_in = {item.k_in}, "
            f"k_out = {item.k_out}) loses there. The cells sum to {item.loss:.2e}."
        )
