"""Streamlit-side helpers for the app (the library in ``analysis/`` never imports Streamlit).

- :mod:`ui.charts` and :mod:`ui.timeline_charts`: the pure Plotly figure builders, which live in the library
  (:mod:`analysis.plots.charts`, :mod:`analysis.plots.timeline_charts`) so that notebooks draw with the very
  functions the pages use; these names are the same modules.
- :mod:`ui.text`: number formatting and the short teaching texts shown on each page.
- :mod:`ui.state`: session-state helpers (current analysis, energies, selected layer, URL sync, loading).
- :mod:`ui.frame`: the shared sidebar (current analysis, energy controls, links).
- :mod:`ui.jobs_view`: the live progress panel of a running job (polls ``analysis.jobs``).
"""

import sys as _sys

from analysis.plots import charts, timeline_charts

for _module in (charts, timeline_charts):  # ``ui.charts`` is ``analysis.plots.charts``, one module
    _sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
