"""Stores and run folders that are empty, read-only or hold crafted strings: read, shown as text, never obeyed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.evaluate import EVALS
from rlheal.report import build_report
from rlheal.store import Store
from rlheal.train.ppo import RL_UPDATES


def cli(*args) -> tuple[int, str]:
    """(exit code, output) of an rlheal command; an uncaught exception is appended as a traceback would be."""
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=250)
    crash = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, result.output + (f"\nTraceback: {result.exception!r}" if crash else "")


def eval_row(run: Path, step: int, split: str, success: float, *, stage="sft", label=None, task="gp24",
             parent=None, checkpoint=None) -> dict:
    n = 20
    return {"checkpoint": str(checkpoint or run / stage / f"step-{step:06d}"), "label": label or f"{stage}-{step}",
            "stage": stage, "step": step, "parent": parent, "task": task, "split": split,
            "eval_set": "seed0-n20-a5-compact", "n_episodes": n, "n_solved": round(success * n),
            "success_rate": success, "ci_low": max(0.0, success - 0.1), "ci_high": min(1.0, success + 0.1),
            "format_error_rate": 0.0, "mean_attempts": 1.0, "first_attempt_acc": success, "seed": 0,
            "solved_at": [int(i < round(success * n)) for i in range(n)]}


def make_run(run: Path, *, task="gp24", rl_label="sft-2", edit_label="edit-vectors-top0.2") -> Path:
    """A run folder whose store holds an SFT curve, one RL start with its updates, and one edit."""
    rows = [eval_row(run, s, split, v, task=task) for s, (i, o) in {0: (0.1, 0.2), 2: (0.5, 0.4), 4: (0.9, 0.1)}.items()
            for split, v in (("id", i), ("ood", o))]
    start = run / "sft" / "step-000002"
    rows += [eval_row(run, 1, split, 0.5, stage="rl", label=f"{rl_label}+ppo-1", task=task, parent=str(start),
                      checkpoint=run / "rl" / "sft-2-ppo" / "step-000001") for split in ("id", "ood")]
    rows += [eval_row(run, 4, split, 0.3, stage="edit", label=edit_label, task=task,
                      parent=str(run / "sft" / "step-000004"), checkpoint=run / "edits" / "e") for split in ("id", "ood")]
    with Store(run) as store:
        store.put(EVALS, rows)
        store.put(RL_UPDATES, [{"run_id": str(run / "rl" / "sft-2-ppo"), "update": 1, "start": str(start),
                                "algo": "ppo", "task": task, "mean_reward": 0.5, "adv_skew": 0.1,
                                "adv_hist": {"edges": [-1.0, 0.0, 1.0], "counts": [3, 5]}, "no_signal": False}])
    return run


def test_report_of_an_empty_store_keeps_the_report_there(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").write_text("<p>the good report</p>")
    (run / "results.sqlite").write_bytes(b"")
    code, output = cli("report", run)
    assert code == 1 and "holds no results" in output
    assert (run / "report.html").read_text() == "<p>the good report</p>"
    assert (run / "results.sqlite").read_bytes() == b""


def test_a_value_of_the_wrong_type_in_a_store_is_named_not_a_traceback(tmp_path):
    runs = [make_run(tmp_path / f"run{i}") for i in (0, 1)]
    raw = sqlite3.connect(runs[0] / "results.sqlite")
    raw.execute("UPDATE evals SET step = 'abc' WHERE step = 4")
    raw.commit()
    raw.close()
    for command in (("report", runs[0]), ("compare", *runs), ("results", runs[0])):
        code, output = cli(*command)
        assert code in (1, 2) and "'abc', not a value of type int" in output and "DELETE FROM" in output, output
        assert "Traceback" not in output


HOSTILE = ["$\\frac{x$", "[/bold]closing[red", "$x^{$ [/]"]


@pytest.mark.parametrize("text", HOSTILE)
def test_mathtext_and_markup_in_stored_strings_are_shown_as_text(tmp_path, text):
    run = make_run(tmp_path / "run", task=text, rl_label=text.replace("/", "|"), edit_label=f"edit {text}")
    report = build_report(run)
    assert "&#x27;" not in text and text.replace("&", "&amp;").replace("<", "&lt;") in report.read_text()
    code, output = cli("results", run)
    assert code == 0 and text in output, output  # the table shows the text itself


def test_compare_writes_figures_only_inside_their_folder(tmp_path):
    runs = [make_run(tmp_path / "runs" / f"seed{i}", task="../../../escaped") for i in (0, 1)]
    figures = tmp_path / "out" / "figures"
    code, output = cli("compare", *runs, "--figures", figures)
    assert code == 1 and "not a plain file or folder name" in output
    assert not list(tmp_path.rglob("*.png"))


def _as_another_user(fn: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """fn() as a user who cannot write what it does not own: run as is, or (as root, whom permissions do not
    stop) in a forked child that has become `nobody`."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, send the result, leave without cleanup handlers
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            payload = json.dumps(fn())
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            payload = json.dumps([99, repr(exc)])
        os.write(write, payload.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(data))


@pytest.fixture
def shared_tmp():
    """A folder other users may enter (tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="rlheal-ro-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_a_read_only_run_folder_is_read_by_results_and_report(shared_tmp):
    run = make_run(shared_tmp / "run")
    writable = cli("results", run, "--format", "json")
    assert writable[0] == 0
    build_report(run)  # loads what report needs before the folder turns read-only
    outside = shared_tmp / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for path in [*run.rglob("*"), run]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    assert _as_another_user(lambda: cli("results", run, "--format", "json")) == writable
    code, output = _as_another_user(lambda: cli("report", run))
    assert code == 1 and "cannot write" in output and "--out" in output, output
    code, output = _as_another_user(lambda: cli("report", run, "--out", outside / "report.html"))
    assert code == 0, output
    assert "RL from sft-2" in (outside / "report.html").read_text()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
