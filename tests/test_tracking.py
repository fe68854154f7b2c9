"""Trackers: off by default, TensorBoard offline under RUN/tracking/, TRL's trainers through `report_to`, and
rlheal's own PPO and eval rows through Accelerate's tracker classes to the same place."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlheal.tracking import (
    TRACKING_DIR,
    TrackerError,
    Trackers,
    eval_metrics,
    parse_report_to,
    update_metrics,
)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every TensorBoard event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_report_to_names_are_checked():
    assert parse_report_to("none") == [] and parse_report_to("") == [] and parse_report_to(None) == []
    assert parse_report_to("tensorboard") == ["tensorboard"]
    with pytest.raises(TrackerError, match="not a tracker rlheal reports to"):
        parse_report_to("tensorboard,mlflow")


def test_a_missing_tracker_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr("rlheal.tracking.find_spec", lambda name: None)
    with pytest.raises(TrackerError, match="pip install wandb"):
        parse_report_to("wandb")


EVAL_ROW = {"checkpoint": "/run/sft/step-000012", "stage": "sft", "step": 12, "label": "sft-12", "task": "det",
            "split": "ood", "success_rate": 0.5, "first_attempt_acc": 0.5, "format_error_rate": 0.0,
            "mean_attempts": 1.0}
UPDATE_ROW = {"run_id": "/run/rl/sft-12-ppo", "update": 3, "algo": "ppo", "mean_reward": 1.5, "kl": float("nan"),
              "success_rate": 0.25, "no_signal": False}


def test_metrics_of_rows_are_finite_numbers_named_by_task_split_and_algo():
    assert eval_metrics(EVAL_ROW)["det/ood/success_rate"] == 0.5
    assert eval_metrics({**EVAL_ROW, "stage": "edit", "label": "edit-values"})["edit-values/det/ood/success_rate"] == 0.5
    metrics = update_metrics(UPDATE_ROW)
    assert metrics == {"ppo/mean_reward": 1.5, "ppo/success_rate": 0.25}  # NaN and missing values left out
    assert all(math.isfinite(v) for v in metrics.values())


def test_no_trackers_write_nothing(tmp_path):
    hub = Trackers([], tmp_path)
    hub.log_eval_row(EVAL_ROW)
    hub.close()
    assert not (tmp_path / TRACKING_DIR).exists()


def test_tensorboard_gets_eval_and_update_rows_offline(tmp_path):
    hub = Trackers(["tensorboard"], tmp_path)
    hub.log_eval_row(EVAL_ROW)
    hub.log_eval_row({**EVAL_ROW, "step": 24, "success_rate": 0.25})
    hub.log_update_row(UPDATE_ROW)
    hub.close()
    evals = scalars(tmp_path / TRACKING_DIR / "eval" / "sft")
    assert evals["det/ood/success_rate"] == [(12, 0.5), (24, 0.25)]
    assert scalars(tmp_path / TRACKING_DIR / "rl" / "sft-12-ppo")["ppo/mean_reward"] == [(3, 1.5)]


@pytest.mark.slow
def test_sft_reports_through_trl_to_tensorboard(make_tiny_checkpoint, tmp_path):
    from rlheal.store import Store
    from rlheal.train.sft import SFTConfig, run_sft

    start = make_tiny_checkpoint(tmp_path / "start", stage="base")
    cfg = SFTConfig(model=str(start), n_train=8, steps=2, batch_size=4, warmup_steps=0, schedule=[0, 2],
                    loss_eval_n=2, max_length=256)
    hub = Trackers(["tensorboard"], tmp_path / "run")
    with Store(tmp_path / "run") as store:
        run_sft(cfg, tmp_path / "run", store, progress=False, trackers=hub)
    hub.close()
    logged = scalars(tmp_path / "run" / TRACKING_DIR / "sft")
    assert [step for step, _ in logged["train/loss"]] == [1, 2]  # the trainer's own logs
    held_out = scalars(tmp_path / "run" / TRACKING_DIR / "eval" / "sft")
    assert [step for step, _ in held_out["det/ood/test_loss"]] == [0, 2]  # the scheduled held-out losses
