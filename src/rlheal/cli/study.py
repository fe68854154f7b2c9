"""`rlheal study` (the whole study from one config) and `rlheal report` (rebuild the report from the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("study")(study)
    app.command("report")(report)


def study(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="study YAML (default: the built-in study, "
                                                "configs/default.yaml)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default: runs/study-<fingerprint>)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Run the whole study (base → SFT → eval → RL → eval → spectrum → edits → report); rerun to resume."""
    from rlheal.config import ConfigError, load_config
    from rlheal.study import StudyError, run_study

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    out = out or Path("runs") / f"study-{cfg.fingerprint()[:8]}"
    typer.echo(f"rlheal study: config {config or 'built-in default'}, run folder {out} (log: {out / 'study.log'})")
    try:
        report_path = run_study(cfg, out, progress=not quiet)
    except StudyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"done: report at {report_path}")


def report(run: Annotated[Path, typer.Argument(help="a run folder holding results.sqlite")]) -> None:
    """Rebuild RUN/report.html and RUN/report/*.png from the results store alone."""
    from rlheal.report import build_report
    from rlheal.store import StoreError

    try:
        path = build_report(run)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report written to {path}")
