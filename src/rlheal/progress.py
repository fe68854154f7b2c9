"""What a person sees while work runs: one transient progress bar at a time (with its ETA), one line per
finished stage with its elapsed time, and notes. Everything goes to standard error, so standard output
holds only a command's result (tables, JSON, CSV).

`bar(...)` shows nothing when disabled, when there is nothing to do (a resumed run draws no `0/0` bars) or
when standard error is not a terminal; a finished bar disappears, leaving the stage lines. Notes (a warning a person must see) are printed whether
bars are shown or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def console() -> Any:
    """The Rich console on standard error (it follows `sys.stderr`, so a test's capture sees it)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def note(text: str, style: str | None = None) -> None:
    """Print one line for a person (literally: no Rich markup in `text` is parsed)."""
    from rich.text import Text

    console().print(Text(text, style=style or ""), soft_wrap=True)


def duration(seconds: float) -> str:
    """`4.2 s`, `3 min 05 s`, `1 h 02 min`: an elapsed time as a person reads it."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def stage_line(name: str, seconds: float, detail: str = "") -> str:
    """The line of one finished stage: `✓ eval-sft     41.3 s  18 evaluations`."""
    return f"✓ {name:<11} {duration(seconds):>10}" + (f"  {detail}" if detail else "")


class Bar:
    """A handle on the current progress bar; every method is a no-op when the bar is not shown."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1, description: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, **_described(description))

    def update(self, completed: float | None = None, description: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **({} if completed is None else {"completed": completed}),
                                  **_described(description))

    @property
    def completed(self) -> float:
        return self._progress.tasks[self._task].completed if self._progress is not None else 0.0

    def note(self, text: str, style: str | None = None) -> None:
        """A line above the bar (shown even when the bar is not)."""
        if self._progress is None:
            note(text, style)
        else:
            from rich.text import Text

            self._progress.console.print(Text(text, style=style or ""), soft_wrap=True)


def _described(description: str | None) -> dict[str, str]:
    return {} if description is None else {"description": description}


@contextmanager
def bar(description: str, total: float, enabled: bool = True, completed: float = 0) -> Iterator[Bar]:
    """A transient bar: description, bar, done/total, elapsed, ETA. Shows nothing when `enabled` is false,
    nothing is left to do (`completed >= total`) or standard error is not a terminal (a pipe or a log file)."""
    shown = console()
    if not enabled or total <= 0 or completed >= total or not shown.is_terminal:
        yield Bar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=shown, transient=True) as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed))
