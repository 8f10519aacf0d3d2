"""Streamlit-side helpers for the app (the library in ``analysis/`` never imports Streamlit).

- :mod:`ui.charts`: pure Plotly figure builders (no Streamlit; unit-testable), one colour per layer kind.
- :mod:`ui.text`: number formatting and the short teaching texts shown on each page.
- :mod:`ui.state`: session-state helpers (current analysis, energies, selected layer, URL sync, loading).
- :mod:`ui.frame`: the shared sidebar (current analysis, energy controls, links).
- :mod:`ui.jobs_view`: the live progress panel of a running job (polls ``analysis.jobs``).
"""
