"""The `rlheal` command line. Each room registers its commands from its own module in this package;
heavy imports (torch, transformers) happen inside the commands so that `rlheal --help` stays fast."""

from __future__ import annotations

import typer

from rlheal.cli import data, evaluate, rl, spectrum, study, tasks, train

app = typer.Typer(
    name="rlheal",
    help="Run and explain SFT-then-RL post-training: ID/OOD evaluation and spectral diagnostics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (tasks, train, rl, evaluate, spectrum, study, data):
    _module.register(app)


def main() -> None:
    app()
