"""Export of a result's per-layer table: CSV, parquet, or JSON (summary + layers + not-applicable list)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import atomic_write_bytes
from .errors import SettingsError
from .result import Result

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet", "json")


def format_from_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise SettingsError(f"cannot tell the export format of {str(path)!r}; use a .csv, .parquet or .json name")
    return suffix


def _clean(value: object) -> object:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def export_bytes(result: Result, fmt: str) -> bytes:
    """The table in ``fmt`` (csv | parquet | json) as bytes (for downloads and files alike)."""
    if fmt not in FORMATS:
        raise SettingsError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    table = result.layers
    if fmt == "csv":
        return table.to_csv(index=False).encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    records = [{k: _clean(v) for k, v in row.items()} for row in table.astype(object).where(table.notna(), None).to_dict("records")]
    document = {
        "summary": {k: _clean(v) for k, v in result.summary().items()},
        "meta": result.meta.to_dict(),
        "layers": records,
        "not_applicable": result.not_applicable,
        "warnings": result.warnings,
    }
    return json.dumps(document, indent=1, default=str).encode()


def export_result(result: Result, path: str | Path, fmt: str | None = None) -> Path:
    """Write the table to ``path`` atomically; the format comes from ``fmt`` or the file suffix."""
    path = Path(path).expanduser()
    fmt = fmt or format_from_path(path)
    try:
        atomic_write_bytes(path, export_bytes(result, fmt))
    except OSError as exc:
        raise SettingsError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def write_table(table: "pd.DataFrame", path: str | Path) -> Path:
    """Write any table (e.g. a timeline's) to ``path`` atomically as CSV, parquet or JSON records (by suffix)."""
    path = Path(path).expanduser()
    fmt = format_from_path(path)
    if fmt == "csv":
        data = table.to_csv(index=False).encode()
    elif fmt == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    else:
        records = [{k: _clean(v) for k, v in row.items()}
                   for row in table.astype(object).where(table.notna(), None).to_dict("records")]
        data = json.dumps(records, indent=1, default=str).encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise SettingsError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path
