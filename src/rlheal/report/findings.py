"""Findings computed from stored rows alone: the OOD peak, the decline, RL recovery, the window, edits.

Pure functions over row dicts (as `Store.rows` returns them). Every finding carries the rows it was computed
from (`checkpoint`, `task`, `split` …), so each number in the report can be traced to a stored row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class SftCurve:
    """One task's SFT trajectory: the OOD peak against the last checkpoint."""

    task: str
    peak: Row  # the ood row with the highest success (earliest step on ties)
    end: Row  # the ood row of the last SFT step
    id_at_peak: Row | None
    id_at_end: Row | None

    @property
    def decline(self) -> float:
        return self.peak["success_rate"] - self.end["success_rate"]

    @property
    def decline_significant(self) -> bool:
        """Whether the peak's 95 % interval lies wholly above the end's."""
        return self.peak["ci_low"] > self.end["ci_high"]


@dataclass(frozen=True)
class RlStart:
    """RL from one SFT checkpoint: OOD (and ID) before and after."""

    task: str
    start: str  # the SFT checkpoint RL started from
    start_step: int
    ood_before: Row
    ood_after: Row
    id_before: Row | None
    id_after: Row | None

    @property
    def gain(self) -> float:
        return self.ood_after["success_rate"] - self.ood_before["success_rate"]

    @property
    def gain_significant(self) -> bool:
        return self.ood_after["ci_low"] > self.ood_before["ci_high"]

    @property
    def loss_significant(self) -> bool:
        return self.ood_after["ci_high"] < self.ood_before["ci_low"]


@dataclass(frozen=True)
class EditResult:
    task: str
    edit: Row  # the edited checkpoint's ood row
    target: Row | None  # the unedited target's ood row
    peak: Row | None  # the reference (OOD-peak) checkpoint's ood row

    @property
    def recovered_fraction(self) -> float | None:
        """(edited − target) / (peak − target): 1 = all the lost OOD success is back; None if nothing was lost."""
        if self.target is None or self.peak is None:
            return None
        lost = self.peak["success_rate"] - self.target["success_rate"]
        if lost <= 0:
            return None
        return (self.edit["success_rate"] - self.target["success_rate"]) / lost


@dataclass
class Findings:
    sft: list[SftCurve] = field(default_factory=list)
    rl: list[RlStart] = field(default_factory=list)
    edits: list[EditResult] = field(default_factory=list)


def _by(rows: Sequence[Row], **match: Any) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _one(rows: Sequence[Row], **match: Any) -> Row | None:
    found = _by(rows, **match)
    return found[0] if found else None


def sft_curves(evals: Sequence[Row]) -> list[SftCurve]:
    """For each task with SFT rows: peak and end of the OOD curve, and ID at both points."""
    curves = []
    for task in sorted({r["task"] for r in evals if r["stage"] == "sft"}):
        ood = sorted(_by(evals, stage="sft", task=task, split="ood"), key=lambda r: r["step"])
        if not ood:
            continue
        peak = max(ood, key=lambda r: (r["success_rate"], -r["step"]))
        end = ood[-1]
        curves.append(SftCurve(
            task=task, peak=peak, end=end,
            id_at_peak=_one(evals, checkpoint=peak["checkpoint"], task=task, split="id"),
            id_at_end=_one(evals, checkpoint=end["checkpoint"], task=task, split="id"),
        ))
    return curves


def rl_starts(evals: Sequence[Row]) -> list[RlStart]:
    """For each (task, start checkpoint) with RL rows: the start's SFT rows against the last RL checkpoint's."""
    out = []
    rl_rows = [r for r in evals if r["stage"] == "rl" and r.get("parent")]
    for task in sorted({r["task"] for r in rl_rows}):
        for start in sorted({r["parent"] for r in rl_rows if r["task"] == task}):
            before = _one(evals, checkpoint=start, task=task, split="ood")
            runs = sorted(_by(rl_rows, parent=start, task=task, split="ood"), key=lambda r: r["step"])
            if before is None or not runs:
                continue
            after = runs[-1]
            out.append(RlStart(
                task=task, start=start, start_step=before["step"], ood_before=before, ood_after=after,
                id_before=_one(evals, checkpoint=start, task=task, split="id"),
                id_after=_one(evals, checkpoint=after["checkpoint"], task=task, split="id"),
            ))
    return sorted(out, key=lambda s: (s.task, s.start_step))


def recovery_window(starts: Sequence[RlStart]) -> tuple[int, int] | None:
    """The first and last start step whose RL gain on OOD is significant (None if none is)."""
    steps = [s.start_step for s in starts if s.gain_significant]
    return (min(steps), max(steps)) if steps else None


def edit_results(evals: Sequence[Row], peak_checkpoint: dict[str, str]) -> list[EditResult]:
    """Each edited checkpoint's OOD row next to its unedited target (its parent) and the task's OOD peak."""
    out = []
    for row in sorted(_by(evals, stage="edit", split="ood"), key=lambda r: (r["task"], r["label"])):
        task = row["task"]
        peak = peak_checkpoint.get(task)
        out.append(EditResult(
            task=task, edit=row,
            target=_one(evals, checkpoint=row.get("parent"), task=task, split="ood") if row.get("parent") else None,
            peak=_one(evals, checkpoint=peak, task=task, split="ood") if peak else None,
        ))
    return out


def main_eval_sets(evals: Sequence[Row]) -> list[Row]:
    """Only the rows of each task's most used eval set, so that every comparison is on the same problems."""
    counts: dict[tuple[str, str], int] = {}
    for r in evals:
        key = (r["task"], r.get("eval_set") or "")
        counts[key] = counts.get(key, 0) + 1
    best = {}
    for (task, eval_set), n in sorted(counts.items()):
        if task not in best or n > counts[(task, best[task])]:
            best[task] = eval_set
    return [r for r in evals if (r.get("eval_set") or "") == best[r["task"]]]


def compute(evals: Sequence[Row]) -> Findings:
    """All findings, computed on each task's main eval set."""
    evals = main_eval_sets(evals)
    curves = sft_curves(evals)
    peaks = {c.task: c.peak["checkpoint"] for c in curves}
    return Findings(sft=curves, rl=rl_starts(evals), edits=edit_results(evals, peaks))
