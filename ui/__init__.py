"""Streamlit-side helpers for the app (the library in ``analysis/`` never imports Streamlit).

- :mod:`ui.charts` and :mod:`ui.timeline_charts`: the pure Plotly figure builders, which live in the library
  (:mod:`analysis.plots.charts`, :mod:`analysis.plots.timeline_charts`) so that notebooks draw with the very
  functions the pages use; these names are the same modules.
- :mod:`ui.text`: number formatting and the short teaching texts shown on each page.
- :mod:`ui.state`: session-state helpers (current analysis, energies, selected layer, URL sync, loading).
- :mod:`ui.frame`: the shared sidebar (current analysis, energy controls, links).
- :mod:`ui.jobs_view`: the live progress panel of a running job (polls ``analysis.jobs``).

**Importing this package imports the whole app** (:data:`APP_MODULES`), and every page and ``app.py`` starts
with ``import ui``. Streamlit runs the first sessions of a fresh server each on its own thread, and a deep
link (``/layers``) runs that page's script directly; when each thread entered the library by another module,
their imports crossed in the library's circular imports (a submodule is imported without waiting while its
package is still being imported by another thread), Python's deadlock avoidance handed one of them a half
initialised module, and 6 of 8 sessions opened at once on a fresh server showed "ImportError: cannot import
name 'ResultCache' from partially initialized module 'analysis.cache'". A package is waited for while another
thread imports it, so with this one entry the second thread waits, holding no other module, until everything
is loaded (``tests/test_app_imports.py`` runs every page's imports on threads at once in a fresh interpreter).
"""

import importlib as _importlib
import sys as _sys

from analysis.plots import charts, timeline_charts

for _module in (charts, timeline_charts):  # ``ui.charts`` is ``analysis.plots.charts``, one module
    _sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module

#: Every module the pages and ``app.py`` import (``tests/test_app_imports.py`` keeps this complete),
#: imported here in this order by whichever thread imports ``ui`` first.
APP_MODULES = (
    "analysis", "analysis.errors", "analysis.defaults", "analysis.cache", "analysis.result", "analysis.settings",
    "analysis.engine", "analysis.jobs", "analysis.calibration", "analysis.catalogue", "analysis.card",
    "analysis.compare", "analysis.compression", "analysis.compression.pipeline", "analysis.compression.subspaces",
    "analysis.compression.summaries", "analysis.cost", "analysis.data", "analysis.durations", "analysis.heads",
    "analysis.jobs.files", "analysis.meta", "analysis.metrics", "analysis.models",
    "analysis.models.registry", "analysis.models.sources", "analysis.one_image", "analysis.plots.numbers",
    "analysis.regimes", "analysis.restrictions", "analysis.sweep", "analysis.table_export", "analysis.timeline",
    "analysis.tokens", "analysis.uncertainty",
    "ui.text", "ui.background", "ui.state", "ui.tables", "ui.jobs_view", "ui.frame", "ui.card_view",
    "ui.compress_view", "ui.head_charts", "ui.image_charts", "ui.learn", "ui.one_image_view",
)

for _name in APP_MODULES:
    _importlib.import_module(_name)
