"""`rlheal study`: the whole study from one config (issue 6). Until it lands, it says what is built."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("study")(study)


def study() -> None:
    """Run the whole study on the built-in model (not built yet: prints what is available now)."""
    typer.echo(
        "rlheal study is not built yet (issue 6). Available now: `rlheal tasks show gp24 --split ood -n 5`, "
        "`rlheal tasks check ...`; see README.md for the state of each stage."
    )
