"""`rlheal sft` (supervised fine-tuning with a dense checkpoint schedule) and `rlheal base` (the built-in base)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.common import command, fail, show_bars
from rlheal.cli.options import ReportTo, Settings
from rlheal.cli.overrides import parse_overrides


def sft_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints go to OUT/sft/step-NNNNNN, rows "
                                      "to OUT/results.sqlite.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML SFT config (fields of "
                                                "rlheal.train.sft.SFTConfig, optionally under an `sft:` key; "
                                                "default: the built-in study's SFT settings).")] = None,
    settings: Settings = None,
    report_to: ReportTo = "none",
) -> None:
    """Fine-tune on the ID split; saves and scores the scheduled checkpoints (a rerun skips saved ones).

    `--set` takes SFT fields (e.g. --set steps=60 --set lr=1e-4)."""
    from rlheal.atomic import clean_stale
    from rlheal.lock import run_lock
    from rlheal.progress import duration, note, stage_line
    from rlheal.store import Store
    from rlheal.tracking import Trackers, parse_report_to
    from rlheal.train.sft import load_sft_config, run_sft

    trackers = Trackers(parse_report_to(report_to), out)
    cfg = load_sft_config(config, parse_overrides(settings or [], example="steps=60"))
    began = time.perf_counter()
    with run_lock(out), Store(out) as store:
        clean_stale(out)
        try:
            folders = run_sft(cfg, out, store, progress=show_bars(), trackers=trackers)
        finally:
            trackers.close()
    note(stage_line("sft", time.perf_counter() - began, f"{len(folders)} checkpoints"))
    typer.echo(f"{len(folders)} checkpoints in {out / 'sft'}; losses in {out / 'results.sqlite'} "
               f"({duration(time.perf_counter() - began)})")


def base_command(
    model: Annotated[str, typer.Option("--model", help="Which built-in base: builtin:det (the built-in study's), "
                                       "builtin:gp24, builtin:tiny.")] = "builtin:det",
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Pretrain again from the recipe into the cache "
                                          "(replacing it when done) and say whether the bits match the shipped "
                                          "base.")] = False,
) -> None:
    """Show a built-in base model (the shipped one, or the cached one, built if missing): its folder and how it
    was made."""
    from rlheal.models.builtin import RECIPES, builtin_base, matches_shipped
    from rlheal.models.checkpoint import read_manifest, weights_sha256

    if model not in RECIPES:
        raise fail(f"unknown built-in model {model!r}; valid: {', '.join(RECIPES)}", 2)
    folder = builtin_base(RECIPES[model], progress=show_bars(), rebuild=rebuild)
    extra = {k: v for k, v in read_manifest(folder).extra.items() if k != "recipe"}
    extra["weights_sha256"] = weights_sha256(folder)
    typer.echo(str(folder))
    typer.echo(json.dumps(extra, indent=1))
    same = matches_shipped(RECIPES[model], folder) if rebuild else None
    if same is not None:
        typer.echo("the rebuilt weights match the shipped base bit for bit" if same else
                   "the rebuilt weights differ from the shipped base (another CPU kind or library version gives other "
                   "last bits); studies keep using the shipped base")


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`."""
    app.command("sft")(command(sft_command))
    app.command("base")(command(base_command))
