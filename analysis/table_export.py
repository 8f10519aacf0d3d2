"""Export of a result's per-layer table: CSV, parquet, or JSON (summary + layers + not-applicable list).

Every export carries the result's reproducibility card (:mod:`analysis.card`): the JSON document holds it
under ``"card"``; a parquet file stores it as JSON text in its file-level key-value metadata under
``reproducibility_card`` (``pyarrow.parquet.read_schema(path).metadata``; :func:`read_parquet_card`); CSV has
no place for it, so :func:`export_result` writes it beside the table as ``<path>.card.json``
(:func:`card_path`), and downloads offer :func:`card_bytes` as a second file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import atomic_write_bytes
from .card import CARD_SUFFIX, PARQUET_METADATA_KEY, card_json, reproducibility_card
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
        return _parquet_with_card(table, card_json(reproducibility_card(result)))
    records = [{k: _clean(v) for k, v in row.items()} for row in table.astype(object).where(table.notna(), None).to_dict("records")]
    document = {
        "summary": {k: _clean(v) for k, v in result.summary().items()},
        "meta": result.meta.to_dict(),
        "layers": records,
        "not_applicable": result.not_applicable,
        "warnings": result.warnings,
        "card": reproducibility_card(result),
    }
    return json.dumps(document, indent=1, default=str).encode()


def _parquet_with_card(table: "pd.DataFrame", card_text: str) -> bytes:
    """``table`` as parquet bytes whose schema metadata also holds ``card_text`` (pandas' own entry kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), PARQUET_METADATA_KEY: card_text.encode()})
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    return buffer.getvalue()


def read_parquet_card(path: str | Path) -> dict | None:
    """The card stored in a parquet export's metadata, or None when the file has none."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    text = metadata.get(PARQUET_METADATA_KEY)
    return json.loads(text) if text is not None else None


def card_bytes(result: Result) -> bytes:
    """The result's reproducibility card as JSON bytes (the CSV sidecar; a download of its own)."""
    return card_json(reproducibility_card(result)).encode()


def card_path(path: str | Path) -> Path:
    """Where a CSV export's card goes: ``<path>.card.json`` (``table.csv`` -> ``table.csv.card.json``)."""
    path = Path(path).expanduser()
    return path.with_name(path.name + CARD_SUFFIX)


def export_result(result: Result, path: str | Path, fmt: str | None = None) -> Path:
    """Write the table to ``path`` atomically; the format comes from ``fmt`` or the file suffix.

    A CSV export also writes the card to :func:`card_path` (JSON and parquet hold it inside)."""
    path = Path(path).expanduser()
    fmt = fmt or format_from_path(path)
    try:
        atomic_write_bytes(path, export_bytes(result, fmt))
        if fmt == "csv":
            atomic_write_bytes(card_path(path), card_bytes(result))
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
