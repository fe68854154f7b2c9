"""The `rlheal` command line. Each room registers its commands from its own module in this package, wrapped
by `common.command` (shared options, one-line errors); heavy imports (torch, transformers) happen inside the
commands so that `rlheal --help` stays fast. `main` also puts a usage error on one line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from rlheal.cli import data, evaluate, rl, spectrum, study, tasks, train

app = typer.Typer(
    name="rlheal",
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: options and their values, no type labels or boxes
)

for _module in (study, evaluate, train, rl, spectrum, tasks, data):
    _module.register(app)


def version_line() -> str:
    """`rlheal 0.1.0 (python 3.11.9, torch 2.13.0, transformers 5.25.0, trl 1.16.0)`."""
    from rlheal.provenance import versions

    found = versions()
    parts = ", ".join(f"{name} {found[name]}" for name in ("python", "torch", "transformers", "trl") if name in found)
    return f"rlheal {found.get('rlheal', 'unknown')} ({parts})"


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context,
         version: Annotated[bool, typer.Option("--version", is_eager=True, help="Print the version and exit.")] = False,
         ) -> None:
    """Run and explain SFT-then-RL post-training: ID/OOD evaluation and spectral diagnostics.

    Start with `rlheal study --config configs/demo.yaml` (five minutes on a laptop CPU)."""
    if version:
        typer.echo(version_line())
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def main(args: list[str] | None = None) -> None:
    """Run `rlheal` with `args` (default: the command line) and exit with its status; a usage error (exit
    status 2) is one line naming the `--help` to read."""
    from rlheal.cli.common import CLICK_ERROR, USAGE_ERROR, one_line

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched on several processes: join them first
        from rlheal.distributed import LaunchError, ensure_process_group

        try:
            ensure_process_group()
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    try:
        code = app(args=args, prog_name="rlheal", standalone_mode=False)
    except USAGE_ERROR as exc:
        where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        print(f"error: {one_line(exc.format_message())}{where}", file=sys.stderr)
        sys.exit(2)
    except CLICK_ERROR as exc:
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
