"""`rlheal study` (the whole study from one config), `rlheal report` (rebuild the report from the store) and
`rlheal compare` (the findings over several runs of one study, e.g. seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.overrides import parse_overrides


def register(app: typer.Typer) -> None:
    app.command("study")(study)
    app.command("report")(report)
    app.command("compare")(compare)


def study(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="study YAML (default: the built-in study, "
                                                "configs/default.yaml)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default: runs/study-<fingerprint>)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="replaces the config's seed (SFT data order, RL "
                                             "sampling); one run folder per seed")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="replaces a config field, dotted KEY=VALUE, "
                                                      "repeatable (e.g. --set sft.n_train=500)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Run the whole study (base → SFT → eval → RL → eval → spectrum → edits → report); rerun to resume."""
    from rlheal.config import ConfigError, load_config
    from rlheal.study import run_study

    overrides = parse_overrides(settings or [], example="sft.n_train=500")
    try:
        cfg = load_config(config, seed=seed, overrides=overrides)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    out = out or Path("runs") / f"study-{cfg.fingerprint()[:8]}"
    typer.echo(f"rlheal study: config {config or 'built-in default'}, run folder {out} (log: {out / 'study.log'})")
    try:
        report_path = run_study(cfg, out, progress=not quiet)
    except run_errors() as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"done: report at {report_path}")


def run_errors() -> tuple[type[Exception], ...]:
    """The errors a run reports in one line (what is wrong and what to do) rather than as a traceback."""
    from rlheal.lock import RunLockedError
    from rlheal.models.checkpoint import CheckpointError
    from rlheal.paths import UnsafePathError
    from rlheal.store import StoreError
    from rlheal.study import StudyError
    from rlheal.train.ledger import LedgerError
    from rlheal.train.ppo import ResumeError
    from rlheal.train.sft import SFTConfigError
    from rlheal.train.sweep import SweepError

    return (StudyError, RunLockedError, CheckpointError, SFTConfigError, StoreError, ResumeError, SweepError,
            UnsafePathError, LedgerError)


def report(
    run: Annotated[Path, typer.Argument(help="a run folder holding results.sqlite")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the report here (default RUN/report.html; "
                                             "its figures go to report/ beside it)")] = None,
) -> None:
    """Rebuild RUN/report.html and RUN/report/*.png from the results store alone (read, never written)."""
    from rlheal.report import build_report
    from rlheal.store import StoreError

    try:
        path = build_report(run, out)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot write the report ({exc}); give --out FILE in a folder you can write", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report written to {path}")


def compare(
    runs: Annotated[list[Path], typer.Argument(help="run folders of one study config that differ only in --seed")],
    task: Annotated[list[str] | None, typer.Option("--task", help="task(s) to report (default: all evaluated)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write the Markdown to this file")] = None,
    figures: Annotated[Path | None, typer.Option("--figures", help="also write one PNG per task (the four "
                                                 "findings) into this folder, linked from the Markdown")] = None,
) -> None:
    """The paper's findings pooled over several runs (episodes pooled, spread over seeds), as Markdown."""
    from rlheal.atomic import write_text
    from rlheal.report.compare import compare_markdown
    from rlheal.store import StoreError

    try:
        markdown = compare_markdown(runs, task, figures=figures, links_from=out.parent if out else Path.cwd())
    except (StoreError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(markdown, nl=False)
    if out is not None:
        write_text(out, markdown)
