"""Placeholder: this room's commands are being built (see the open issues)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`."""
