"""`rlheal study` end to end on configs/quick.yaml: every stage, the report, and a real kill + resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlheal.config import load_config
from rlheal.evaluate import EVALS
from rlheal.spectral.alignment import ALIGNMENT
from rlheal.spectral.metrics import SPECTRAL
from rlheal.store import Store
from rlheal.study import run_study
from rlheal.train.ppo import RL_UPDATES
from rlheal.train.sft import LOSSES

QUICK = Path(__file__).parent.parent / "configs" / "quick.yaml"
pytestmark = pytest.mark.slow

_VOLATILE = {"created", "seconds", "versions"}


def _stable(rows, drop=("checkpoint", "parent", "target", "reference", "run_id", "start")):
    """Rows without wall-clock columns and with absolute paths made relative to the run folder."""
    out = []
    for r in rows:
        out.append(tuple(sorted((k, _rel(v) if k in drop else v) for k, v in r.items() if k not in _VOLATILE)))
    return sorted(out, key=repr)


def _rel(value):
    if not isinstance(value, str) or "/" not in value:
        return value
    parts = Path(value).parts
    for anchor in ("sft", "rl", "edits", "base"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor):])
    return Path(value).name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    os.environ["RLHEAL_CACHE"] = str(root / "models")
    os.environ["RLHEAL_SPECTRAL_CACHE"] = str(root / "spectral")
    yield root


@pytest.fixture(scope="module")
def quick_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    report = run_study(load_config(QUICK), out, progress=False)
    return out, report


def peak_row(evals) -> str:
    """The OOD-peak SFT checkpoint, as the study chooses it (selection half, earliest on ties)."""
    from rlheal.report.findings import selection_success

    ood = [r for r in evals if r["stage"] == "sft" and r["split"] == "ood"]
    return max(ood, key=lambda r: (selection_success(r), -r["step"]))["checkpoint"]


def test_every_stage_leaves_its_rows_and_the_report(quick_run):
    out, report = quick_run
    cfg = load_config(QUICK)
    with Store(out) as store:
        evals, losses = store.rows(EVALS), store.rows(LOSSES)
        updates, spectral = store.rows(RL_UPDATES), store.rows(SPECTRAL)
    sft_steps = sorted({r["step"] for r in evals if r["stage"] == "sft"})
    assert sft_steps == [0, 2, 4, 8]
    assert {(r["split"]) for r in evals if r["stage"] == "sft"} == {"id", "ood"}
    assert all(r["n_episodes"] == cfg.eval.episodes for r in evals)
    assert {r["split"] for r in losses} == {"id", "ood"} and len(losses) == 2 * len(sft_steps)
    starts = {r["start"] for r in updates}
    # every start trains the PPO arm and its shuffled-reward control arm, 2 updates each
    assert 1 <= len(starts) and {r["algo"] for r in updates} == {"ppo", "ppo-control"}
    assert len(updates) == 2 * 2 * len(starts) and {len({r["update"] for r in updates})} == {2}
    assert any(r["stage"] == "rl" for r in evals)
    edit_labels = {r["label"] for r in evals if r["stage"] == "edit"}
    peak_is_last = not edit_labels
    assert peak_is_last or len(edit_labels) == 3
    assert {r["reference"] for r in spectral} and all(r["k_label"] == "k=0.25" for r in spectral)
    with Store(out) as store:
        aligned = store.rows(ALIGNMENT)
    rl_targets = {r["checkpoint"] for r in evals if r["stage"] == "rl" and r["parent"] != peak_row(evals)}
    assert {r["target"] for r in aligned} == rl_targets  # every RL checkpoint not started at the peak
    html = report.read_text()
    assert report == out / "report.html" and "data:image/png;base64," in html
    assert (out / "report" / "sft_curves.png").stat().st_size > 10_000
    assert (out / "study.log").read_text().count("stage ") >= 9


def test_rerun_does_nothing_new(quick_run):
    out, _ = quick_run
    with Store(out) as store:
        before = store.rows(EVALS)
    run_study(load_config(QUICK), out, progress=False)
    with Store(out) as store:
        after = store.rows(EVALS)
    assert [r["created"] for r in after] == [r["created"] for r in before]


def test_a_copied_study_folder_is_recognised_as_done(quick_run, tmp_path):
    """The store keeps paths inside the run folder relative, so a copy resumes with nothing to redo."""
    out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    with Store(out) as store:
        before = {t.name: store.rows(t) for t in (EVALS, LOSSES, RL_UPDATES, SPECTRAL)}
    run_study(load_config(QUICK), copy, progress=False)
    with Store(copy) as store:
        after = {t.name: store.rows(t) for t in (EVALS, LOSSES, RL_UPDATES, SPECTRAL)}
    assert [r["created"] for r in after["evals"]] == [r["created"] for r in before["evals"]]
    assert all(len(after[name]) == len(rows) for name, rows in before.items())
    assert all(r["checkpoint"].startswith(str(copy)) for r in after["evals"] if r["stage"] != "base")


def test_one_attempt_study_keeps_to_its_eval_set(cache, tmp_path):
    """With eval.max_attempts set, every row the study writes (RL checkpoints included) uses that limit; rows
    of another eval set added later (e.g. by `rlheal eval`) do not disturb the OOD peak on a rerun."""
    out = tmp_path / "one-attempt"
    cfg = load_config(QUICK, overrides={"eval.max_attempts": 1})
    run_study(cfg, out, progress=False, samples=True, report_to=["tensorboard"])
    with Store(out) as store:
        rows = store.rows(EVALS)
        updates = store.rows(RL_UPDATES)
        assert {r["eval_set"].split("-")[3] for r in rows} == {"a1"}
        assert {r["stage"] for r in rows} >= {"sft", "rl"}
    # --log-samples: one line per evaluated episode and per RL episode; --report-to: TensorBoard offline
    evaluated = [json.loads(line) for line in (out / "samples" / "eval.jsonl").read_text().splitlines()]
    assert len(evaluated) == sum(r["n_episodes"] for r in rows)
    played = [json.loads(line) for line in (out / "samples" / "rl.jsonl").read_text().splitlines()]
    assert len(played) == sum(u["n_episodes"] for u in updates) and {p["update"] for p in played} == {1, 2}
    tracked = {p.parent.relative_to(out / "tracking").as_posix() for p in (out / "tracking").rglob("events.*")}
    assert {"sft", "eval/sft"} <= tracked and any(t.startswith("rl/") for t in tracked), tracked
    with Store(out) as store:
        foreign = [{**r, "eval_set": "seed0-n12-a9-compact", "success_rate": 1.0}
                   for r in store.rows(EVALS, stage="sft", split="ood")]
        store.put(EVALS, foreign)
    run_study(cfg, out, progress=False)  # resumes: nothing to do, and the peak is read from its own eval set
    with Store(out) as store:
        assert len(store.rows(EVALS)) == len(rows) + len(foreign)


def test_killed_study_resumes_to_the_same_results(quick_run, cache, tmp_path):
    """SIGKILL the study in the middle of RL, run the same command again, compare with the uninterrupted run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlheal", "study", "--config", str(QUICK), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 240
    log = out / "study.log"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "stage rl" in log.read_text():
            time.sleep(1.0)  # into the RL stage
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(out) as store:
        assert store.rows(EVALS)  # the SFT evaluations survived the kill
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reference, _ = quick_run
    with Store(out) as a, Store(reference) as b:
        for table in (EVALS, LOSSES, RL_UPDATES, SPECTRAL):
            assert _stable(a.rows(table)) == _stable(b.rows(table)), table.name


def test_a_resumed_study_prints_one_line_per_stage_and_the_summary(quick_run, capsys):
    """Nothing left to do: nine stage lines with their times, no empty bars, the findings and the report."""
    from rlheal.cli import main

    out, report = quick_run
    for flags, stage_lines in (([], 9), (["--quiet"], 9)):
        with pytest.raises(SystemExit) as done:
            main(["study", "--config", str(QUICK), "--out", str(out), *flags])
        printed = capsys.readouterr()
        assert done.value.code == 0, printed.err
        assert [line.split()[1] for line in printed.err.splitlines() if line.startswith("✓")] == \
            ["base", "sft", "eval-sft", "rl", "eval-rl", "spectrum", "edits", "eval-edits", "report"]
        assert len(printed.err.splitlines()) == 1 + stage_lines and "0/0" not in printed.err
        assert printed.out.splitlines()[-1].endswith(f"report at {report}")
        assert printed.out.startswith("gp24: OOD success ")


def test_results_and_report_commands(quick_run):
    from typer.testing import CliRunner

    from rlheal.cli import app

    out, report = quick_run
    runner = CliRunner()
    shown = runner.invoke(app, ["results", str(out)], terminal_width=250)
    assert shown.exit_code == 0, shown.output
    assert "before → after" in shown.output and "sft-8" in shown.output
    report.unlink()
    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0 and report.exists()
    missing = runner.invoke(app, ["report", str(out / "nope")])
    assert missing.exit_code == 1 and "no results store" in missing.output
