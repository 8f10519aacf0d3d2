"""Spectra: for the selected layer, singular values of W against W' (drawn down to its zeros), the "sweep the
energy" animation, and the eigenvalues of C_in and C_out with the energy not held on a log scale, so the
threshold 1 - e and the k it gives are visible. All from stored spectra."""

from __future__ import annotations

import math

import streamlit as st

from ui import charts, frame, state, text

frame.intro("Spectra", text.SPECTRA_INTRO, text.SPECTRA_FORMULA, lead=text.SPECTRA_LEAD)
result = frame.require_result()
if result is None:
    st.stop()

e_in, e_out = state.energies()
name = frame.layer_stepper(result, "spectra_layer_pick")
spectrum = result.layer(name)
row = result.layers[result.layers["layer"] == name].iloc[0]
height = frame.chart_height()

cols = st.columns(5)
cols[0].metric("d_in x d_out", f"{spectrum.d_in} x {spectrum.d_out}")
cols[1].metric("k_in / k_out", f"{row['k_in']} / {row['k_out']}")
cols[2].metric("utilized rank r", f"{row['rank']}", help="r = min(k_in, k_out)")
cols[3].metric("utilization u", text.pct(row["utilization"]))
error = row["preservation_error"]
cols[4].metric("preservation error", "n/a" if math.isnan(error) else f"{error:.2e}",
               help="||(W - W')X||² / ||WX||² on the data at these energies.")

same = (result.key, name, e_in, e_out, height)  # what the charts depend on: shared by every session asking
frame.plot(lambda: charts.singular_values_chart(spectrum, e_in, e_out, height=height), result.meta,
           key="spectra_singular", same_as=("singular", *same))
st.caption(
    f"**{charts.kind_label(spectrum.kind)}**{'' if spectrum.in_mlu else ' (not counted in the MLU)'}. "
    f"W' is stored at e_in = e_out for e in {{{', '.join(text.energy(e) for e in sorted(spectrum.wprime_singular))}}}; "
    f"the bold curve is the one at min(e_in, e_out) = {text.energy(min(e_in, e_out))}"
    + ("" if min(e_in, e_out) in spectrum.wprime_singular else
       f", or the stored one nearest to it ({text.energy(charts.nearest_wprime_energy(min(e_in, e_out)))})")
    + ". Its singular values "
    "beyond r are exactly zero and sit on the dotted floor line. Data-free view of W alone: stable rank "
    f"{row['w_stable_rank']:.1f}, effective rank {row['w_effective_rank']:.1f} of at most "
    f"{min(spectrum.d_in, spectrum.d_out)}; inputs seen: {text.count(spectrum.n_samples)} vectors."
)
frame.plot(lambda: charts.energy_animation(spectrum, min(e_in, e_out), height=height), result.meta,
           key="spectra_sweep", same_as=("sweep", *same))
left, right = st.columns(2)
# side by side, C_in and C_out share one log range, so their decades are level
log_range = charts.eigen_log_range([spectrum.eig_in, spectrum.eig_out], [e_in, e_out])
with left:
    frame.plot(
        lambda: charts.eigen_chart(spectrum.eig_in, e_in, f"Inputs: C_in (d_in = {spectrum.d_in})",
                                   charts.kind_color(spectrum.kind), height=height, log_range=log_range),
        result.meta, key="spectra_c_in", same_as=("c_in", *same),
    )
with right:
    frame.plot(
        lambda: charts.eigen_chart(spectrum.eig_out, e_out, f"Outputs: C_out (d_out = {spectrum.d_out})",
                                   charts.kind_color(spectrum.kind), height=height, log_range=log_range),
        result.meta, key="spectra_c_out", same_as=("c_out", *same),
    )
