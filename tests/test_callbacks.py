"""RlhealCallback: evaluation + rotation at every save, the OOD peak alarm, and the shipped TRL example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlheal.callbacks import OODPeakWarning, RlhealCallback, ood_alarm
from rlheal.evaluate import EVALS
from rlheal.rollout import ScriptedBackend
from rlheal.spectral import SPECTRAL
from rlheal.store import Store

EXAMPLE = Path(__file__).parent.parent / "examples" / "trl_sft_callback.py"


def _row(rate, step, task="echo"):
    return {"success_rate": rate, "step": step, "checkpoint": f"ckpt-{step}", "task": task}


def test_alarm_fires_at_the_set_drop_below_the_best():
    assert ood_alarm(None, _row(0.1, 2), 0.05) is None  # nothing to compare with yet
    assert ood_alarm(_row(0.50, 1), _row(0.46, 2), 0.05) is None
    message = ood_alarm(_row(0.50, 1), _row(0.45, 2), 0.05)  # exactly the drop
    assert message and "0.450 at step 2" in message and "best 0.500 (step 1, ckpt-1)" in message
    assert ood_alarm(_row(0.50, 1), _row(0.60, 2), 0.05) is None


def _echo_script(wrong_ood: bool):
    """Answers the echo task: right, except OOD (numbers >= 1000) answers when `wrong_ood`."""
    def answer(messages):
        number = re.search(r"\d+", messages[0]["content"]).group()
        return "0" if wrong_ood and int(number) >= 1000 else number
    return ScriptedBackend(answer)


def _trainer_state(step, main=True):
    return SimpleNamespace(global_step=step, is_world_process_zero=main)


def test_each_save_is_evaluated_and_compared_and_an_ood_drop_raises_the_alarm(
        tmp_path, make_tiny_checkpoint, echo_task, caplog):
    out = tmp_path / "trainer"
    start = make_tiny_checkpoint(tmp_path / "start", seed=0)
    for step, seed in ((2, 1), (4, 2), (6, 3)):  # what a trainer writes at its saves
        make_tiny_checkpoint(out / f"checkpoint-{step}", seed=seed, step=step)
    scripted = {"checkpoint-4": True}  # OOD collapses at step 4 only
    callback = RlhealCallback(tmp_path / "run", tasks=[echo_task], episodes=4, k=0.25, alarm_drop=0.5,
                              load_backend=lambda folder: _echo_script(scripted.get(Path(folder).name, False)),
                              device="cpu")
    args = SimpleNamespace(output_dir=str(out))
    model = SimpleNamespace(name_or_path=str(start))
    callback.on_train_begin(args, _trainer_state(0), None, model=model)
    callback.on_save(args, _trainer_state(2), None)
    assert not callback.alarms
    with pytest.warns(OODPeakWarning, match="OOD success 0.000 at step 4"):
        callback.on_save(args, _trainer_state(4), None)
    assert "OOD peak alarm" in caplog.text
    callback.on_save(args, _trainer_state(6), None)  # recovered: no new alarm
    assert len(callback.alarms) == 1 and "best 1.000 (step 0" in callback.alarms[0]

    with Store(tmp_path / "run") as store:
        evals = store.rows(EVALS)
        spectral = store.rows(SPECTRAL)
    assert [(Path(r["checkpoint"]).name, r["split"]) for r in evals] == [
        (name, split) for name in ("start", "checkpoint-2", "checkpoint-4", "checkpoint-6") for split in ("id", "ood")]
    assert [r["success_rate"] for r in evals if r["split"] == "ood"] == [1.0, 1.0, 0.0, 1.0]
    assert {r["stage"] for r in evals if "checkpoint" in r["checkpoint"]} == {"sft"}  # the manifest's stage
    per_save = {}
    for r in spectral:
        assert r["reference"] == str(start.resolve()) and r["k_label"] == "k=0.25"
        per_save[Path(r["target"]).name] = per_save.get(Path(r["target"]).name, 0) + 1
    assert per_save == {"checkpoint-2": 14, "checkpoint-4": 14, "checkpoint-6": 14}  # 2 layers x 7 matrices


def test_only_the_main_process_works(tmp_path, echo_task):
    callback = RlhealCallback(tmp_path / "run", tasks=[echo_task], load_backend=lambda f: _echo_script(False))
    args = SimpleNamespace(output_dir=str(tmp_path / "nowhere"))
    callback.on_train_begin(args, _trainer_state(0, main=False), None, model=None)
    callback.on_save(args, _trainer_state(2, main=False), None)
    assert not (tmp_path / "run").exists()


def test_a_model_not_loaded_from_a_folder_is_copied_as_the_start(tmp_path, make_tiny_checkpoint, echo_task):
    from rlheal.models.checkpoint import load_model

    model, tokenizer = load_model(make_tiny_checkpoint(tmp_path / "src"))
    model.name_or_path = ""  # as if built from a config
    callback = RlhealCallback(tmp_path / "run", tasks=[echo_task], episodes=2,
                              load_backend=lambda f: _echo_script(False))
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), _trainer_state(0), None, model=model,
                            processing_class=tokenizer)
    assert callback.start == tmp_path / "run" / "start" and (callback.start / "config.json").exists()
    with pytest.raises(ValueError, match="must include 'ood'"):
        RlhealCallback(tmp_path, splits=("id",))


@pytest.mark.slow
def test_the_trl_example_runs(tmp_path, make_tiny_checkpoint):
    """examples/trl_sft_callback.py with a tiny chat model: TRL SFTTrainer saves at steps 1 and 2, each is
    evaluated (gp24, paper profile) and compared with the start."""
    model = make_tiny_checkpoint(tmp_path / "tiny")
    env = {**os.environ, "MODEL": str(model), "OUT": str(tmp_path / "run"), "STEPS": "2", "EPISODES": "1",
           "MAX_NEW_TOKENS": "2"}
    done = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "run") as store:
        evals = store.rows(EVALS)
        spectral = store.rows(SPECTRAL)
    assert sorted({Path(r["checkpoint"]).name for r in evals}) == ["checkpoint-1", "checkpoint-2", "tiny"]
    assert {(r["task"], r["eval_set"]) for r in evals} == {("gp24", "heldout-seed0-n1-a5-paper-greedy-m2")}
    assert {r["stage"] for r in evals if "checkpoint-" in r["checkpoint"]} == {"external"}
    assert sorted({Path(r["target"]).name for r in spectral}) == ["checkpoint-1", "checkpoint-2"]
    assert "results in" in done.stdout

