"""SFT, PPO and GRPO under `accelerate launch` on two CPU processes (gloo), and on two "machines" of one host,
checked against one process on the same global batch: the same stored rows, weights equal to a tolerance."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlheal.distributed import free_port

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
# Tolerances: SFT's weights agree to ~1e-8 (they move by 1e-3); in RL, Adam at lr 1e-2 turns summation-order
# differences of the all-reduced gradients into weight differences of ~1e-4 (they move by ~0.07); rows agree to
# 1e-4 relative (the second update already starts from weights that differ by that rounding)
SFT_ATOL, RL_ATOL, ROW_RTOL = 1e-6, 5e-4, 1e-4


def accelerate(*args: str, processes: int = 2, machines: int = 1, rank: int = 0, port: int) -> list[str]:
    """The `accelerate launch` command line of `args` on CPU processes (torchrun underneath, gloo)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", str(machines), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", *args]


def run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def launch(*args: str, cwd: Path, machines: int = 1, tries: int = 3) -> subprocess.CompletedProcess:
    """Run `accelerate launch ... args` on two CPU processes as `machines` launchers of this host and return
    machine 0's result, asserting success; a launch whose port another process took before the launcher bound
    it (EADDRINUSE) is tried again on another port."""
    for attempt in range(tries):
        port = free_port()
        launchers = [subprocess.Popen(accelerate(*args, machines=machines, rank=rank, port=port), cwd=cwd, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for rank in range(machines)]
        done = []
        for launcher in launchers:
            out, err = launcher.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err))
            if launcher.returncode != 0:  # the other machines would wait for it
                for other in launchers:
                    if other.poll() is None:
                        other.kill()
        if all(d.returncode == 0 for d in done):
            return done[0]
        if attempt + 1 == tries or not any("EADDRINUSE" in d.stderr for d in done):
            break
    raise AssertionError(next(d for d in done if d.returncode != 0).stderr[-4000:])


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path, start: Path, atol: float) -> None:
    wa, wb, w0 = weights(a), weights(b), weights(start)
    moved = max(float((wa[k] - w0[k]).abs().max()) for k in wa)
    assert moved > 50 * atol  # training moved the weights far more than the tolerance
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < atol


def table(run_folder: Path, name: str, drop: tuple[str, ...] = ()) -> list[dict]:
    with sqlite3.connect(run_folder / "results.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute(f"SELECT * FROM {name}")]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def close(a, b) -> bool:
    """Equal, floats to ROW_RTOL, inside lists, dicts and JSON text (advantage histograms, σ spectra)."""
    if isinstance(a, str) and a.startswith(("{", "[")) and isinstance(b, str):
        a, b = json.loads(a), json.loads(b)
    if isinstance(a, float) and isinstance(b, float):
        return b == pytest.approx(a, rel=ROW_RTOL, abs=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert close(ra[key], rb[key]), (key, ra[key], rb[key])


# ------------------------------------------------------------------------------------------------------------
# SFT: TRL's SFTTrainer; the global batch is batch_size x processes (x grad_accum)
# ------------------------------------------------------------------------------------------------------------
SFT_CONFIG = """sft:
  model: {model}
  tasks: [det]
  n_train: 32
  steps: 4
  batch_size: {batch}
  warmup_steps: 1
  schedule: [0, 2, 4]
  loss_eval_n: 4
  max_length: 128
  lr: 1.0e-3
"""


@pytest.fixture(scope="module")
def sft_case(tmp_path_factory, make_tiny_checkpoint_module):
    """The tiny start, and one process's SFT run with a batch of 4."""
    root = tmp_path_factory.mktemp("sft")
    start = make_tiny_checkpoint_module(root / "start", seed=1)
    (root / "one.yaml").write_text(SFT_CONFIG.format(model=start, batch=4))
    (root / "two.yaml").write_text(SFT_CONFIG.format(model=start, batch=2))
    run([sys.executable, "-m", "rlheal", "sft", "--config", "one.yaml", "--out", "one", "--quiet"], root)
    return root, start


@pytest.fixture(scope="module")
def make_tiny_checkpoint_module():
    from conftest import make_tiny_checkpoint

    return make_tiny_checkpoint


def check_sft_like_one_process(root: Path, start: Path, run_name: str) -> None:
    for step in (2, 4):
        folder = f"sft/step-{step:06d}"
        assert_same_weights(root / "one" / folder, root / run_name / folder, start, SFT_ATOL)
    assert_same_rows(table(root / "one", "losses", drop=("checkpoint", "created")),
                     table(root / run_name, "losses", drop=("checkpoint", "created")))
    assert json.loads((root / run_name / "sft" / "step-000004" / "rlheal_manifest.json").read_text())["step"] == 4


@pytest.mark.slow
def test_sft_on_two_processes_equals_one(sft_case):
    root, start = sft_case
    launch("-m", "rlheal", "sft", "--config", "two.yaml", "--out", "two", "--quiet", cwd=root)
    check_sft_like_one_process(root, start, "two")
    assert not list((root / "two").rglob("*.tmp"))  # rank 0 alone wrote: no half-written leftovers


@pytest.mark.slow
def test_sft_on_two_machines_of_one_host_equals_one_process(sft_case):
    """`--num_machines 2 --machine_rank 0|1`: the multi-node path (static rendezvous at rank 0's address)."""
    root, start = sft_case
    launch("-m", "rlheal", "sft", "--config", "two.yaml", "--out", "nodes", "--quiet", cwd=root, machines=2)
    check_sft_like_one_process(root, start, "nodes")


# ------------------------------------------------------------------------------------------------------------
# PPO (rlheal's loop) and GRPO (TRL) on the toy digit task, where every update has a learning signal
# ------------------------------------------------------------------------------------------------------------
RL_WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_ppo import DigitTask
from rlheal.distributed import ensure_process_group
from rlheal.store import Store

algo, start, out = sys.argv[1:]
ensure_process_group()
if algo == "ppo":
    from test_ppo import TOY
    from rlheal.train.ppo import PPOConfig as Config, train_ppo as train
    config = Config(**{{**TOY, "episodes_per_update": 8}}, updates=2, save_every=1)
else:
    from test_grpo import TOY
    from rlheal.train.grpo import GRPOConfig as Config, train_grpo as train
    config = Config(**{{**TOY, "num_iterations": 2}}, updates=2, save_every=1)
with Store(out) as store:
    train(start, out + "/rl", config, task=DigitTask(), store=store, show_progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_on_two_processes_equals_one(tmp_path, make_tiny_checkpoint, algo):
    """Each process plays its share of every update's episodes (the same episodes as one process: sampling is
    keyed by the episode's place in the whole batch); the updates are those of one process."""
    start = make_tiny_checkpoint(tmp_path / "start", seed=1)
    worker = tmp_path / "worker.py"
    worker.write_text(RL_WORKER.format(tests=str(TESTS)))
    run([sys.executable, str(worker), algo, str(start), str(tmp_path / "one")], tmp_path)
    launch(str(worker), algo, str(start), str(tmp_path / "two"), cwd=tmp_path)
    for step in (1, 2):
        folder = f"rl/step-{step:06d}"
        assert_same_weights(tmp_path / "one" / folder, tmp_path / "two" / folder, start, RL_ATOL)
    drop = ("run_id", "seconds", "created")
    one, two = table(tmp_path / "one", "rl_updates", drop), table(tmp_path / "two", "rl_updates", drop)
    assert [r["n_episodes"] for r in two] == ([8, 8] if algo == "ppo" else [32, 32])
    assert_same_rows(one, two)


LEAVE_WORKER = """
import atexit, os
import torch.distributed as dist
def say(line):  # one write per line: the two processes share the launcher's pipe
    os.write(1, (line + "\\n").encode())
atexit.register(lambda: say(f"group alive at exit: {dist.is_initialized()}"))  # runs after rlheal's
from rlheal.distributed import ensure_process_group
rank, world = ensure_process_group()
say(f"joined {rank} {world}")
"""


@pytest.mark.slow
def test_a_launched_process_leaves_its_group_before_the_interpreter_exits(tmp_path):
    """Left to interpreter finalisation, gloo's threads sometimes abort a finished process (SIGABRT), and the
    launcher reports a failure; rlheal destroys the group at exit (atexit handlers run last-registered first,
    so the worker's own handler, registered before, sees the group gone)."""
    worker = tmp_path / "leave.py"
    worker.write_text(LEAVE_WORKER)
    done = launch(str(worker), cwd=tmp_path)
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("joined")) == ["joined 0 2",
                                                                                               "joined 1 2"]
    assert done.stdout.count("group alive at exit: False") == 2 and "alive at exit: True" not in done.stdout


@pytest.mark.slow
def test_fsdp_launch_without_a_gpu_is_refused_in_one_line(sft_case):
    """Accelerate turns on FSDP only for GPU-like devices: on CPU the shipped FSDP2 config would train with
    plain DDP (and bf16 autocast), so rlheal refuses it rather than pretend to shard."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: FSDP runs")
    root, _ = sft_case
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(TESTS.parent / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
                           "--main_process_port", str(free_port()), "-m", "rlheal", "sft", "--config", "two.yaml",
                           "--out", "fsdp", "--quiet"], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "error: FSDP was asked for on a machine without a GPU" in done.stderr
    assert not (root / "fsdp").exists()
