"""One writer per run folder: an advisory lock that names its holder and dies with it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlheal.lock import RunLockedError, run_lock

HOLD = ("import sys\nfrom pathlib import Path\nfrom rlheal.lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.readline()\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run until the test ends (or kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait()


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path, holder):
    with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on {socket.gethostname()}, started 2\d\d\d-"):
        with run_lock(tmp_path / "run"):
            pass
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait()
    with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):  # free again; one process may nest it
        pass


def test_the_lock_of_a_killed_holder_is_free(tmp_path, holder):
    holder.kill()
    holder.wait()
    with run_lock(tmp_path / "run"):
        pass


def test_a_second_study_on_one_run_folder_stops_before_any_work(tmp_path, holder, monkeypatch):
    from rlheal.cli import app

    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path / "cache"))
    quick = Path(__file__).parent.parent / "configs" / "quick.yaml"
    result = CliRunner().invoke(app, ["study", "--config", str(quick), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1 and f"pid {holder.pid}" in result.output, result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".rlheal.lock"]
    assert not (tmp_path / "cache").exists()
