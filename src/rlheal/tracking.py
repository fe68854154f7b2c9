"""Experiment trackers (TensorBoard, Weights & Biases, Trackio), off unless asked for (`--report-to`).

Through the ecosystem's own integrations: TRL's trainers (SFT, GRPO) get `report_to`, and rlheal's own
metrics (PPO updates, evaluations) go through Accelerate's tracker classes to the same trackers. Each part of
a run is one tracker run: `sft` (the trainer's own logs and the scheduled test losses), `eval/sft` (ID/OOD
success per SFT step), `rl/<start>-<arm>` (one row per RL update), `eval/rl/<start>-<arm>` (success per RL
update), `eval/edit` and `eval/external`. TensorBoard writes offline to `RUN/tracking/<part>/`
(`tensorboard --logdir RUN/tracking`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

TRACKING_DIR = "tracking"
PROJECT = "rlheal"
# tracker -> the module it needs (`pip install` name in the message)
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
UPDATE_METRICS = ("mean_reward", "success_rate", "format_rate", "kl", "kl_coef", "value_loss", "policy_loss",
                  "clip_frac", "explained_variance", "entropy", "adv_mean", "adv_std", "adv_skew", "seconds")
EVAL_METRICS = ("success_rate", "first_attempt_acc", "format_error_rate", "mean_attempts")


class TrackerError(ValueError):
    """A tracker that is unknown or not installed; the message says what to do."""


def parse_report_to(text: str | Sequence[str] | None) -> list[str]:
    """The trackers named in `text` ("none", "tensorboard", "tensorboard,wandb"); TrackerError for an unknown or
    missing one."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text or []) if t.strip()]
    names = [] if names == ["none"] else names
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"--report-to {name!r} is not a tracker rlheal reports to; use none or "
                               f"{', '.join(TRACKERS)} (comma-separated)")
        if find_spec(TRACKERS[name]) is None:
            raise TrackerError(f"--report-to {name} needs the {TRACKERS[name]} package: pip install {TRACKERS[name]}")
    return names


def part_of_row(row: Mapping[str, Any]) -> str:
    """The tracker run of an `evals` row: `eval/sft`, `eval/rl/<rl folder>`, `eval/edit`, `eval/<stage>`."""
    if row.get("stage") == "rl" and row.get("checkpoint"):
        return f"eval/rl/{Path(row['checkpoint']).parent.name}"
    return f"eval/{row.get('stage') or 'external'}"


def eval_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """`{task/split/metric: value}` of an `evals` row (edits and external checkpoints are told apart by label)."""
    prefix = f"{row['task']}/{row['split']}"
    if row.get("stage") not in ("sft", "rl", "base"):
        prefix = f"{row.get('label')}/{prefix}"
    return _finite({f"{prefix}/{m}": row.get(m) for m in EVAL_METRICS})


def update_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """`{algo/metric: value}` of an `rl_updates` row."""
    return _finite({f"{row['algo']}/{m}": row.get(m) for m in UPDATE_METRICS})


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class Trackers:
    """The tracker runs of one command, opened on first use and finished by `close()`; with no trackers named,
    every call does nothing."""

    def __init__(self, report_to: Sequence[str], run: str | Path) -> None:
        self.report_to = list(report_to)
        self.dir = Path(run) / TRACKING_DIR
        self._open: dict[str, list[Any]] = {}

    def log(self, part: str, metrics: Mapping[str, float], step: int) -> None:
        if not self.report_to or not metrics:
            return
        for tracker in self._trackers(part):
            tracker.log(dict(metrics), step=step)

    def log_eval_row(self, row: Mapping[str, Any]) -> None:
        """An `evals` row, at its checkpoint's step."""
        self.log(part_of_row(row), eval_metrics(row), int(row["step"]))

    def log_update_row(self, row: Mapping[str, Any]) -> None:
        """An `rl_updates` row, at its update."""
        self.log(f"rl/{Path(row['run_id']).name}", update_metrics(row), int(row["update"]))

    def _trackers(self, part: str) -> list[Any]:
        if part not in self._open:
            from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

            made = []
            for name in self.report_to:
                if name == "tensorboard":
                    tracker = TensorBoardTracker(part, self.dir)
                elif name == "wandb":
                    tracker = WandBTracker(PROJECT, name=part, group=self.dir.parent.name, reinit="create_new")
                else:
                    tracker = TrackioTracker(PROJECT, name=f"{self.dir.parent.name}/{part}")
                tracker.start()
                made.append(tracker)
            self._open[part] = made
        return self._open[part]

    def close(self) -> None:
        for trackers in self._open.values():
            for tracker in trackers:
                tracker.finish()
        self._open.clear()


class TrainerReporting:
    """How a TRL/transformers trainer reports to `report_to` as tracker run `part`: `arguments` for its config
    (`report_to`, `run_name`, `project`), and, as a context manager around building the trainer, TensorBoard's
    folder `RUN/tracking/<part>` (transformers reads TENSORBOARD_LOGGING_DIR when the trainer is built)."""

    def __init__(self, report_to: Sequence[str], run: str | Path, part: str) -> None:
        self.report_to, self.part = list(report_to), part
        self.folder = Path(run) / TRACKING_DIR / part
        self._before: str | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        if not self.report_to:
            return {"report_to": "none"}
        return {"report_to": self.report_to, "run_name": self.part, "project": PROJECT}

    def __enter__(self) -> TrainerReporting:
        self._before = os.environ.get("TENSORBOARD_LOGGING_DIR")
        if self.report_to:
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.folder)
            os.environ.setdefault("WANDB_PROJECT", PROJECT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = self._before
