"""`rlheal data dump`: every dataset a built-in base or a study uses, as JSONL, for contamination audits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.common import command
from rlheal.cli.options import ConfigOption, Settings
from rlheal.cli.overrides import parse_overrides

data_app = typer.Typer(help="The datasets of bases and studies.", no_args_is_help=True, rich_markup_mode=None)


def register(app: typer.Typer) -> None:
    data_app.command("dump")(command(dump))
    app.add_typer(data_app, name="data")


def dump(
    what: Annotated[str, typer.Option(help="pretrain (with --base), or sft, rl, eval (with --config)")],
    base: Annotated[str | None, typer.Option(help="a built-in base: builtin:det, builtin:gp24, builtin:tiny")] = None,
    config: ConfigOption = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Replaces the config's seed.")] = None,
    settings: Settings = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL file (default: standard output)")] = None,
) -> None:
    """Write one record per document or problem as a JSON line: source, task, split, pool, problem, messages."""
    from rlheal.config import ConfigError, load_config
    from rlheal.data import pretrain_records, study_records, write_jsonl

    try:
        if what == "pretrain":
            if base is None or config is not None:
                raise ValueError("--what pretrain reads a base's corpus: pass --base builtin:NAME (and no --config)")
            records = pretrain_records(base)
        else:
            if base is not None:
                raise ValueError(f"--what {what} reads a study's data: pass --config FILE (or nothing for the "
                                 "built-in study), not --base")
            cfg = load_config(config, seed=seed, overrides=parse_overrides(settings or [], example="eval.episodes=300"))
            records = study_records(cfg, what)
        n = write_jsonl(records, out)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if out is not None:
        typer.echo(f"{n} records written to {out}", err=True)
