"""Learn: the method in pictures for students (a 2-D example with a slider), what each page shows, and a
guided tour of the zoo's regimes comparison with its real numbers."""

from __future__ import annotations

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis import defaults
from analysis.compare import planned_keys
from analysis.regimes import training_facts
from analysis.settings import AnalysisSettings
from ui import charts, frame, learn, state, text

frame.through_entry_point()
st.title("Learn")
frame.notices()
st.markdown(
    "**How much of its room does a layer really use?** A layer `y = W x + b` could use all $d_{in}$ directions "
    "of its input space; on real data its inputs often fill only a few. This page shows the idea on a picture, "
    f"then where each page of the app shows it on a network. Method: {text.PAPER_TITLE}, "
    f"[arXiv 2407.04797]({text.PAPER_URL})."
)

st.header("1. The method in pictures")
controls, picture, bars = st.columns([1, 2, 2])
with controls:
    spread = st.slider("How much the points spread across the main direction", 0.0, 1.0, 0.15, 0.05,
                       key="learn_spread", help="0: every point on one line; 1: a round cloud.")
    energy = st.select_slider("Energy e to hold", options=[0.8, 0.9, 0.95, 0.99, 0.999], value=0.9,
                              key="learn_energy", format_func=text.energy)
points = learn.synthetic_inputs(spread)
values, vectors = learn.eigen(points)
k = learn.k_for(values, energy)
with picture:
    frame.show(charts.learn_points_chart(points, vectors, values, k), key="learn_points")
with bars:
    frame.show(charts.learn_energy_chart(values, energy), key="learn_energy_chart")
with controls:
    st.metric("k(e)", f"{k} of 2")
    st.metric("utilization k / d", text.pct(k / 2))
st.markdown(
    "1. Collect the layer's inputs $x$ over the dataset and their **second moment** ${C_{in} = \\sum x x^\\top}$.\n"
    "2. Its **eigen-directions** (arrows) are the directions the inputs occupy; each eigenvalue is the energy along "
    "one of them (the arrows' lengths).\n"
    "3. **k(e)** is the fewest directions that hold a fraction $e$ of the total energy (red bars). Do the same on "
    "the outputs for $k_{out}$.\n"
    "4. The layer's **utilized rank** is ${r = \\min(k_{in}, k_{out})}$ and its **utilization** "
    "${u = r / \\min(d_{in}, d_{out})}$; the **MLU** is the mean of $u$ over the layers inside the blocks.\n\n"
    "Try it: with the spread near 0 one direction holds nearly all the energy, so k = 1 and only half of the space "
    "is used; a round cloud needs both. Raising e towards 1 counts ever smaller directions."
)

st.header("2. What each page shows")
PAGES = [
    ("pages/compare.py", "Compare", ":material/compare_arrows:",
     "pre-training regimes side by side: MLU beside each model's regime, training budget and accuracy."),
    ("pages/layers.py", "Layers", ":material/bar_chart:",
     "u for every layer in depth order, the MLU line, and a block x kind heatmap; click or step to select a layer."),
    ("pages/heads.py", "Heads", ":material/view_module:",
     "how much of its space each attention head's queries, keys and values use, heads x layers."),
    ("pages/spectra.py", "Spectra", ":material/show_chart:",
     "for the selected layer: W looks full rank, W' (W on the data's directions) collapses to r; play the sweep."),
    ("pages/one_image.py", "One image", ":material/image_search:",
     "one image against the dataset's subspaces: how typical it is at each layer, and where W' would lose it."),
    ("pages/analyze.py", "Analyze", ":material/play_circle:",
     "run any model on any dataset: the time it will take here, then its progress; one job at a time."),
    ("pages/timeline.py", "Timeline", ":material/timeline:",
     "utilization across training: every checkpoint of a regime, against its step and its accuracy."),
    ("pages/compress.py", "Compress", ":material/compress:",
     "store each layer as two thin factors of rank r: parameters kept against the error and accuracy."),
    ("pages/library.py", "Library", ":material/folder_open:", "every finished analysis: open, download, delete."),
]
for path, title, icon, what in PAGES:
    left, right = st.columns([1, 5])
    with left:
        st.page_link(path, label=title, icon=icon)
    with right:
        st.markdown(what)

st.header("3. A guided tour of the zoo comparison")
models = [m.strip() for m in defaults.DEFAULT_COMPARISON if m.strip()]
facts = [training_facts(m) for m in models]
mlu = {}
for model_id, key, _ in planned_keys(models, defaults.DEFAULT_DATASET, AnalysisSettings(samples=defaults.DEFAULT_SAMPLES)):
    result = state.result_at(key, *state.energies()) if key and state.cache().has(key) else None
    if result is not None:
        mlu[model_id] = result.mlu
rows = "\n".join(
    # ids break only between their parts (zoo: | vit-fmnist-supervised), never at a hyphen as the browser does
    f"| {text.breakable_id(f.model_id)} | {f.label} | {f.budget} | {text.pct(f.linear_probe)} | "
    f"{text.pct(mlu.get(f.model_id))} |"
    for f in facts
)
st.markdown(
    "The project's zoo is one small ViT trained four ways on Fashion-MNIST, so differences in utilization come "
    "from training alone. At the sidebar's energies:\n\n"
    "| model | regime | training | linear probe | MLU |\n|---|---|---|---|---|\n" + rows,
    unsafe_allow_html=True,
)
short = [f for f in facts if f.falls_short]
st.markdown(
    "1. Open **Compare**: the bars are the MLU of each regime; under each, its regime and linear-probe accuracy. "
    "Ask: does the self-supervised model use more of its layers than the supervised one, as the paper reports?\n"
    + (f"2. Read the caveat: {', '.join(f'`{f.model_id}`' for f in short)} fell short of its recipe's target, so "
       "its numbers describe an under-trained model, not its regime.\n" if short else
       "2. Check the training budgets: a regime is only represented fairly by a model that reached its target.\n")
    + "3. The random initialisation is the baseline: what utilization looks like before any learning.\n"
    "4. On **Layers**, find which layers differ (the heatmap by block and kind); step through them with ◀ / ▶.\n"
    "5. On **Spectra**, press ▶ Play: as e falls, k_in, k_out and r shrink and W' collapses onto the zero floor.\n"
    "6. Move the sidebar's energies: every number follows at once, without touching the data again."
)
st.page_link("pages/compare.py", label="Start the tour on Compare", icon=":material/arrow_forward:")
