"""The results store: one SQLite file in a run folder, the single source of truth of a study.

Each room declares its own table as a `Table` (name, columns, key columns) next to the code that fills it;
the store creates tables on first use and writes rows transactionally, so a killed process loses at most
the rows of the transaction in flight. A row whose key is already stored is replaced (`put`) or left
alone (`has` lets a stage skip work it has already done).

Columns of type `path` hold folders (checkpoints, RL runs). Callers read and write them as absolute paths;
one inside the run folder is stored relative to it, so a run folder that is copied or moved keeps every row
(its stages resume instead of starting again). Paths outside the run folder are stored as they are.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

STORE_FILENAME = "results.sqlite"

_SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "json": "TEXT", "bool": "INTEGER", "path": "TEXT"}


class StoreError(RuntimeError):
    """A results store that cannot be opened or does not hold what the caller expects."""


@dataclass(frozen=True)
class Table:
    """A table schema: `columns` maps name -> one of int, float, str, json, bool; `key` names the unique key."""

    name: str
    columns: Mapping[str, str]
    key: Sequence[str]

    def __post_init__(self) -> None:
        unknown = {c: t for c, t in self.columns.items() if t not in _SQL_TYPES}
        if unknown:
            raise ValueError(f"table {self.name}: unknown column types {unknown}; valid: {sorted(_SQL_TYPES)}")
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"table {self.name}: key columns {missing} are not columns")

    @cached_property
    def path_columns(self) -> frozenset[str]:
        return frozenset(c for c, t in self.columns.items() if t == "path")

    def ddl(self) -> str:
        cols = ", ".join(f'"{c}" {_SQL_TYPES[t]}' for c, t in self.columns.items())
        key = ", ".join(f'"{k}"' for k in self.key)
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({cols}, PRIMARY KEY ({key}))'

    def encode(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"table {self.name}: unknown columns {sorted(extra)}")
        missing = [k for k in self.key if row.get(k) is None]
        if missing:
            raise ValueError(f"table {self.name}: row lacks key columns {missing}")
        out = []
        for col, typ in self.columns.items():
            value = row.get(col)
            if value is not None and typ == "json":
                value = json.dumps(value, sort_keys=True)
            elif value is not None and typ == "bool":
                value = int(bool(value))
            out.append(value)
        return tuple(out)

    def decode(self, values: Sequence[Any]) -> dict[str, Any]:
        row = {}
        for (col, typ), value in zip(self.columns.items(), values, strict=True):
            if value is not None and typ == "json":
                value = json.loads(value)
            elif value is not None and typ == "bool":
                value = bool(value)
            row[col] = value
        return row


class Store:
    """A results store at `path` (a run folder, or the .sqlite file itself)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path / STORE_FILENAME if path.suffix != ".sqlite" else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the results store {self.path}: {exc}. If the file is corrupt, move it aside "
                "and rerun: every stage recomputes what the store does not hold."
            ) from exc
        self.root = self.path.parent.resolve()
        self._known: set[str] = set()

    def _stored_path(self, value: Any) -> Any:
        """A folder as stored: relative to the run folder when inside it (`.` for the folder itself)."""
        if value is None:
            return None
        folder = Path(value) if Path(value).is_absolute() else Path(value).resolve()
        return str(folder.relative_to(self.root)) if folder.is_relative_to(self.root) else str(folder)

    def _caller_path(self, value: Any) -> Any:
        """A stored folder as callers see it: absolute."""
        return value if value is None or Path(value).is_absolute() else str(self.root / value)

    def _translate(self, table: Table, row: Mapping[str, Any], convert: Any) -> dict[str, Any]:
        return {c: convert(v) if c in table.path_columns else v for c, v in row.items()}

    def _relativize(self, table: Table) -> None:
        """Store-wide, once per table: absolute paths inside the run folder (stores from before paths were
        kept relative) become relative. A run folder moved before this ran is not recognised."""
        prefix = f"{self.root}{os.sep}"
        for col in table.path_columns:
            self._conn.execute(f'UPDATE OR REPLACE "{table.name}" SET "{col}" = substr("{col}", ?) '
                               f'WHERE substr("{col}", 1, ?) = ?', (len(prefix) + 1, len(prefix), prefix))
            self._conn.execute(f'UPDATE OR REPLACE "{table.name}" SET "{col}" = \'.\' WHERE "{col}" = ?',
                               (str(self.root),))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure(self, table: Table) -> None:
        if table.name not in self._known:
            with self._conn:
                self._conn.execute(table.ddl())
                present = {r[1] for r in self._conn.execute(f'PRAGMA table_info("{table.name}")')}
                for col, typ in table.columns.items():
                    if col not in present:  # a newer rlheal added a column: older rows read it as NULL
                        self._conn.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{col}" {_SQL_TYPES[typ]}')
                self._relativize(table)
            self._known.add(table.name)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group several `put` calls: all of them land, or none."""
        with self._conn:
            yield self._conn

    def put(self, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace `rows` in one transaction; returns how many were written."""
        self._ensure(table)
        encoded = [table.encode(self._translate(table, r, self._stored_path)) for r in rows]
        cols = ", ".join(f'"{c}"' for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        with self._conn:
            self._conn.executemany(f'INSERT OR REPLACE INTO "{table.name}" ({cols}) VALUES ({marks})', encoded)
        return len(encoded)

    def rows(self, table: Table, **where: Any) -> list[dict[str, Any]]:
        """Rows of `table` whose columns equal the given values, in insertion order."""
        self._ensure(table)
        bad = set(where) - set(table.columns)
        if bad:
            raise ValueError(f"table {table.name}: unknown columns {sorted(bad)}")
        where = self._translate(table, where, self._stored_path)
        clause = " AND ".join(f'"{c}" = ?' for c in where)
        sql = f'SELECT * FROM "{table.name}"' + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid"
        names = [r[1] for r in self._conn.execute(f'PRAGMA table_info("{table.name}")')]
        order = [names.index(c) for c in table.columns]
        return [self._translate(table, table.decode([raw[i] for i in order]), self._caller_path)
                for raw in self._conn.execute(sql, tuple(where.values()))]

    def has(self, table: Table, **key: Any) -> bool:
        """Whether a row with these column values exists (a stage's "already done?" question)."""
        self._ensure(table)
        key = self._translate(table, key, self._stored_path)
        clause = " AND ".join(f'"{c}" = ?' for c in key)
        sql = f'SELECT 1 FROM "{table.name}"' + (f" WHERE {clause}" if clause else "") + " LIMIT 1"
        return self._conn.execute(sql, tuple(key.values())).fetchone() is not None

    def tables(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
