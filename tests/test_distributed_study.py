"""`rlheal study` under `accelerate launch` on two CPU processes (gloo): the same stored rows as one process on
the same global batch, one line per stage, and a SIGKILL of rank 1 that stops every process at once and
resumes, when the same command runs again, to the rows of one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed_training import ENV, accelerate, assert_same_rows, free_port, launch, run, table

from rlheal.study import STAGES

pytestmark = pytest.mark.slow

STUDY = """model: {model}
tasks: [det]
eval: {{episodes: 4, batch_size: 4, max_new_tokens: 16}}
sft: {{n_train: 32, steps: 4, batch_size: {batch}, warmup_steps: 1, schedule: [0, 2, 4], loss_eval_n: 4,
      max_length: 128, lr: 1.0e-3}}
rl:
  algo: ppo
  starts: [4]
  ppo: {{updates: 1, episodes_per_update: 4, minibatch_size: 4, epochs: 1, max_new_tokens: 16,
         rollout_batch_size: 4, save_every: 1}}
spectral: {{references: [base, ood-peak], k: [0.25]}}
edits: {{modes: [values], top: 0.25}}
"""
TABLES = ("losses", "evals", "rl_updates", "spectral", "spectral_sigma", "alignment")
VOLATILE = ("created", "seconds", "versions")


@pytest.fixture(scope="module")
def study_case(tmp_path_factory):
    """The tiny start; one process's study with an SFT batch of 4 (two processes take 2 each)."""
    from conftest import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("study")
    start = make_tiny_checkpoint(root / "start", seed=1)
    (root / "one.yaml").write_text(STUDY.format(model=start, batch=4))
    (root / "two.yaml").write_text(STUDY.format(model=start, batch=2))
    run([sys.executable, "-m", "rlheal", "study", "--config", "one.yaml", "--out", "one", "--quiet"], root)
    return root


def in_order(rows: list[dict]) -> list[dict]:
    """Rows sorted by their text and integer columns (floats may differ in the last digits)."""
    return sorted(rows, key=lambda r: repr([(k, v) for k, v in r.items() if isinstance(v, str | int)]))


def assert_same_study(root: Path, name: str) -> None:
    for kind in TABLES:
        assert_same_rows(in_order(table(root / "one", kind, VOLATILE)), in_order(table(root / name, kind, VOLATILE)))
    assert sorted(p.name for p in (root / name / "edits").iterdir()) == ["values-top0.25"]
    assert (root / name / "report.html").exists() and not list((root / name).rglob("*.tmp"))


def stage_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("✓")]


def test_study_on_two_processes_equals_one(study_case):
    done = launch("-m", "rlheal", "study", "--config", "two.yaml", "--out", "two", "--quiet", cwd=study_case)
    assert [line.split()[1] for line in stage_lines(done.stderr)] == list(STAGES)  # rank 0 alone reports
    assert done.stdout.count("done in") == 1
    assert_same_study(study_case, "two")


def processes_of(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the workers that `accelerate launch` (torchrun's agent, in its own process) started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_one_rank_stops_all_and_the_same_command_resumes(study_case):
    root, command = study_case, ("-m", "rlheal", "study", "--config", "two.yaml", "--out", "killed", "--quiet")
    launcher = subprocess.Popen(accelerate(*command, port=free_port()), cwd=root, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline, ranks = root / "killed" / "study.log", time.time() + 120, {}
    while time.time() < deadline and launcher.poll() is None:
        ranks = ranks if len(ranks) == 2 else processes_of(launcher)
        if log.exists() and "stage rl" in log.read_text():  # SFT and its evaluation are stored
            break
        time.sleep(0.05)
    assert launcher.poll() is None and len(ranks) == 2, "the study ended before rank 1 could be killed"
    killed = time.time()
    os.kill(ranks[1], signal.SIGKILL)
    _, err = launcher.communicate(timeout=60)
    stopped = time.time() - killed
    assert launcher.returncode != 0 and not alive(ranks[0]), err[-2000:]
    assert stopped < 30, f"the other rank took {stopped:.0f} s to stop"
    done = launch(*command, cwd=root)
    eval_sft = next(line for line in stage_lines(done.stderr) if line.split()[1] == "eval-sft")
    assert "stored before" in eval_sft  # resumed, not redone
    assert_same_study(root, "killed")
