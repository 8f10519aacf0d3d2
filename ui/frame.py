"""The frame every page shares: the sidebar with the current analysis, the energy controls and links,
one-shot notices, and the placeholder a page shows when no analysis is open."""

from __future__ import annotations

import streamlit as st

from analysis import defaults
from analysis.result import ENERGY_GRID

from . import jobs_view, state, text

LEARN_PAGE = "pages/learn.py"
PRESENTING = state.PRESENTING

CHART_HEIGHT = 460
PRESENTATION_HEIGHT = 560

PRESENTATION_SIDEBAR = "clamp(240px, 17vw, 340px)"
"""The sidebar's width in presentation mode: 240 px at 1280x720 (wider, and the main column's legends ran into
chart titles), 326 px at 1920x1080, where a model id then fits on one line."""

ID_STYLE = """
/* ids (text.breakable_id): on a line of their own, whole, when they fit there; else wrapped between their parts
   (after : . / ?), a part never cut at a hyphen; only a part wider than the line wraps inside, anywhere */
code.lu-id { display: inline-block; max-width: 100%; vertical-align: top; overflow-wrap: anywhere;
             padding-left: 0.15em; padding-right: 0.15em; }  /* vit-fmnist-supervised fits a 240 px sidebar's line */
code.lu-id > span { white-space: nowrap; }
/* ids that never break (text.fitted_id): one line, the text scaled to the line's width when the id is wider
   (monospace: 0.6 em a character; 100cqi is the markdown block's width); never below 0.6 of code's size.
   Only st.markdown blocks are containers: a widget's label (the presentation toggle's) sized 0 wide as one */
[data-testid="stSidebar"] [data-testid="stMarkdown"] [data-testid="stMarkdownContainer"] { container-type: inline-size; }
code.lu-id > span.lu-fit { white-space: nowrap;
  font-size: clamp(0.6em, calc((100cqi - 0.6rem) / (var(--n) * 0.6)), 1em); }
"""

_STYLE = """
<style>
/* less empty space above the title: the first chart must fit above the fold at 1280x720 */
[data-testid="stMainBlockContainer"] { padding-top: 1.6rem; padding-bottom: 2rem; }
[data-testid="stMainBlockContainer"] h1 { padding-top: 0; padding-bottom: 0.1rem; }
[data-testid="stMetricValue"] { font-size: 1.8rem; }
/* a metric's value is never cut to "21.3% ± ...": it wraps, like its label */
[data-testid="stMetricValue"] > div { white-space: normal; overflow: visible; text-overflow: clip; }
[data-testid="stMetricLabel"] p { white-space: normal; }
/* links in the sidebar wrap instead of ending in "..." */
[data-testid="stSidebar"] [data-testid="stPageLink"] a span, [data-testid="stSidebar"] [data-testid="stPageLink"] p {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; }
/* buttons say all of their label, on two lines if they must */
[data-testid="stBaseButton-secondary"] p, [data-testid="stBaseButton-primary"] p { white-space: normal; }
""" + ID_STYLE + """
</style>
"""
_PRESENTATION_STYLE = """
<style>
html { font-size: 18px; }
/* the projector's width to the charts: Streamlit's wide layout pads the main column by 5rem a side (90 px) */
[data-testid="stMainBlockContainer"] { padding-left: 2rem; padding-right: 2rem; }
[data-testid="stMetricValue"] { font-size: 2.1rem; }
/* a narrower sidebar than the usual 300 px leaves a projector's width to the charts; wider on a wide screen */
section[data-testid="stSidebar"] { width: """ + PRESENTATION_SIDEBAR + """ !important; min-width: """ + PRESENTATION_SIDEBAR + """ !important; }
section[data-testid="stSidebar"] > div { width: """ + PRESENTATION_SIDEBAR + """ !important; }
</style>
"""


PLOT_CONFIG = {"displayModeBar": False}
"""No Plotly toolbar: on hover it covered chart titles (zoom by dragging and reset by double-click still work;
Streamlit's own fullscreen button stays)."""


def plot(fig, metas, *, same_as: tuple | None = None, **kwargs) -> None:
    """``st.plotly_chart`` with the analyses' token set (and centring) appended to the chart's title.

    ``fig`` is a figure, or a function building it; with ``same_as`` (everything the figure depends on:
    result keys, energies, selected layer, height ...) the built figure is shared by every session that asks
    for the same (:func:`_shared_figure`): a class on the same analysis builds each chart once, not once per
    student (building is most of a page's server time)."""
    from . import charts

    metas = metas if isinstance(metas, (list, tuple)) else [metas]
    note = text.analyses_note(metas)

    def built():
        figure = charts.with_note(fig() if callable(fig) else fig, note)
        return charts.for_projector(figure) if presenting() else figure

    if same_as is not None and callable(fig):
        st.plotly_chart(_shared_figure(same_as, note, presenting(), built), config=PLOT_CONFIG, **kwargs)
    else:
        st.plotly_chart(built(), config=PLOT_CONFIG, **kwargs)


@st.cache_resource(max_entries=512, show_spinner=False)
def _shared_figure(same_as: tuple, note: str, projector: bool, _build):
    """One figure per ``(same_as, note, projector)`` for the whole server; read-only for the sessions
    (``st.plotly_chart`` serialises a copy)."""
    return _build()


def show(fig, **kwargs) -> None:
    """``st.plotly_chart`` without the Plotly toolbar, its text scaled up in presentation mode."""
    from . import charts

    if presenting():
        fig = charts.for_projector(fig)
    st.plotly_chart(fig, config=PLOT_CONFIG, **kwargs)


def folded(label: str, key: str, *, icon: str | None = None, expanded: bool = False):
    """A collapsed expander whose content is built only while it is open: ``box = folded(...)``, then
    ``if box.open: with box: ...``.

    Streamlit sends and draws an ordinary expander's content even when it is collapsed: a page's tables, its
    card's code block and a folded chart cost every visitor's browser their drawing on every page run (about
    a second of the renderer's CPU on Layers), for a panel most never open. Opening this one reruns the page
    (Streamlit's lazy expander, ``on_change="rerun"``); its open state is ``st.session_state[key]``."""
    return st.expander(label, expanded=expanded, key=key, icon=icon, on_change="rerun")


def metric_with_error(container, label: str, value: float, error: float, help_text: str | None = None) -> None:
    """A metric whose value is a fraction and whose split-half error bar sits under it, grey, in points
    (``± 0.4 pp``, or ``± <0.1 pp`` below the shown precision): never truncated with the value."""
    bar = text.error_bar(error)
    container.metric(label, text.pct(value), delta=bar or None, delta_color="off", delta_arrow="off",
                     help=help_text)


def style() -> None:
    """The app-wide CSS: compact top padding; bigger text in presentation mode."""
    st.markdown(_STYLE + (_PRESENTATION_STYLE if presenting() else ""), unsafe_allow_html=True)


def presenting() -> bool:
    return bool(st.session_state.get(PRESENTING, False))


def chart_height(normal: int = CHART_HEIGHT) -> int:
    """Chart height for the current mode (taller in presentation mode)."""
    return int(normal * PRESENTATION_HEIGHT / CHART_HEIGHT) if presenting() else normal


def sidebar() -> None:
    """Current analysis (model, dataset, images, MLU), the shared energy sliders, and the links."""
    with st.sidebar:
        st.subheader("Current analysis")
        result = state.current_result()
        if result is None:
            st.caption("No analysis open yet.")
        else:
            meta = result.meta
            st.markdown(  # the ids whole on one line, never broken (a narrow presentation sidebar)
                f"**Model** {text.fitted_id(meta.model_id)}  \n"
                f"**Dataset** {text.fitted_id(meta.dataset_id)}  \n"
                f"**Images** {text.count(meta.n_images)} · key `{text.short_key(result.key)}`  \n"
                f"**Vectors** {text.analysis_note(meta)}",
                unsafe_allow_html=True,
            )
            metric_with_error(st, "MLU", result.mlu, result.mlu_err,
                              "Mean layer utilization at the energies below, ± its split-half error bar.")
        if st.session_state.get(state.DEFAULT_ERROR) and result is not None and \
                result.key == st.session_state.get(state.DEFAULT_FALLBACK):
            st.caption(f"The default analysis is not available here: {st.session_state[state.DEFAULT_ERROR]} "
                       "Showing the newest cached analysis instead.")
        if state.is_key(st.session_state.get(state.JOB)):
            st.caption(f"Job `{text.short_key(st.session_state[state.JOB])}` is followed; its progress is on the "
                       "Analyze page.")

        st.subheader("Energy")
        _energy_slider("Input energy e_in", state.E_IN,
                       "Fraction of the input second moment's trace the kept input directions must hold (k_in).")
        _energy_slider("Output energy e_out", state.E_OUT,
                       "Fraction of the output second moment's trace the kept output directions must hold (k_out).")
        st.caption("Every chart follows these at once, from stored eigenvalues (no data pass).")

        st.divider()
        st.toggle("Presentation mode", key=PRESENTING,
                  help="For a projector: charts first and taller, bigger text, the theory folded away.")
        st.markdown(f"[Paper: arXiv 2407.04797]({text.PAPER_URL})")
        st.page_link(LEARN_PAGE, label="Learn: the method in pictures", icon=":material/school:")


def _energy_slider(label: str, key: str, help_text: str) -> None:
    """A select_slider over ``ENERGY_GRID`` mirrored into the plain session key ``key``.

    The widget has its own key (``<key>_slider``) and is re-seeded from ``key`` before each draw, so the
    energies survive anything that drops widget state (Streamlit forgets a widget's value on a run that
    does not draw it).
    """
    widget_key = f"{key}_slider"
    st.session_state[widget_key] = st.session_state[key]

    def _changed() -> None:
        st.session_state[key] = st.session_state[widget_key]

    st.select_slider(label, options=ENERGY_GRID, key=widget_key, format_func=text.energy, help=help_text,
                     on_change=_changed)


def notices() -> None:
    """Show (once) the messages queued by jobs and actions."""
    queued = st.session_state.get(state.NOTICES) or []
    st.session_state[state.NOTICES] = []
    for level, message in queued:
        getattr(st, level, st.info)(message)


ENTRY_RAN = "entry_point_ran"
"""Session key set by ``app.py`` on every run: a page run without it was started by Streamlit's legacy
``pages/`` navigation (see :func:`through_entry_point`)."""
IDEA_OPEN = "page_idea_open"
"""The open state of a page's folded theory panel (:func:`intro`)."""
INTENDED_PAGE = "intended_page"
"""The page a deep link asked for, kept while :func:`through_entry_point` goes round ``app.py``."""


def through_entry_point() -> None:
    """Send a page started without ``app.py`` through it, to the same page.

    On a freshly started server, the very first request for a deep link (``/layers?analysis=KEY``) can be
    served by Streamlit's legacy ``pages/`` navigation: the page runs alone, without the router, the frame or
    the default analysis (streamlit#9624, #10276). The page then stores its own name and switches to
    ``app.py``, whose router opens that page again, with the link's query parameters (``st.switch_page``
    clears them unless it is given them)."""
    if st.session_state.get(ENTRY_RAN):
        return
    import sys
    from pathlib import Path

    frame = sys._getframe(1)
    while frame is not None and Path(frame.f_globals.get("__file__", "")).parent.name != "pages":
        frame = frame.f_back
    if frame is not None:  # the page module being run
        st.session_state[INTENDED_PAGE] = Path(frame.f_globals["__file__"]).stem
    st.switch_page("app.py", query_params=st.query_params.to_dict())


def intro(title: str, paragraph: str, formula: str | None = None, outro: str | None = None,
          lead: str | None = None) -> None:
    """Page title, the queued notices, a one-line ``lead`` saying what the page shows, and the theory (the
    teaching paragraph, optional displayed formula and closing sentences) in a collapsible panel, so the
    charts come first; folded in presentation mode, open otherwise only when there is no lead."""
    through_entry_point()
    st.title(title)
    state.publish_query_params()  # also here: AppTest reruns a page without its entry point
    notices()
    if lead:
        st.markdown(lead)
    idea = folded("The idea behind this page", IDEA_OPEN, expanded=not lead and not presenting(),
                  icon=":material/school:")
    if idea.open:  # built only when open (folded): its text and formula typeset for nobody on every run
        with idea:
            st.markdown(paragraph)
            if formula:
                st.latex(formula)
            if outro:
                st.markdown(outro)


def require_result():
    """The open analysis at the current energies; otherwise draw why there is none (and the running job's
    progress, e.g. the default analysis on first launch) and return None."""
    result = state.current_result()
    if result is not None:
        return result
    job = st.session_state.get(state.JOB)
    if state.is_key(job) and job == st.session_state.get(state.DEFAULT_JOB):
        st.info(f"First launch: computing the embedded default analysis ({defaults.DEFAULT_MODEL} on "
                f"{defaults.DEFAULT_DATASET}) once; it opens here when done and is cached for next time.")
    following = jobs_view.job_panel()
    error = st.session_state.get(state.DEFAULT_ERROR)
    if error:
        st.error(error)
        st.caption(f"The default analysis is {defaults.DEFAULT_MODEL} on {defaults.DEFAULT_DATASET}.")
    if state.current_key() is not None and not state.entry_exists(state.current_key()):
        st.warning(f"Analysis {text.short_key(state.current_key())} is no longer in the cache.")
    if not following:
        st.info("No analysis is open. Run one on the Analyze page or open one from the Library.")
        st.page_link("pages/analyze.py", label="Analyze a model", icon=":material/play_circle:")
        st.page_link("pages/library.py", label="Open the Library", icon=":material/folder_open:")
    return None


def layer_picker(result, widget_key: str, label: str = "Selected layer") -> str:
    """A selectbox bound to the shared ``selected_layer`` (the fallback to clicking a chart)."""
    names = list(result.layers["layer"])
    st.session_state[widget_key] = state.selected_layer(result)

    def _changed() -> None:
        st.session_state[state.SELECTED] = st.session_state[widget_key]

    st.selectbox(label, names, key=widget_key, on_change=_changed)
    return st.session_state[state.SELECTED]


def step_layer(names: list[str], delta: int) -> None:
    """Button callback: select the layer ``delta`` places away in depth order (clamped at both ends)."""
    current = st.session_state.get(state.SELECTED)
    i = names.index(current) if current in names else 0
    st.session_state[state.SELECTED] = names[min(max(i + delta, 0), len(names) - 1)]


def layer_stepper(result, widget_key: str, label: str = "Selected layer") -> str:
    """The layer picker with previous / next buttons beside it, to walk through the layers in depth order
    in front of an audience (one click per layer; every page follows the selection). The buttons are icons
    (an arrow each), so they never lose their label in a narrow column."""
    names = list(result.layers["layer"])
    state.selected_layer(result)
    pick, back, forward = st.columns([5, 1, 1], vertical_alignment="bottom", gap="small")
    with back:
        st.button("", key=f"{widget_key}_prev", on_click=step_layer, args=(names, -1), icon=":material/arrow_back:",
                  help="Previous layer (depth order)", width="stretch")
    with forward:
        st.button("", key=f"{widget_key}_next", on_click=step_layer, args=(names, 1), icon=":material/arrow_forward:",
                  help="Next layer (depth order)", width="stretch")
    with pick:
        return layer_picker(result, widget_key, label)
