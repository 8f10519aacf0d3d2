"""Documentation: the repository's README, shown inside the app (works offline, unlike a web link)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import text

README = Path(__file__).resolve().parent.parent / "README.md"

st.markdown(f"Method: {text.PAPER_TITLE}, [arXiv 2407.04797]({text.PAPER_URL}).")
try:
    st.markdown(README.read_text(encoding="utf-8"))
except OSError as exc:
    st.error(f"README.md could not be read ({exc.strerror or exc}).")
