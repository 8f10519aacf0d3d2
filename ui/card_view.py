"""The reproducibility card in the app: one compact expander with the command (copyable), the card's fields
and, where asked, the card as a JSON download. Everything shown comes from :mod:`analysis.card`."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.card import card_from_meta, card_json, card_rows
from analysis.meta import ResultMeta

from . import frame, text

CAPTION = (
    "Everything that decides these numbers. Run the command in the project folder to recreate this result: "
    "it asks for every setting in the cache key, so it gives the same key (and the same table) wherever the "
    "model id loads the same weights, the dataset id reads the same images and the same code version runs."
)
MIME = "application/json"


def card_for(meta: ResultMeta, energies: tuple[float, float]) -> dict:
    """The card of a result with ``meta`` shown at ``energies`` (``(e_in, e_out)``)."""
    return card_from_meta(meta, *energies)


def card_text(meta: ResultMeta, energies: tuple[float, float]) -> str:
    """The card as JSON text (what the download buttons give)."""
    return card_json(card_for(meta, energies))


def file_name(meta: ResultMeta) -> str:
    return f"card-{text.short_key(meta.key)}.json"


def card_expander(meta: ResultMeta, energies: tuple[float, float], key: str, *, download: bool = True) -> None:
    """An expander titled "Reproducibility card", folded (:func:`ui.frame.folded`, open state in
    ``st.session_state[f"{key}_open"]``): the reproduce command in a code block (with a copy button), a
    two-column table of the card's fields, and (``download``) the card as JSON. ``key`` prefixes widget keys."""
    box = frame.folded("Reproducibility card", f"{key}_open", icon=":material/fact_check:")
    if not box.open:  # built only when opened (a code block and a table drawn for nobody, see frame.folded)
        return
    card = card_for(meta, energies)
    with box:
        st.caption(CAPTION)
        if card["reproduce"]:
            st.code(card["reproduce"], language="bash", wrap_lines=True)
        else:
            st.warning(f"No command can recreate this result: {card['reproduce_note']}")
        st.dataframe(pd.DataFrame(card_rows(card), columns=["field", "value"]), hide_index=True)
        if download:
            st.download_button("Card (JSON)", data=card_json(card), file_name=file_name(meta), mime=MIME,
                               on_click="ignore", key=f"{key}_download", icon=":material/download:")
