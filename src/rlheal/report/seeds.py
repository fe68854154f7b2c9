"""The paper's findings over several runs of one study (seeds): pooled episodes and the spread over seeds.

Pure functions over the eval and spectral rows of each run (as `Store.rows` returns them). Every run must
have used the same eval sets (problems), so that episodes can be pooled: a step's pooled success is the sum of
solved episodes over the runs out of the sum of episodes, with a Wilson 95 % interval; the spread over seeds is
a Student-t 95 % interval of the per-run values (which needs at least two runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any

from rlheal.report.findings import compute, main_eval_sets
from rlheal.stats import wilson_interval

Row = dict[str, Any]


@dataclass(frozen=True)
class Pooled:
    """Episodes pooled over runs: `solved` of `n`, the Wilson interval, and each run's own rate."""

    solved: int
    n: int
    per_run: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.solved / self.n if self.n else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.solved, self.n)


def pool(rows: Sequence[Row]) -> Pooled:
    """Pool eval rows of the same (checkpoint kind, task, split) from different runs."""
    return Pooled(sum(r["n_solved"] for r in rows), sum(r["n_episodes"] for r in rows),
                  tuple(r["success_rate"] for r in rows))


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t 95 % interval of the mean of per-run values (nan bounds for one run)."""
    from scipy.stats import t

    mean = fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.975, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class SeedFindings:
    """One task's findings over runs: the pooled SFT curve, its peak and end, RL per start step, edits."""

    task: str
    runs: int
    sft: dict[str, dict[int, Pooled]]  # split -> step -> pooled
    peak_step: int  # the step with the highest pooled OOD success (earliest on ties)
    end_step: int
    declines: tuple[float, ...]  # each run's own OOD peak minus its end
    held_out_declines: tuple[float, ...]  # each run's OOD at the other runs' peak step minus its end
    rl: dict[int, tuple[Pooled, Pooled]]  # start step -> (OOD before, OOD after), runs that started there
    edits: dict[str, dict[str, Pooled]]  # edit (`values-top0.2`, `vectors-top0.2`, ...) -> split -> pooled

    @property
    def peak(self) -> Pooled:
        return self.sft["ood"][self.peak_step]

    @property
    def end(self) -> Pooled:
        return self.sft["ood"][self.end_step]

    @property
    def decline_significant(self) -> bool:
        """Whether the pooled peak's interval lies wholly above the pooled end's."""
        return self.peak.ci[0] > self.end.ci[1]


def held_out_declines(ood_by_run: Sequence[dict[int, tuple[int, int]]]) -> tuple[float, ...]:
    """Per run: its OOD success at the peak step of the *other* runs' pooled curve (leave-one-out, earliest
    step on ties) minus its success at its own last step. A run's own maximum over many noisy checkpoints
    overstates its peak (the winner's curse); a step picked without the run's episodes does not.
    `ood_by_run`: per run, step -> (solved, episodes). Empty with fewer than two runs."""
    if len(ood_by_run) < 2:
        return ()
    out = []
    for i, mine in enumerate(ood_by_run):
        others = [run for j, run in enumerate(ood_by_run) if j != i]
        totals = {step: (sum(run[step][0] for run in others if step in run),
                         sum(run[step][1] for run in others if step in run)) for step in mine}
        rated = {step: solved / n for step, (solved, n) in totals.items() if n}
        if not rated:
            continue
        step = max(rated, key=lambda s: (rated[s], -s))
        end = max(mine)
        out.append(mine[step][0] / mine[step][1] - mine[end][0] / mine[end][1])
    return tuple(out)


def seed_findings(runs: Sequence[Sequence[Row]], task: str) -> SeedFindings:
    """Pool one task's eval rows over runs (each run: its `evals` rows). Raises ValueError when the runs
    used different eval sets (their episodes cannot be pooled) or hold no SFT rows for the task."""
    runs = [[r for r in main_eval_sets(rows) if r["task"] == task] for rows in runs]
    sets = {r["eval_set"] for rows in runs for r in rows}
    if len(sets) > 1:
        raise ValueError(f"the runs evaluated {task} on different eval sets ({', '.join(sorted(sets))}): "
                         "pool only runs of one config that differ in --seed")
    sft: dict[str, dict[int, list[Row]]] = {}
    for rows in runs:
        for r in rows:
            if r["stage"] == "sft":
                sft.setdefault(r["split"], {}).setdefault(r["step"], []).append(r)
    if "ood" not in sft:
        raise ValueError(f"no run holds OOD rows of SFT checkpoints for {task}")
    pooled = {split: {step: pool(rows) for step, rows in sorted(by_step.items())} for split, by_step in sft.items()}
    ood = pooled["ood"]
    peak_step = max(ood, key=lambda s: (ood[s].rate, -s))
    per_run = [compute(rows) for rows in runs]
    rl: dict[int, tuple[list[Row], list[Row]]] = {}
    for found in per_run:
        for s in found.rl:
            before, after = rl.setdefault(s.start_step, ([], []))
            before.append(s.ood_before)
            after.append(s.ood_after)
    edits: dict[str, dict[str, list[Row]]] = {}
    for r in (r for rows in runs for r in rows if r["stage"] == "edit"):
        edits.setdefault(r["label"].removeprefix("edit-"), {}).setdefault(r["split"], []).append(r)
    return SeedFindings(
        task=task, runs=len(runs), sft=pooled, peak_step=peak_step, end_step=max(ood),
        declines=tuple(c.decline for found in per_run for c in found.sft),
        held_out_declines=held_out_declines(
            [{r["step"]: (r["n_solved"], r["n_episodes"]) for r in rows if r["stage"] == "sft" and r["split"] == "ood"}
             for rows in runs]),
        rl={step: (pool(b), pool(a)) for step, (b, a) in sorted(rl.items())},
        edits={kind: {split: pool(rows) for split, rows in by_split.items()} for kind, by_split in sorted(edits.items())},
    )


def layer_spectra(runs: Sequence[tuple[Sequence[Row], Sequence[Row]]], k_label: str) -> dict[int, tuple[float, float, int]]:
    """Per decoder layer: (mean |Δσ|/σ, mean top-k left principal angle in degrees, matrices) of each run's
    last SFT checkpoint against its first (the base), averaged over the matrices of every run.
    Each run is (evals, spectral rows)."""
    sums: dict[int, list[float]] = {}
    for evals, spectral in runs:
        sft = sorted((r["step"], r["checkpoint"]) for r in evals if r["stage"] == "sft")
        if not sft:
            continue
        pair = (sft[0][1], sft[-1][1], k_label)
        for r in spectral:
            if (r["reference"], r["target"], r["k_label"]) == pair:
                acc = sums.setdefault(r["layer"], [0.0, 0.0, 0])
                acc[0] += r["mean_abs_rel_sigma_drift"]
                acc[1] += math.degrees(r["top_left_mean"])
                acc[2] += 1
    return {layer: (d / n, a / n, n) for layer, (d, a, n) in sorted(sums.items())}
