"""`rlheal sft` (supervised fine-tuning with a dense checkpoint schedule) and `rlheal base` (the built-in base)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def sft_command(
    config: Annotated[Path, typer.Option(help="YAML SFT config (fields of rlheal.train.sft.SFTConfig, "
                                               "optionally under an `sft:` key)")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints go to OUT/sft/step-NNNNNN, rows to "
                                            "OUT/results.sqlite")],
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Fine-tune on the ID split; saves and scores the scheduled checkpoints (a rerun skips saved ones)."""
    from rlheal.atomic import clean_stale
    from rlheal.lock import RunLockedError, run_lock
    from rlheal.models.checkpoint import CheckpointError
    from rlheal.store import Store, StoreError
    from rlheal.train.sft import SFTConfigError, load_sft_config, run_sft

    try:
        cfg = load_sft_config(config)
        with run_lock(out), Store(out) as store:
            clean_stale(out)
            folders = run_sft(cfg, out, store, progress=not quiet)
    except (SFTConfigError, CheckpointError, StoreError, RunLockedError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{len(folders)} checkpoints in {out / 'sft'}; losses in {out / 'results.sqlite'}")


def base_command(
    model: Annotated[str, typer.Option(help="which built-in base: builtin:det (the built-in study's), builtin:gp24, "
                                            "builtin:tiny")] = "builtin:det",
    rebuild: Annotated[bool, typer.Option(help="pretrain again from the recipe into the cache (replacing it when "
                                               "done) and say whether the bits match the shipped base")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Show a built-in base model (the shipped one, or the cached one, built if missing): its folder and how it
    was made."""
    from rlheal.models.builtin import RECIPES, builtin_base, matches_shipped
    from rlheal.models.checkpoint import CheckpointError, read_manifest, weights_sha256

    if model not in RECIPES:
        _fail(f"unknown built-in model {model!r}; valid: {', '.join(RECIPES)}")
    try:
        folder = builtin_base(RECIPES[model], progress=not quiet, rebuild=rebuild)
    except CheckpointError as exc:
        _fail(str(exc))
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
    app.command("sft")(sft_command)
    app.command("base")(base_command)
