"""The ledger of RL update rows: what it keeps, what it skips, what it refuses, what it puts back."""

from __future__ import annotations

import json
import logging

import pytest

from rlheal.models.checkpoint import Manifest, write_manifest
from rlheal.store import Store
from rlheal.train.ledger import LEDGER, LedgerError, ledger_rows, record_update, restore_updates
from rlheal.train.ppo import RL_UPDATES


def row(out, update: int, reward: float) -> dict:
    return {"run_id": str(out.resolve()), "update": update, "start": "/elsewhere/sft/step-000008", "algo": "ppo",
            "task": "gp24", "mean_reward": reward, "adv_hist": {"edges": [0.0, 1.0], "counts": [2]}, "no_signal": False}


def test_rows_missing_from_the_store_come_back_from_the_ledger(tmp_path, caplog):
    run = tmp_path / "run"
    out, start = run / "rl" / "sft-8-ppo", run / "sft" / "step-000008"
    with Store(run) as store:
        for update, reward in ((1, 0.1), (2, 0.2), (2, 0.25), (3, 0.3)):  # update 2 redone after a resume
            record_update(store, out, row(out, update, reward))
    with (out / LEDGER).open("a") as fh:
        fh.write('{"update": 4, "mean_rew')  # a kill in the middle of a line
    assert sorted(ledger_rows(out)) == [1, 2, 3] and ledger_rows(out)[2]["mean_reward"] == 0.25
    assert all("run_id" not in json.loads(line) for line in (out / LEDGER).read_text().splitlines()[:4])
    for step in (2, 3):
        write_manifest(out / f"step-{step:06d}", Manifest(stage="rl", step=step))
    (run / "results.sqlite").unlink()  # the store is lost
    with Store(run) as store:
        assert restore_updates(store, out, start) == 3
        rows = store.rows(RL_UPDATES)
        assert [(r["update"], r["mean_reward"], r["run_id"], r["start"]) for r in rows] == [
            (u, m, str(out.resolve()), str(start.resolve())) for u, m in ((1, 0.1), (2, 0.25), (3, 0.3))]
        assert restore_updates(store, out, start) == 0
        store.delete(RL_UPDATES, run_id=str(out.resolve()), update=1)
        lines = (out / LEDGER).read_text().splitlines()[:4]  # whole lines only
        (out / LEDGER).write_text("".join(f"{line}\n" for line in lines if json.loads(line)["update"] != 1))
        with caplog.at_level(logging.WARNING, logger="rlheal.ledger"):
            restore_updates(store, out, start)
        assert "no row of updates [1]" in caplog.text


def test_a_ledger_line_that_does_not_fit_is_refused_by_name(tmp_path):
    out = tmp_path / "rl" / "x"
    write_manifest(out / "step-000001", Manifest(stage="rl", step=1))
    (out / LEDGER).write_text(json.dumps({"update": 1, "algo": "ppo", "mean_reward": "high"}) + "\n")
    with Store(tmp_path) as store, pytest.raises(LedgerError, match=r"rl_updates.jsonl: .*mean_reward holds 'high'"):
        restore_updates(store, out, tmp_path / "start")
