"""The results store: one SQLite file in a run folder, the single source of truth of a study.

Each room declares its own table as a `Table` (name, columns, key columns) next to the code that fills it;
the store creates tables on first use and writes rows transactionally, so a killed process loses at most
the rows of the transaction in flight. A row whose key is already stored is replaced (`put`) or left
alone (`has` lets a stage skip work it has already done).

Columns of type `path` hold folders (checkpoints, RL runs). Callers read and write them as absolute paths;
one inside the run folder is stored relative to it, so a run folder that is copied or moved keeps every row
(its stages resume instead of starting again). Paths outside the run folder are stored as they are.

Every value is checked against its column's type on the way in and on the way out, so a row that does not
fit (a step "abc" from a hand-edited manifest or store) is refused with a message naming it, never stored
or handed on. `Store(path, readonly=True)` reads without writing anything (no journal change, no new table,
nothing created), also in a folder this user cannot write.
"""

from __future__ import annotations

import json
import numbers
import os
import sqlite3
import time
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
        """The SQL values of `row`; ValueError for unknown columns, a missing key or a value of the wrong type."""
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"table {self.name}: unknown columns {sorted(extra)}")
        missing = [k for k in self.key if row.get(k) is None]
        if missing:
            raise ValueError(f"table {self.name}: row lacks key columns {missing}")
        return tuple(self._sql_value(col, typ, row.get(col)) for col, typ in self.columns.items())

    def _sql_value(self, col: str, typ: str, value: Any) -> Any:
        if value is None:
            return None
        if typ == "json":
            try:
                return json.dumps(value, sort_keys=True)
            except (TypeError, ValueError):
                raise ValueError(_misfit(self.name, col, typ, value)) from None
        if typ == "bool" and isinstance(value, bool | numbers.Integral):
            return int(bool(value))
        if typ == "int" and _is_int(value):
            return int(value)
        if typ == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if typ in ("str", "path") and isinstance(value, str):
            return value
        raise ValueError(_misfit(self.name, col, typ, value))

    def decode(self, values: Sequence[Any]) -> dict[str, Any]:
        """A row from its SQL values (in column order); ValueError for a value that does not fit its column."""
        row = {}
        for (col, typ), value in zip(self.columns.items(), values, strict=True):
            if value is None:
                row[col] = None
            elif typ == "json" and isinstance(value, str):
                try:
                    row[col] = json.loads(value)
                except json.JSONDecodeError:
                    raise ValueError(_misfit(self.name, col, typ, value)) from None
            elif typ == "bool" and value in (0, 1):
                row[col] = bool(value)
            elif ((typ == "int" and _is_int(value)) or (typ == "float" and isinstance(value, int | float))
                  or (typ in ("str", "path") and isinstance(value, str))):
                row[col] = value
            else:
                raise ValueError(_misfit(self.name, col, typ, value))
        return row


def _is_int(value: Any) -> bool:
    """An integer (not a bool), or a float with an integral value."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


def _misfit(table: str, col: str, typ: str, value: Any) -> str:
    shown = repr(value)
    return f"table {table}, column {col} holds {shown if len(shown) <= 60 else shown[:60] + '…'}, not a value of type {typ}"


class Store:
    """A results store at `path` (a run folder, or the .sqlite file itself); `readonly` opens it for reading
    only (StoreError when there is no store there)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        path = Path(path)
        self.path = path / STORE_FILENAME if path.suffix != ".sqlite" else path
        self.readonly = readonly
        try:
            if readonly:
                self._conn = _connect_readonly(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=60.0)
                _write_ahead_log(self._conn)
                self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the results store {self.path}: {exc}. If the file is corrupt, move it aside "
                "and rerun: every stage recomputes what the store does not hold."
            ) from exc
        self.root = self.path.parent.resolve()
        self._known: dict[str, list[str]] = {}  # table -> its stored columns ([] when it does not exist)

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
        return {c: convert(v) if c in table.path_columns and isinstance(v, str | os.PathLike) else v
                for c, v in row.items()}

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

    def _columns(self, table: Table) -> list[str]:
        return [r[1] for r in self._conn.execute(f'PRAGMA table_info("{table.name}")')]

    def _ensure(self, table: Table) -> list[str]:
        """The table's stored columns; a writable store first creates the table and adds missing columns."""
        if table.name not in self._known:
            if self.readonly:
                self._known[table.name] = self._columns(table)
                return self._known[table.name]
            with self._conn:
                self._conn.execute(table.ddl())
                present = set(self._columns(table))
                for col, typ in table.columns.items():
                    if col not in present:  # a newer rlheal added a column: older rows read it as NULL
                        self._conn.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{col}" {_SQL_TYPES[typ]}')
                self._relativize(table)
            self._known[table.name] = self._columns(table)
        return self._known[table.name]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group several `put` calls: all of them land, or none."""
        with self._conn:
            yield self._conn

    def put(self, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace `rows` in one transaction; returns how many were written."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only: cannot write to table {table.name}")
        self._ensure(table)
        encoded = [table.encode(self._translate(table, r, self._stored_path)) for r in rows]
        cols = ", ".join(f'"{c}"' for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        with self._conn:
            self._conn.executemany(f'INSERT OR REPLACE INTO "{table.name}" ({cols}) VALUES ({marks})', encoded)
        return len(encoded)

    def delete(self, table: Table, **where: Any) -> int:
        """Delete the rows of `table` whose columns equal the given values (at least one); returns how many."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only: cannot delete from table {table.name}")
        if not where:
            raise ValueError(f"table {table.name}: delete needs at least one column value")
        self._ensure(table)
        clause, values = self._where(table, where)
        with self._conn:
            return self._conn.execute(f'DELETE FROM "{table.name}" WHERE {clause}', values).rowcount

    def _where(self, table: Table, where: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        bad = set(where) - set(table.columns)
        if bad:
            raise ValueError(f"table {table.name}: unknown columns {sorted(bad)}")
        where = self._translate(table, where, self._stored_path)
        return " AND ".join(f'"{c}" = ?' for c in where), tuple(where.values())

    def rows(self, table: Table, **where: Any) -> list[dict[str, Any]]:
        """Rows of `table` whose columns equal the given values, in insertion order; StoreError for a stored
        value that does not fit its column (naming the row and how to drop it)."""
        stored = self._ensure(table)
        clause, values = self._where(table, where)
        if not stored:
            return []
        present = [c for c in table.columns if c in stored]
        cols = ", ".join(["rowid", *(f'"{c}"' for c in present)])
        sql = f'SELECT {cols} FROM "{table.name}"' + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid"
        out = []
        for rowid, *raw in self._conn.execute(sql, values):
            by_name = dict(zip(present, raw, strict=True))
            try:
                row = table.decode([by_name.get(c) for c in table.columns])
            except ValueError as exc:
                raise StoreError(f"{self.path}: {exc} (rowid {rowid}): the store was changed outside rlheal. Drop "
                                 f'that row (sqlite3 {self.path} \'DELETE FROM "{table.name}" WHERE rowid = {rowid}\') '
                                 "and rerun, which recomputes it") from None
            out.append(self._translate(table, row, self._caller_path))
        return out

    def has(self, table: Table, **key: Any) -> bool:
        """Whether a row with these column values exists (a stage's "already done?" question)."""
        if not self._ensure(table):
            return False
        clause, values = self._where(table, key)
        sql = f'SELECT 1 FROM "{table.name}"' + (f" WHERE {clause}" if clause else "") + " LIMIT 1"
        return self._conn.execute(sql, values).fetchone() is not None

    def tables(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]

    def is_empty(self) -> bool:
        """Whether no table of the store holds a row."""
        return not any(self._conn.execute('SELECT 1 FROM "{}" LIMIT 1'.format(name.replace('"', '""'))).fetchone()
                       for name in self.tables())


def _write_ahead_log(conn: sqlite3.Connection, wait: float = 60.0) -> None:
    """Put the store in WAL mode. Processes that open a new store at the same moment (the ranks of a launched
    run) find it locked while one of them switches its mode, and SQLite's busy timeout does not wait for that:
    wait here, up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing store. A WAL store in a folder this user cannot write cannot get
    its shared-memory file: it is then read as an immutable file (nobody can be writing it there)."""
    if not path.is_file():
        raise StoreError(f"no results store at {path}")
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn
