"""Verifiable task worlds, each with an ID and an OOD split, shown and read through a prompt profile.

    from rlheal.tasks import get_task
    task = get_task("gp24")                  # profile="compact" (default) or "paper"; gp24 takes target=24
    p = task.problem("ood", seed=0, index=3)
    v = task.verify(p, text)                 # v.correct, v.reward, v.kind, v.feedback, v.format_ok
    task.solve(p)                            # gp24: every distinct formula
    task.answer(p)                           # one correct answer text in the profile's format

Pure Python: importing this package never imports torch.
"""

from __future__ import annotations

from typing import Any

from rlheal.tasks.base import PROFILES, SPLITS, VERDICT_KINDS, Episode, Problem, Task, Turn, Verdict
from rlheal.tasks.gp24 import GeneralPoints, GeneralPointsLowFaces, GeneralPointsLowFacesBlind
from rlheal.tasks.matrix import Determinant, MatrixRank

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (GeneralPoints, MatrixRank, Determinant, GeneralPointsLowFaces, GeneralPointsLowFacesBlind)
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str, profile: str = "compact", **options: Any) -> Task:
    """The task world `name` shown through `profile`. Unknown names, profiles or options raise ValueError."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}")
    cls = TASKS[name]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        valid = ", ".join(cls.options) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {name!r}; valid: {valid}")
    return cls(profile=profile, **options)


__all__ = [
    "PROFILES",
    "SPLITS",
    "TASK_NAMES",
    "VERDICT_KINDS",
    "Determinant",
    "Episode",
    "GeneralPoints",
    "GeneralPointsLowFaces",
    "MatrixRank",
    "Problem",
    "Task",
    "Turn",
    "Verdict",
    "get_task",
]
