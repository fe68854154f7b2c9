"""Stored rows as a person or another tool reads them: angles in degrees, flat columns, CSV and Parquet.

`in_degrees` gives every angle column in degrees under a `_deg` name (JSON keeps rows so, nested values and
all); `export_rows` also spreads every mapping (decoding, versions, ...) into dotted columns
(`decoding.temperature`), for Parquet, CSV and printed tables. Lists (`solved_at`, σ spectra, histograms)
stay lists: JSON and Parquet keep them, `flat` leaves them out of CSV and printed tables, whose cells hold one
value each.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def tables() -> dict[str, Any]:
    """The exportable tables by name."""
    from rlheal.evaluate import EVALS
    from rlheal.spectral.alignment import ALIGNMENT
    from rlheal.spectral.metrics import SPECTRAL, SPECTRAL_SIGMA
    from rlheal.train.ppo import RL_UPDATES
    from rlheal.train.sft import LOSSES

    return {t.name: t for t in (EVALS, LOSSES, RL_UPDATES, SPECTRAL, SPECTRAL_SIGMA, ALIGNMENT)}


def in_degrees(row: Mapping[str, Any]) -> Row:
    """`row` with each angle column (radians) replaced by `<column>_deg`, in degrees, in the same place."""
    from rlheal.spectral.metrics import ANGLE_COLUMNS

    out: Row = {}
    for key, value in row.items():
        if key in ANGLE_COLUMNS:
            out[f"{key}_deg"] = None if value is None else math.degrees(value)
        else:
            out[key] = value
    return out


def spread(row: Mapping[str, Any]) -> Row:
    """`row` with every mapping value spread into dotted columns (nested ones too)."""
    out: Row = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in spread(value).items()})
        else:
            out[key] = value
    return out


def export_rows(rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Rows in degrees with mappings spread (lists kept)."""
    return [spread(in_degrees(r)) for r in rows]


def flat(rows: Sequence[Row]) -> tuple[list[str], list[Row]]:
    """(columns, rows) with one value per cell: list columns left out; columns in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update((k, None) for k, v in row.items() if not isinstance(v, list | tuple))
    lists = {k for row in rows for k, v in row.items() if isinstance(v, list | tuple)}
    names = [c for c in columns if c not in lists]
    return names, [{c: row.get(c) for c in names} for row in rows]


def to_csv(rows: Sequence[Row]) -> str:
    """CSV text, one line per row, one value per cell (see `flat`)."""
    columns, cells = flat(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cells)
    return buffer.getvalue()


def write_parquet(rows: Sequence[Row], path: str | Path) -> Path:
    """Write `rows` (lists kept as list columns) as a Parquet file at `path`, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlheal.atomic import write_bytes

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(Path(path), sink.getvalue().to_pybytes())
    return Path(path)
