"""`rlheal study` (the whole study from one config), `rlheal report` (rebuild the report from the store) and
`rlheal compare` (the findings over several runs of one study, e.g. seeds)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.common import command, fail, show_bars
from rlheal.cli.options import ConfigOption, LogSamples, ReportTo, Settings
from rlheal.cli.overrides import parse_overrides


def register(app: typer.Typer) -> None:
    app.command("study")(command(study))
    app.command("report")(command(report))
    app.command("compare")(command(compare))


def study(
    config: ConfigOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/study-<fingerprint>).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Replaces the config's seed (SFT data order, RL "
                                             "sampling); one run folder per seed.")] = None,
    settings: Settings = None,
    log_samples: LogSamples = False,
    report_to: ReportTo = "none",
) -> None:
    """Run the whole study (base → SFT → eval → RL → eval → spectrum → edits → report); rerun to resume.

    One line per finished stage with its time; a short summary at the end; the report in RUN/report.html."""
    from rlheal.config import load_config
    from rlheal.lock import launched_rank
    from rlheal.progress import duration, note, stage_line
    from rlheal.report.summary import summary_lines
    from rlheal.study import run_study
    from rlheal.tracking import parse_report_to

    trackers = parse_report_to(report_to)
    cfg = load_config(config, seed=seed, overrides=parse_overrides(settings or [], example="sft.n_train=500"))
    out = out or Path("runs") / f"study-{cfg.fingerprint()[:8]}"
    main = launched_rank() == 0  # under a launcher rank 0 alone speaks
    if main:
        note(f"rlheal study: config {config or 'built-in default'}, model {cfg.model}, seed {cfg.seed}, "
             f"run folder {out}")
    began = time.perf_counter()
    report_path = run_study(cfg, out, progress=show_bars(), samples=log_samples, report_to=trackers,
                            on_stage_done=lambda name, seconds, detail: note(stage_line(name, seconds, detail)))
    if not main:
        return
    for line in summary_lines(out):
        typer.echo(line)
    typer.echo(f"done in {duration(time.perf_counter() - began)}: report at {report_path}")


def report(
    run: Annotated[Path, typer.Argument(help="A run folder holding results.sqlite.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report here (default RUN/report.html; "
                                             "its figures go to report/ beside it).")] = None,
) -> None:
    """Rebuild RUN/report.html and RUN/report/*.png from the results store alone (read, never written)."""
    from rlheal.report import build_report

    try:
        path = build_report(run, out)
    except OSError as exc:
        raise fail(f"cannot write the report ({exc}); give --out FILE in a folder you can write") from None
    typer.echo(f"report written to {path}")


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of one study config that differ only in --seed.")],
    task: Annotated[list[str] | None, typer.Option("--task", help="Task(s) to report (default: all evaluated).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the Markdown to this file.")] = None,
    figures: Annotated[Path | None, typer.Option("--figures", help="Also write one PNG per task (the four "
                                                 "findings) into this folder, linked from the Markdown.")] = None,
) -> None:
    """The paper's findings pooled over several runs (episodes pooled, spread over seeds), as Markdown."""
    from rlheal.atomic import write_text
    from rlheal.report.compare import compare_markdown

    markdown = compare_markdown(runs, task, figures=figures, links_from=out.parent if out else Path.cwd())
    typer.echo(markdown, nl=False)
    if out is not None:
        write_text(out, markdown)
