"""Where RL moved the weights: the alignment rows of each RL arm's last checkpoint, summarised per start and
arm (mean over matrices, then over runs). Pure functions over stored rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlheal.report.findings import rl_arm

Row = dict[str, Any]


@dataclass(frozen=True)
class Direction:
    """One RL arm from one SFT step: mean cosine with the way back to the OOD peak, and mean share of that way
    covered, per run (over the decoder matrices of the arm's last checkpoint)."""

    start_step: int
    arm: str
    cosine: tuple[float, ...]
    back_fraction: tuple[float, ...]

    @property
    def mean_cosine(self) -> float:
        return sum(self.cosine) / len(self.cosine)

    @property
    def mean_back_fraction(self) -> float:
        return sum(self.back_fraction) / len(self.back_fraction)


def _mean(values: list[float | None]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]  # NaN is stored as NULL
    return sum(values) / len(values) if values else math.nan


def directions(runs: Sequence[tuple[Sequence[Row], Sequence[Row]]]) -> list[Direction]:
    """Per (start step, arm) with alignment rows in every run that has it; each run is (evals, alignment)."""
    found: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    for evals, alignment in runs:
        steps = {r["checkpoint"]: r["step"] for r in evals if r["stage"] == "sft"}
        last: dict[tuple[int, str], Row] = {}
        for r in evals:
            if r["stage"] == "rl" and r.get("parent") in steps:
                key = (steps[r["parent"]], rl_arm(r["label"]))
                if key not in last or r["step"] > last[key]["step"]:
                    last[key] = r
        for key, row in last.items():
            mine = [a for a in alignment if a["target"] == row["checkpoint"]]
            if mine:
                cosines, shares = found.setdefault(key, ([], []))
                cosines.append(_mean([a["cosine"] for a in mine]))
                shares.append(_mean([a["back_fraction"] for a in mine]))
    return [Direction(step, arm, tuple(c), tuple(b)) for (step, arm), (c, b) in sorted(found.items())]


def direction_sentences(found: Sequence[Direction]) -> list[str]:
    return [f"RL arm {d.arm} from SFT step {d.start_step}: its weight change has a mean cosine of "
            f"{d.mean_cosine:+.3f} with the direction back to the OOD peak and covers {100 * d.mean_back_fraction:.1f} % "
            f"of that way (projected), over the decoder matrices of its last checkpoint"
            + (f", mean of {len(d.cosine)} runs ({', '.join(f'{c:+.3f}' for c in d.cosine)})." if len(d.cosine) > 1
               else ".") for d in found]
