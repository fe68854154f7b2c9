"""Run folders a team can trust, end to end on configs/quick.yaml: moved, refilled, re-based and repaired."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from rlheal.config import load_config
from rlheal.evaluate import EVALS
from rlheal.models.checkpoint import find_damage, weights_sha256
from rlheal.spectral.metrics import SPECTRAL
from rlheal.store import Store
from rlheal.study import run_study
from rlheal.train.ppo import RL_UPDATES
from rlheal.train.sft import LOSSES
from rlheal.train.sweep import rl_summary

QUICK = Path(__file__).parent.parent / "configs" / "quick.yaml"
TABLES = (EVALS, LOSSES, RL_UPDATES, SPECTRAL)
pytestmark = pytest.mark.slow


def stable(rows, run: Path):
    """Rows without wall-clock columns, their paths relative to `run`: comparable between run folders."""
    def rel(value):
        return str(Path(value).relative_to(run)) if isinstance(value, str) and value.startswith(str(run)) else value
    return sorted((tuple(sorted((k, rel(v)) for k, v in r.items() if k not in ("created", "seconds", "versions")))
                   for r in rows), key=repr)


def tables(run: Path) -> dict[str, list]:
    with Store(run, readonly=True) as store:
        return {t.name: stable(store.rows(t), run.resolve()) for t in TABLES}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("RLHEAL_CACHE", str(root / "models"))
        mp.setenv("RLHEAL_SPECTRAL_CACHE", str(root / "spectral"))
        yield mp


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    run_study(load_config(QUICK), out, progress=False)
    return out


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))


def test_a_run_folder_moved_after_a_kill_during_rl_keeps_its_lineage(finished, copy, tmp_path):
    """The kill came after each start's first RL checkpoint, before the RL evaluations; then the folder moved."""
    with sqlite3.connect(copy / "results.sqlite") as raw:
        raw.execute("DELETE FROM evals WHERE stage = 'rl'")
        raw.execute('DELETE FROM rl_updates WHERE "update" = 2')
    for last in copy.glob("rl/*/step-000002"):
        shutil.rmtree(last)
    moved = Path(shutil.move(copy, tmp_path / "elsewhere" / "run"))
    run_study(load_config(QUICK), moved, progress=False)
    with Store(finished, readonly=True) as a, Store(moved, readonly=True) as b:
        before, after = rl_summary(a), rl_summary(b)
    assert [(r["start_label"], r["rl_step"]) for r in after] == [(r["start_label"], r["rl_step"]) for r in before]
    assert all(r["start"].startswith(str(moved)) and r["ood_before"] is not None for r in after)


def test_a_store_moved_aside_is_refilled_rl_updates_included(finished, copy):
    (copy / "results.sqlite").rename(copy / "results.sqlite.corrupt")
    run_study(load_config(QUICK), copy, progress=False)
    assert tables(copy) == tables(finished)
    assert "RL from sft-" in (copy / "report.html").read_text()


def test_a_run_resumes_with_its_base_in_another_cache(finished, copy, cache, tmp_path):
    first = os.environ["RLHEAL_CACHE"]
    cache.setenv("RLHEAL_CACHE", str(tmp_path / "another-cache"))
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("sft/step-*/model.safetensors")}
    try:
        run_study(load_config(QUICK), copy, progress=False)
    finally:
        cache.setenv("RLHEAL_CACHE", first)
    assert {p: p.stat().st_mtime_ns for p in copy.glob("sft/step-*/model.safetensors")} == stamps  # nothing retrained
    assert tables(copy) == tables(finished)


def test_damaged_weights_are_found_and_made_again(finished, copy):
    sft, rl = copy / "sft" / "step-000004", sorted(copy.glob("rl/*/step-000002"))[0]
    edits = sorted(p for p in copy.glob("edits/*") if p.is_dir())
    (sft / "model.safetensors").write_bytes((sft / "model.safetensors").read_bytes()[:5000])  # truncated
    data = (rl / "model.safetensors").read_bytes()
    (rl / "model.safetensors").write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])  # one bit, same size
    if edits:
        (edits[0] / "model.safetensors").unlink()  # deleted
    run_study(load_config(QUICK), copy, progress=False)
    for folder in (sft, *edits[:1]):
        assert weights_sha256(folder) == weights_sha256(finished / folder.relative_to(copy))
    assert all(find_damage(p) is None for p in (sft, rl, *edits))
    with Store(copy, readonly=True) as store:
        assert len(store.rows(RL_UPDATES, run_id=str(rl.parent.resolve()))) == 2
    with Store(finished, readonly=True) as store:
        sft_rows = store.rows(EVALS, checkpoint=str((finished / "sft" / "step-000004").resolve()))
    with Store(copy, readonly=True) as store:
        redone = store.rows(EVALS, checkpoint=str(sft.resolve()))
    assert stable(redone, copy.resolve()) == stable(sft_rows, finished.resolve())
    assert [r["created"] for r in redone] != [r["created"] for r in sft_rows]  # evaluated again, same results


def test_stale_temporaries_of_killed_writes_are_cleared_at_start(copy):
    partial = copy / "sft" / ".step-000008.k2j3h4g5.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x" * 1000)
    (copy / ".report.html.abcd_123.tmp").write_text("half")
    sqlite3.connect(copy / "results.sqlite").close()
    run_study(load_config(QUICK), copy, progress=False)
    assert not partial.exists() and not (copy / ".report.html.abcd_123.tmp").exists()
