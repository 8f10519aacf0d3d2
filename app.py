"""Layer-utilization explorer: the Streamlit entry point (``streamlit run app.py``).

Routes between the pages in ``pages/`` with ``st.navigation`` and draws the frame they share (sidebar with
the current analysis, the energy sliders and links). On a fresh session it opens the embedded default
analysis, submitting it first when the cache does not have it yet (its progress then shows on the page).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # pages import ``ui`` and ``analysis`` from the repository root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from ui import frame, state  # noqa: E402

st.set_page_config(page_title="Layer utilization explorer", page_icon=":material/stacked_bar_chart:", layout="wide")

PAGES = [
    st.Page("pages/analyze.py", title="Analyze", icon=":material/play_circle:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/bar_chart:", default=True),
    st.Page("pages/spectra.py", title="Spectra", icon=":material/show_chart:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/timeline.py", title="Timeline", icon=":material/timeline:"),
    st.Page("pages/compress.py", title="Compress", icon=":material/compress:"),
    st.Page("pages/library.py", title="Library", icon=":material/folder_open:"),
    st.Page("pages/docs.py", title="Documentation", icon=":material/menu_book:"),
]

page = st.navigation(PAGES)
state.init()
state.adopt_query_params()
state.ensure_default()
frame.sidebar()
state.publish_query_params()
page.run()
state.publish_query_params()  # a page may have opened an analysis or started a job
