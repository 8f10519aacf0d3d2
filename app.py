"""Layer-utilization explorer: the Streamlit entry point (``streamlit run app.py``).

Routes between the pages in ``pages/`` with ``st.navigation`` and draws the frame they share (sidebar with
the current analysis, the energy sliders and links). It opens on the Compare page with the zoo's regimes
comparison; the embedded default analysis is opened for the other pages (both ship with the repository,
``analysis/demo_results``; when they are stale the default is submitted and its progress shows).
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

DEFAULT_PAGE = "pages/compare.py"
PAGES = [
    # a newcomer first sees the regimes comparison (shipped with the repository, so it is there at once).
    # Streamlit serves the default page at "/" only; its url_path is reserved all the same, so it is not
    # "compare": that address belongs to COMPARE_BY_NAME below
    st.Page(DEFAULT_PAGE, title="Compare", icon=":material/compare_arrows:", default=True, url_path="start"),
    st.Page("pages/layers.py", title="Layers", icon=":material/bar_chart:"),
    st.Page("pages/heads.py", title="Heads", icon=":material/view_module:"),
    st.Page("pages/spectra.py", title="Spectra", icon=":material/show_chart:"),
    st.Page("pages/one_image.py", title="One image", icon=":material/image_search:"),
    st.Page("pages/analyze.py", title="Analyze", icon=":material/play_circle:"),
    st.Page("pages/timeline.py", title="Timeline", icon=":material/timeline:"),
    st.Page("pages/compress.py", title="Compress", icon=":material/compress:"),
    st.Page("pages/library.py", title="Library", icon=":material/folder_open:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]


def _compare_by_name() -> None:
    """``/compare`` (the page's own name, as every other page has one): the default page at "/", with the
    link's query parameters; without this Streamlit answers "Page not found" and then shows Compare."""
    st.switch_page(PAGES[0], query_params=st.query_params.to_dict())


COMPARE_BY_NAME = st.Page(_compare_by_name, title="Compare", url_path=Path(DEFAULT_PAGE).stem, visibility="hidden")

st.session_state[frame.ENTRY_RAN] = True
page = st.navigation([*PAGES, COMPARE_BY_NAME])
if page is COMPARE_BY_NAME:
    page.run()  # switches to the default page before anything of the frame is drawn
intended = st.session_state.pop(frame.INTENDED_PAGE, None)  # a deep link first served without this router
if intended and intended != page.url_path:
    target = next((p for p in PAGES if p.url_path == intended), PAGES[0])
    st.switch_page(target, query_params=st.query_params.to_dict())
state.init()
if not st.session_state.get(state.URL_ADOPTED):  # the first run of a session: was the page asked for ours?
    asked = state.unknown_page({p.url_path for p in [*PAGES, COMPARE_BY_NAME]})
    if asked and not intended:
        state.notify("warning", f"This app has no page \"{asked}\": here is {page.title} instead. The pages are "
                                "listed in the sidebar.")
state.adopt_query_params()
state.ensure_default()
frame.style()
frame.sidebar()
state.publish_query_params()
page.run()
state.publish_query_params()  # a page may have opened an analysis or started a job
