"""Findings from stored rows alone, over one run or several runs of one study (seeds).

Every run scores every checkpoint on the same eval problems, and each eval row keeps its per-problem outcomes
(`solved_at`), so a kind of checkpoint (an SFT step, the last checkpoint of an RL arm, an edit) is a
(runs × problems) table, and every comparison is paired problem by problem (`rlheal.stats`): intervals are
two-way bootstraps over runs and problems; a difference within one run also carries an exact McNemar p-value.
The OOD peak is chosen on the selection half of the problems (even positions of the eval set) and the decline
is measured on the test half (odd positions), so the peak's luck on its own problems cannot inflate the
decline. Pure functions over row dicts (as `Store.rows` returns them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rlheal.stats import Estimate, estimate, paired_difference

Row = dict[str, Any]
SELECTION, TEST = slice(0, None, 2), slice(1, None, 2)  # the halves of an eval set: peak choice, measurement


class FindingsError(ValueError):
    """Rows that cannot give paired findings (no per-problem outcomes, other eval sets); says what to do."""


def outcomes(row: Row, first_attempt: bool = False) -> list[float]:
    """Per problem of the row's eval set: 1.0 when solved (at the first attempt with `first_attempt`), else 0.0."""
    solved_at = row.get("solved_at")
    if solved_at is None:
        raise FindingsError(f"eval row {row.get('label')} {row.get('task')}/{row.get('split')} has no per-problem "
                            "outcomes (it was stored by an older rlheal): evaluate the checkpoint again")
    return [float(a == 1 if first_attempt else a > 0) for a in solved_at]


def selection_success(row: Row) -> float:
    """The row's success on the selection half of its eval problems: what an OOD peak is chosen by."""
    chosen = outcomes(row)[SELECTION]
    return sum(chosen) / len(chosen)


@dataclass(frozen=True)
class Point:
    """One kind of checkpoint, as it came out in each run: run index -> its eval row (same task, split, eval set)."""

    rows: dict[int, Row]

    def table(self, runs: Sequence[int] | None = None, half: slice = slice(None),
              first_attempt: bool = False) -> list[list[float]]:
        """(runs × problems) outcomes of the given runs (default: all of this point's), on a half of the problems."""
        return [outcomes(self.rows[r], first_attempt)[half] for r in (sorted(self.rows) if runs is None else runs)]

    @cached_property
    def rate(self) -> Estimate:
        return estimate(self.table())

    @property
    def step(self) -> int:
        return next(iter(self.rows.values()))["step"]

    @property
    def label(self) -> str:
        return next(iter(self.rows.values()))["label"]


def difference(after: Point, before: Point, half: slice = slice(None)) -> Estimate:
    """`after − before` on the runs both points have, paired by problem (on `half` of the problems)."""
    runs = sorted(set(after.rows) & set(before.rows))
    if not runs:
        raise FindingsError("the two checkpoints share no run: nothing to pair")
    return paired_difference(after.table(runs, half), before.table(runs, half))


@dataclass(frozen=True)
class SftCurve:
    """One task's SFT trajectory over runs: per split, step -> Point; the OOD peak chosen on the selection half."""

    task: str
    id: dict[int, Point]
    ood: dict[int, Point]
    peak_step: int
    end_step: int

    @property
    def peak(self) -> Point:
        return self.ood[self.peak_step]

    @property
    def end(self) -> Point:
        return self.ood[self.end_step]

    @cached_property
    def decline(self) -> Estimate:
        """OOD success at the peak minus at the end, on the test half (problems the peak was not chosen on)."""
        return difference(self.peak, self.end, TEST)


@dataclass(frozen=True)
class RlArm:
    """RL from one SFT step with one arm (`ppo`, `ppo-control`, `grpo`, ...): the start and the arm's last
    RL checkpoint, per run."""

    task: str
    start_step: int
    arm: str
    ood_before: Point
    ood_after: Point
    id_before: Point | None
    id_after: Point | None

    @cached_property
    def gain(self) -> Estimate:
        """OOD success after RL minus at its start, paired."""
        return difference(self.ood_after, self.ood_before)

    @property
    def is_control(self) -> bool:
        return self.arm.endswith(CONTROL_SUFFIX)


CONTROL_SUFFIX = "-control"  # the arm name of RL with shuffled rewards (`PPOConfig.control`)


@dataclass(frozen=True)
class EditResult:
    """An edit of the last SFT checkpoint toward the OOD peak, per run, next to the unedited target."""

    task: str
    kind: str  # `values-top0.2`, `vectors-top0.2`, `layers-first1`, ...
    ood: Point
    id: Point | None
    target: Point
    peak: Point

    @cached_property
    def gain(self) -> Estimate:
        """OOD success of the edited checkpoint minus the unedited target's, paired."""
        return difference(self.ood, self.target)

    @property
    def recovered_fraction(self) -> float | None:
        """(edited − target) / (peak − target) of the mean rates: 1 = all the lost OOD success is back; None if
        nothing was lost."""
        lost = self.peak.rate.value - self.target.rate.value
        return None if lost <= 0 else (self.ood.rate.value - self.target.rate.value) / lost


@dataclass
class Findings:
    runs: int
    sft: list[SftCurve] = field(default_factory=list)
    rl: list[RlArm] = field(default_factory=list)
    edits: list[EditResult] = field(default_factory=list)

    def curve(self, task: str) -> SftCurve | None:
        return next((c for c in self.sft if c.task == task), None)

    def control_of(self, arm: RlArm) -> RlArm | None:
        """The shuffled-reward control arm of the same task and start, if it ran."""
        return next((a for a in self.rl if a.task == arm.task and a.start_step == arm.start_step
                     and a.arm == arm.arm + CONTROL_SUFFIX), None)

    def beyond_control(self, arm: RlArm) -> Estimate | None:
        """OOD success after RL minus after its control arm (same start, shuffled rewards), paired."""
        control = self.control_of(arm)
        return None if control is None else difference(arm.ood_after, control.ood_after)

    def beyond_peak(self, arm: RlArm) -> Estimate | None:
        """OOD success after RL minus at the SFT OOD peak, on the test half."""
        curve = self.curve(arm.task)
        return None if curve is None else difference(arm.ood_after, curve.peak, TEST)


# --- grouping rows into points ------------------------------------------------------------------------------
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


def rl_arm(label: str) -> str:
    """The arm of an RL checkpoint from its label `<start>+<arm>-<update>` (`sft-45+ppo-control-400` ->
    `ppo-control`)."""
    return label.rsplit("+", 1)[-1].rsplit("-", 1)[0]


def _group(runs: Sequence[Sequence[Row]], key) -> dict[Any, Point]:
    """Points keyed by `key(row, run rows)` (rows whose key is None are skipped); a later row of a run replaces
    an earlier one with the same key."""
    groups: dict[Any, dict[int, Row]] = {}
    for index, rows in enumerate(runs):
        for row in rows:
            k = key(row, rows)
            if k is not None:
                groups.setdefault(k, {})[index] = row
    return {k: Point(rows) for k, rows in groups.items()}


def _sft_curves(runs: Sequence[Sequence[Row]]) -> list[SftCurve]:
    points = _group(runs, lambda r, _: (r["task"], r["split"], r["step"]) if r["stage"] == "sft" else None)
    curves = []
    for task in sorted({task for task, _, _ in points}):
        by_split = {split: {step: p for (t, s, step), p in sorted(points.items()) if t == task and s == split
                            and len(p.rows) == len(runs)} for split in ("id", "ood")}
        ood = by_split["ood"]
        if not ood:
            continue
        selection = {step: estimate(p.table(half=SELECTION)).value for step, p in ood.items()}
        peak = max(selection, key=lambda s: (selection[s], -s))
        curves.append(SftCurve(task, by_split["id"], ood, peak_step=peak, end_step=max(ood)))
    return curves


def _rl_arms(runs: Sequence[Sequence[Row]]) -> list[RlArm]:
    def start_step(row: Row, rows: Sequence[Row]) -> int | None:
        return next((r["step"] for r in rows if r["checkpoint"] == row["parent"] and r["stage"] == "sft"), None)

    last: dict[tuple[int, str, int, str, str], Row] = {}  # (run, task, start step, arm, split) -> last RL row
    for index, rows in enumerate(runs):
        for row in rows:
            if row["stage"] != "rl" or not row.get("parent"):
                continue
            step = start_step(row, rows)
            if step is None:
                continue
            k = (index, row["task"], step, rl_arm(row["label"]), row["split"])
            if k not in last or row["step"] > last[k]["step"]:
                last[k] = row
    arms = []
    for task, step, arm in sorted({(t, s, a) for _, t, s, a, _ in last}):
        def after(split: str, task=task, step=step, arm=arm) -> Point | None:
            rows = {i: r for (i, t, s, a, sp), r in last.items() if (t, s, a, sp) == (task, step, arm, split)}
            return Point(rows) if rows else None

        def before(split: str, runs_with: set[int], task=task, step=step) -> Point | None:
            rows = {i: r for i, rs in enumerate(runs) if i in runs_with for r in rs
                    if r["stage"] == "sft" and r["task"] == task and r["split"] == split and r["step"] == step}
            return Point(rows) if rows else None

        ood_after = after("ood")
        if ood_after is None:
            continue
        ood_before = before("ood", set(ood_after.rows))
        if ood_before is None:
            continue
        id_after = after("id")
        arms.append(RlArm(task, step, arm, ood_before, ood_after,
                          before("id", set(id_after.rows)) if id_after else None, id_after))
    return arms


def _edits(runs: Sequence[Sequence[Row]], curves: Sequence[SftCurve]) -> list[EditResult]:
    points = _group(runs, lambda r, _: (r["task"], r["label"].removeprefix("edit-"), r["split"])
                    if r["stage"] == "edit" else None)
    results = []
    for (task, kind, split), ood in sorted(points.items()):
        curve = next((c for c in curves if c.task == task), None)
        if split != "ood" or curve is None:
            continue
        results.append(EditResult(task, kind, ood, points.get((task, kind, "id")), curve.end, curve.peak))
    return results


def compute(runs: Sequence[Sequence[Row]]) -> Findings:
    """All findings over runs (each: its `evals` rows, on each task's main eval set). Raises FindingsError when
    the runs used different eval sets for a task (their problems differ, so nothing can be paired)."""
    runs = [main_eval_sets(rows) for rows in runs]
    for task in sorted({r["task"] for rows in runs for r in rows}):
        sets = {r["eval_set"] for rows in runs for r in rows if r["task"] == task}
        if len(sets) > 1:
            raise FindingsError(f"the runs evaluated {task} on different eval sets ({', '.join(sorted(sets))}): "
                                "compare only runs of one config that differ in --seed")
    curves = _sft_curves(runs)
    return Findings(runs=len(runs), sft=curves, rl=_rl_arms(runs), edits=_edits(runs, curves))


def recovery_window(arms: Sequence[RlArm]) -> tuple[int, int] | None:
    """The first and last start step whose RL arm (not a control) raised OOD success beyond its interval."""
    steps = [a.start_step for a in arms if not a.is_control and a.gain.low > 0]
    return (min(steps), max(steps)) if steps else None


def vectors_vs_values(edits: Sequence[EditResult], task: str) -> Estimate | None:
    """OOD success of the `vectors` edit minus the `values` edit of the same k, paired; None without both."""
    by_kind = {e.kind: e for e in edits if e.task == task}
    for kind, edit in by_kind.items():
        if kind.startswith("vectors-"):
            values = by_kind.get("values-" + kind.removeprefix("vectors-"))
            if values is not None:
                return difference(edit.ood, values.ood)
    return None
