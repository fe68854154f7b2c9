"""Checkpoint schedules: which optimizer steps of a training run are saved and evaluated.

The paper saved densely early (OOD accuracy peaks within the first ~1 % of SFT) and sparsely later, so the
default is log-spaced. Step 0 is the starting model itself. A spec is one of
- `"log:N"`: step 0 plus N log-spaced steps from 1 to the last step (dense early, sparse late);
- `"every:K"`: step 0, K, 2K, ... and the last step;
- a list of steps, e.g. `[0, 5, 10, 20, 40]` (each in 0..total_steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ScheduleSpec = str | Sequence[int]


class ScheduleError(ValueError):
    """A checkpoint schedule spec that cannot be resolved; the message says what is valid."""


def log_schedule(total_steps: int, n: int) -> list[int]:
    """Step 0 plus `n` distinct steps in 1..total_steps, log-spaced, always ending at `total_steps`.

    Rounding collisions at the dense end are resolved by taking the next free step, so the result has
    exactly `min(n, total_steps) + 1` steps.
    """
    if total_steps < 0 or n < 0:
        raise ScheduleError(f"log schedule needs total_steps >= 0 and n >= 0, got {total_steps}, {n}")
    n = min(n, total_steps)
    if n == 0:
        return [0]
    steps: list[int] = []
    for i in range(n):
        target = round(math.exp(math.log(total_steps) * (i + 1) / n))
        lowest = steps[-1] + 1 if steps else 1
        highest = total_steps - (n - 1 - i)  # leave room for the remaining steps
        steps.append(min(max(target, lowest), highest))
    return [0, *steps]


def every_schedule(total_steps: int, every: int) -> list[int]:
    """Step 0, every `every` steps, and the last step."""
    if every < 1:
        raise ScheduleError(f"'every:K' needs K >= 1, got {every}")
    return sorted({*range(0, total_steps + 1, every), total_steps})


def resolve_schedule(spec: ScheduleSpec, total_steps: int) -> list[int]:
    """The sorted, distinct steps named by `spec` for a run of `total_steps` optimizer steps."""
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if kind not in ("log", "every") or not arg.strip().isdigit():
            raise ScheduleError(f"unknown schedule {spec!r}: use 'log:N', 'every:K' or a list of steps")
        return (log_schedule if kind == "log" else every_schedule)(total_steps, int(arg))
    steps = sorted({int(s) for s in spec})
    outside = [s for s in steps if not 0 <= s <= total_steps]
    if outside:
        raise ScheduleError(f"schedule steps {outside} are outside 0..{total_steps} (the run's steps)")
    if not steps:
        raise ScheduleError("the schedule lists no steps; give at least one (0 saves the starting model)")
    return steps
