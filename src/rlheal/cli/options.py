"""Options that several commands take, defined once so that their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Study YAML (default: the built-in "
                                                   "study, configs/default.yaml).")]
Settings = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Replaces a config field, KEY=VALUE (dotted for "
                                                    "nested fields), repeatable.")]
LogSamples = Annotated[bool, typer.Option("--log-samples", help="Write every played episode (chat, verdicts) as "
                                          "JSON lines to RUN/samples/.")]
ReportTo = Annotated[str, typer.Option("--report-to", metavar="TRACKERS", help="Trackers for the metrics: none, tensorboard, wandb or "
                                       "trackio (comma-separated); TensorBoard writes to RUN/tracking/.")]
_EPISODES_HELP = "Held-out problems per (checkpoint, task, split)."
_SEED_HELP = "Seed of the frozen eval sets (and of sampling when temperature > 0)."
EvalEpisodes = Annotated[int, typer.Option("--eval-episodes", min=1, help=_EPISODES_HELP)]
EvalSeed = Annotated[int, typer.Option("--eval-seed", min=0, help=_SEED_HELP)]
# `rlheal eval` evaluates and nothing else: there --episodes and --seed say the same
Episodes = Annotated[int, typer.Option("--episodes", "--eval-episodes", min=1, help=_EPISODES_HELP)]
Seed = Annotated[int, typer.Option("--seed", "--eval-seed", min=0, help=_SEED_HELP)]
Profile = Annotated[str | None, typer.Option("--profile", help="Prompt profile: compact (rlheal's built-in "
                                             "models) or paper (the paper's JSON answers, for chat models); "
                                             "default: paper for outside models, else compact.")]

EVAL_EPISODES = 100  # the default of every command that evaluates
