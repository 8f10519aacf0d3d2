"""Library: the cached analyses with their MLU at the sidebar's energies and their settings: open, download,
delete with confirmation; and the machine's jobs: running, waiting, and those that failed or were cancelled
lately (:func:`ui.jobs_view.machine_jobs`)."""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis.errors import AnalysisError
from analysis.table_export import export_bytes
from ui import card_view, frame, jobs_view, state, tables, text

PICK = "library_pick"
CONFIRM = "library_confirm_delete"
MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json"}


def _open(key: str) -> None:
    state.open_analysis(key)
    state.notify("success", f"Opened analysis {text.short_key(key)}: every page now shows it.")


def _delete(key: str) -> None:
    st.session_state.pop(CONFIRM, None)
    try:
        removed = state.cache().delete(key)
    except (AnalysisError, OSError) as exc:
        state.notify("error", f"Could not delete {text.short_key(key)}: {exc}")
        return
    state.close_analysis_if(key)
    state.notify("success" if removed else "warning",
                 f"Deleted analysis {text.short_key(key)}." if removed else f"{text.short_key(key)} was already gone.")


def _mlu(key: str) -> float | None:
    """The entry's MLU at the sidebar's energies, in percent (None when it cannot be read)."""
    result = state.result_at(key, *state.energies())
    return None if result is None else round(100 * result.mlu, 1)


def _export(key: str, fmt: str) -> bytes:
    """Bytes of one download (built only when the button is clicked)."""
    result = state.load_result(key)
    if result is None:
        raise AnalysisError(f"analysis {key} is no longer in the cache")
    return export_bytes(result.at_energy(*state.energies()), fmt)


frame.intro("Library", text.LIBRARY_INTRO, lead=text.LIBRARY_LEAD)

entries = tables.library_order(list(state.cache().entries()))  # whole models first, then checkpoints
if not entries:
    st.info("The cache is empty: run an analysis on the Analyze page.")
else:
    table = pd.DataFrame([tables.entry_row(e, _mlu(e.key)) for e in entries])
    # widths (px) that fit the main column at 1280 px (about 820 px), the key columns first; a long model id is
    # cut (its cell shows it whole). Not pinned: Streamlit draws pinned columns' text grey, the key ones faint
    st.dataframe(table, hide_index=True, column_config={
        "key": st.column_config.TextColumn("key", width=78),
        "MLU": st.column_config.NumberColumn("MLU", format="%.1f%%", width=58,
                                             help="At the sidebar's energies (empty when the entry cannot be read)."),
        "model": st.column_config.TextColumn("model", width=190),
        "dataset": st.column_config.TextColumn("dataset", width=128),
        "images": st.column_config.NumberColumn("images", format="localized", width=64),
        "created": st.column_config.TextColumn("created", width=118),
        "stats s": st.column_config.NumberColumn("stats s", format="%.1f", width=58,
                                                 help="Seconds the statistics pass took (one decimal for every row)."),
        "settings": st.column_config.TextColumn("settings", width=126,
                                                help="Samples and tokens per image (when limited), seed, precision, "
                                                     "device (the card has the rest)."),
    })
    labels = {e.key: tables.entry_label(e) for e in entries}
    if st.session_state.get(PICK) not in labels:
        st.session_state[PICK] = state.current_key() if state.current_key() in labels else entries[0].key
    key = st.selectbox("Analysis", list(labels), key=PICK, format_func=labels.get)
    is_current = key == state.current_key()
    entry = next(e for e in entries if e.key == key)
    cols = st.columns([1, 1, 1, 1, 1, 1])
    cols[0].button("Open", on_click=_open, args=(key,), type="primary", disabled=is_current, key="library_open",
                   icon=":material/folder_open:", help="It is open already." if is_current else "Show it on every page.")
    for col, fmt in zip(cols[1:4], ("csv", "parquet", "json")):
        col.download_button(fmt.upper(), data=partial(_export, key, fmt), file_name=f"utilization-{text.short_key(key)}.{fmt}",
                            mime=MIME[fmt], on_click="ignore", key=f"library_download_{fmt}", icon=":material/download:")
    cols[4].download_button("CARD", data=partial(card_view.card_text, entry.meta, state.energies()),
                            file_name=card_view.file_name(entry.meta), mime=card_view.MIME, on_click="ignore",
                            key="library_download_card", icon=":material/download:",
                            help="The reproducibility card (JSON): what made this result and the command that redoes it.")
    if st.session_state.get(CONFIRM) == key:
        st.warning(f"Delete {labels[key]}? The stored spectra are removed; recomputing needs the data again.")
        yes, no = st.columns([1, 5])
        yes.button("Yes, delete", on_click=_delete, args=(key,), type="primary", key="library_delete_yes")
        no.button("Keep it", on_click=lambda: st.session_state.pop(CONFIRM, None), key="library_delete_no")
    else:
        cols[5].button("Delete ...", on_click=lambda k=key: st.session_state.update({CONFIRM: k}), key="library_delete",
                       icon=":material/delete:")
    card_view.card_expander(entry.meta, state.energies(), key="library_card", download=False)
    if is_current:
        st.page_link("pages/layers.py", label="Show it on the Layers page", icon=":material/bar_chart:")

jobs_view.machine_jobs()
