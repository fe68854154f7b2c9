"""The RL update rows of a run, kept beside its checkpoints as well as in the store.

`RUN/rl/<start>-<algo>/rl_updates.jsonl` receives each `rl_updates` row as it is stored (one JSON line,
flushed and synced, without the run's paths). When the store was lost or moved aside, the checkpoints of a
finished start are not trained again, so `restore_updates` puts their rows back from this file: every row
of an update up to the last saved checkpoint that the store lacks. A line cut short by a kill is skipped; a
later row of the same update (a resumed run redid it) replaces an earlier one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rlheal.store import Store

LEDGER = "rl_updates.jsonl"
_PATHS = ("run_id", "start")  # filled in from where the run is when its rows are restored
log = logging.getLogger("rlheal.ledger")


class LedgerError(ValueError):
    """A ledger line that does not fit the `rl_updates` table; the message names the file and what to do."""


def record_update(store: Store | None, out: str | Path, row: dict[str, Any]) -> None:
    """Store `row` (table `rl_updates`, when there is a store) and append it to OUT/rl_updates.jsonl."""
    from rlheal.train.ppo import RL_UPDATES

    if store is not None:
        store.put(RL_UPDATES, [row])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / LEDGER).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({k: v for k, v in row.items() if k not in _PATHS}, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def ledger_rows(out: str | Path) -> dict[int, dict[str, Any]]:
    """The last row recorded for each update in OUT's ledger ({} without one); lines that are not whole JSON
    objects with an integer update (a write cut short) are skipped."""
    path = Path(out) / LEDGER
    if not path.exists():
        return {}
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("update"), int) and not isinstance(row["update"], bool):
            rows[row["update"]] = row
    return rows


def restore_updates(store: Store, out: str | Path, start: str | Path) -> int:
    """Put back into `store` the ledger rows of OUT (RL from `start`) that it lacks, for the updates up to
    OUT's last checkpoint; returns how many. LedgerError for a row that does not fit; a warning names the
    updates neither holds (a run trained before ledgers were kept)."""
    from rlheal.models.checkpoint import read_manifest
    from rlheal.train.ppo import RL_UPDATES, rl_checkpoints

    out = Path(out).resolve()
    last = max((read_manifest(c).step for c in rl_checkpoints(out)), default=0)
    run_id, begin = str(out), str(Path(start).resolve())
    stored = {r["update"] for r in store.rows(RL_UPDATES, run_id=run_id)}
    kept = {u: row for u, row in ledger_rows(out).items() if u <= last and u not in stored}
    try:
        store.put(RL_UPDATES, [{**row, "run_id": run_id, "start": begin} for _, row in sorted(kept.items())])
    except ValueError as exc:
        raise LedgerError(f"{out / LEDGER}: {exc}; fix or delete that line and rerun") from None
    if lost := sorted(set(range(1, last + 1)) - stored - set(kept)):
        log.warning("%s: no row of updates %s in the store or its ledger; move that folder aside and rerun to "
                    "train it again", out, lost)
    return len(kept)
