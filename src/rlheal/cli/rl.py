"""`rlheal rl`: RL (PPO or GRPO) from chosen SFT checkpoints, then ID/OOD evaluation of every RL checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.common import command, show_bars
from rlheal.cli.options import EVAL_EPISODES, EvalEpisodes, EvalSeed, LogSamples, ReportTo, Settings
from rlheal.cli.overrides import parse_overrides


def _parse_steps(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--checkpoints takes steps separated by commas, e.g. 40,80,160; got {text!r}") from exc


def rl(
    sft: Annotated[Path, typer.Option("--from", help="Folder of SFT checkpoints (e.g. RUN/sft).")],
    checkpoints: Annotated[str, typer.Option("--checkpoints", help="SFT steps to start from, e.g. 40,80,160, "
                                             "or all.")] = "all",
    algo: Annotated[str, typer.Option("--algo", help="ppo (the paper's turn-level PPO) or grpo (TRL).")] = "ppo",
    updates: Annotated[int | None, typer.Option("--updates", min=1, help="RL updates per start (default: the "
                                                "algorithm's).")] = None,
    task: Annotated[str, typer.Option("--task", help="Task trained on (its ID split).")] = "det",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: the parent of --from).")] = None,
    settings: Settings = None,
    eval_episodes: EvalEpisodes = EVAL_EPISODES,
    eval_seed: EvalSeed = 0,
    log_samples: LogSamples = False,
    report_to: ReportTo = "none",
) -> None:
    """Run RL from each chosen SFT checkpoint and evaluate every RL checkpoint on ID and OOD.

    `--set` takes the algorithm's fields (e.g. --set lr=1e-6). Prints the full RL settings first. Resumes:
    starts already done are skipped, an interrupted start continues from its latest RL checkpoint.
    `rlheal results` then shows OOD before and after RL for each start.
    """
    from rlheal.atomic import clean_stale
    from rlheal.cli.evaluate import print_rl_summary
    from rlheal.lock import run_lock
    from rlheal.progress import note
    from rlheal.samples import SampleLog
    from rlheal.tracking import Trackers, parse_report_to
    from rlheal.train.sweep import make_config, run_sweep

    trackers = parse_report_to(report_to)
    overrides = {"task": task, **parse_overrides(settings or [], example="lr=1e-6")}
    if updates is not None:
        overrides["updates"] = updates
    config = make_config(algo, overrides)  # fail before any work
    # `rlheal rl` trains at its algorithm's own defaults, not at a study's RL settings: say which it uses.
    note(f"{algo} settings: " + " ".join(f"{k}={v}" for k, v in config.model_dump().items()))
    run = out or sft.resolve().parent
    with run_lock(run):
        clean_stale(run)
        hub = Trackers(trackers, run)
        try:
            summary = run_sweep(sft, run, algo=algo, steps=_parse_steps(checkpoints), overrides=overrides,
                                eval_episodes=eval_episodes, eval_seed=eval_seed, show_progress=show_bars(),
                                samples=SampleLog(run, "rl") if log_samples else None,
                                eval_samples=SampleLog(run, "eval") if log_samples else None, trackers=hub)
        finally:
            hub.close()
    print_rl_summary(summary)


def register(app: typer.Typer) -> None:
    """Add `rlheal rl` to `app`."""
    app.command("rl")(command(rl))
