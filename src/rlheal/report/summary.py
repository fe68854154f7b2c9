"""The few lines a study prints when it ends: per task, the SFT curve's peak and end, each RL arm's effect on
OOD success and each weight edit's OOD success (no intervals: the report has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlheal.report.findings import Findings, FindingsError, compute


def _pct(point: Any) -> str:
    return f"{100 * point.rate.value:.0f} %"


def findings_lines(found: Findings) -> list[str]:
    """One line for each task's SFT curve, its RL arms and its edits."""
    lines = []
    for c in found.sft:
        line = f"{c.task}: OOD success {_pct(c.peak)} at its peak (SFT step {c.peak_step}), {_pct(c.end)} at step {c.end_step}"
        if c.peak_step in c.id and c.end_step in c.id:
            line += f"; ID {_pct(c.id[c.peak_step])} → {_pct(c.id[c.end_step])}"
        lines.append(line)
        arms = [a for a in found.rl if a.task == c.task]
        if arms:
            lines.append(f"{c.task}: RL on ID, OOD success before → after: " + "; ".join(
                f"{a.arm} from step {a.start_step} {_pct(a.ood_before)} → {_pct(a.ood_after)}" for a in arms))
        edits = [e for e in found.edits if e.task == c.task]
        if edits:
            lines.append(f"{c.task}: OOD success of step {c.end_step} with the peak's weights restored: " + "; ".join(
                f"{e.kind} {_pct(e.ood)}" for e in edits))
    return lines


def summary_lines(run: str | Path) -> list[str]:
    """The findings lines of a run folder's store (none when its rows give no findings)."""
    from rlheal.evaluate import EVALS
    from rlheal.store import Store

    with Store(run, readonly=True) as store:
        evals = store.rows(EVALS)
    try:
        return findings_lines(compute([evals]))
    except FindingsError:
        return []
