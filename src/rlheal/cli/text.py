"""Text from stores, manifests and files as Rich shows it: literally (`[/bold]` stays those characters)."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """A Rich renderable of `str(value)` with no markup parsed (a table cell, a printed message)."""
    from rich.text import Text

    return Text(str(value))
