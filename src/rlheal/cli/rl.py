"""`rlheal rl`: RL (PPO or GRPO) from chosen SFT checkpoints, then ID/OOD evaluation of every RL checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from rlheal.cli.overrides import parse_overrides
from rlheal.cli.text import plain


def _parse_steps(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--checkpoints takes steps separated by commas, e.g. 40,80,160; got {text!r}") from exc


_FROM = typer.Option(..., "--from", help="Folder of SFT checkpoints (e.g. RUN/sft).")
_OUT = typer.Option(None, "--out", help="Run folder (default: the parent of --from).")
_SET = typer.Option([], "--set", help="Hyperparameter KEY=VALUE, repeatable (e.g. lr=1e-6).")


def rl(
    sft: Path = _FROM,
    checkpoints: str = typer.Option("all", "--checkpoints", help="SFT steps to start from, e.g. 40,80,160, or all."),
    algo: str = typer.Option("ppo", "--algo", help="ppo (the paper's turn-level PPO) or grpo (TRL)."),
    updates: int | None = typer.Option(None, "--updates", help="RL updates per start (default: the config's)."),
    task: str | None = typer.Option(None, "--task", help="Task trained on (default: the config's, gp24)."),
    out: Path | None = _OUT,
    settings: list[str] = _SET,
    eval_episodes: int = typer.Option(100, "--eval-episodes", min=1, help="Episodes per (checkpoint, split)."),
    eval_seed: int = typer.Option(0, "--eval-seed", min=0, help="Seed of the frozen eval sets."),
) -> None:
    """Run RL from each chosen SFT checkpoint and evaluate every RL checkpoint on ID and OOD.

    Prints the full RL settings first. Resumes: starts already done are skipped, an interrupted start continues
    from its latest RL checkpoint.
    `rlheal results` then shows OOD before and after RL for each start.
    """
    from pydantic import ValidationError

    from rlheal.atomic import clean_stale
    from rlheal.lock import RunLockedError, run_lock
    from rlheal.models.checkpoint import CheckpointError
    from rlheal.train.ledger import LedgerError
    from rlheal.train.ppo import ResumeError
    from rlheal.train.sweep import SweepError, make_config, run_sweep

    overrides = parse_overrides(settings, example="lr=1e-6")
    if updates is not None:
        overrides["updates"] = updates
    if task is not None:
        overrides["task"] = task
    try:
        config = make_config(algo, overrides)  # fail before any work
        # `rlheal rl` trains at its algorithm's own defaults, not at a study's RL settings: say which it uses.
        typer.echo(f"{algo} settings: " + " ".join(f"{k}={v}" for k, v in config.model_dump().items()))
        run = out or sft.resolve().parent
        with run_lock(run):
            clean_stale(run)
            summary = run_sweep(sft, run, algo=algo, steps=_parse_steps(checkpoints), overrides=overrides,
                                eval_episodes=eval_episodes, eval_seed=eval_seed)
    except ValidationError as exc:
        raise typer.BadParameter(f"invalid {algo} setting: {exc}") from exc
    except (SweepError, ResumeError, RunLockedError, CheckpointError, LedgerError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{algo.upper()}: success before → after RL")
    for column in ("start", "task", "RL step", "ID before", "ID after", "OOD before", "OOD after"):
        table.add_column(column)
    pct = lambda x: "—" if x is None else f"{x:.1%}"  # noqa: E731
    for row in summary:
        table.add_row(plain(row["start_label"]), plain(row["task"]), str(row["rl_step"]), pct(row["id_before"]),
                      pct(row["id_after"]), pct(row["ood_before"]), pct(row["ood_after"]))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add `rlheal rl` to `app`."""
    app.command("rl")(rl)
