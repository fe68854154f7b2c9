"""The pre-registered healing test (docs/RESULTS.md, "Protocol") over the run folders of the default study's
seeds: every target's number with its paired 95 % interval and a met / not-met verdict, as Markdown.

    python benchmarks/healing_test.py runs/default-s0 runs/default-s1 runs/default-s2 [--revision] [--out FILE]

RL starts are grouped by their window role (before-peak, peak, decline, mid-decline, end), which each seed fills
from its own SFT curve (`rlheal.study.window_roles`), so seeds whose roles fall on different steps still pair.
`--revision` also scores the SFT peak, the SFT end and every RL arm's last checkpoint with 5 attempts (the
feedback probe: rows with their own eval set in each run's store) and reports what revision adds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rlheal.evaluate import EVALS, eval_set_id
from rlheal.report.compare import layer_spectra
from rlheal.report.direction import directions
from rlheal.report.findings import (
    TEST,
    Findings,
    Point,
    compute,
    difference,
    main_eval_sets,
    rl_arm,
    vectors_vs_values,
)
from rlheal.report.text import points, rate
from rlheal.spectral.alignment import ALIGNMENT
from rlheal.spectral.metrics import SPECTRAL
from rlheal.stats import estimate, paired_difference
from rlheal.store import Store
from rlheal.study import WINDOW_ROLES, window_roles

Row = dict[str, Any]
TASK = "det"
ARMS = ("ppo", "ppo-control")


def load(folder: Path) -> tuple[list[Row], list[Row], list[Row]]:
    with Store(folder, readonly=True) as store:
        return store.rows(EVALS), store.rows(SPECTRAL), store.rows(ALIGNMENT)


def sft_row(rows: list[Row], step: int, split: str) -> Row | None:
    return next((r for r in rows if r["stage"] == "sft" and r["task"] == TASK and r["split"] == split
                 and r["step"] == step), None)


def last_rl_row(rows: list[Row], start: Row, arm: str, split: str) -> Row | None:
    mine = [r for r in rows if r["stage"] == "rl" and r["parent"] == start["checkpoint"] and r["task"] == TASK
            and r["split"] == split and rl_arm(r["label"]) == arm]
    return max(mine, key=lambda r: r["step"], default=None)


def role_points(runs: list[list[Row]], roles: list[dict[str, int | None]], role: str, arm: str
                ) -> tuple[Point, Point] | None:
    """(SFT start, RL arm's last checkpoint) OOD points of one window role over the runs that have both."""
    before, after = {}, {}
    for i, (rows, steps) in enumerate(zip(runs, roles, strict=True)):
        step = steps[role]
        start = sft_row(rows, step, "ood") if step else None
        end = last_rl_row(rows, start, arm, "ood") if start else None
        if start and end:
            before[i], after[i] = start, end
    return (Point(before), Point(after)) if before else None


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def rl_section(runs: list[list[Row]], roles: list[dict[str, int | None]]) -> tuple[list[str], bool, bool]:
    """The RL table by role and arm, and the verdicts of T2 (healing) and T3 (no overshoot)."""
    lines = ["| role | steps per seed | arm | runs | OOD start % | OOD after RL % | gain | beyond control | "
             "after RL minus SFT peak (test half) |", "|---|---|---|---|---|---|---|---|---|"]
    gains, beyond, overshoot = {}, {}, []
    for role in WINDOW_ROLES:
        steps = " / ".join(str(r[role]) for r in roles)
        pts = {arm: role_points(runs, roles, role, arm) for arm in ARMS}
        peak = {i: sft_row(rows, r["peak"], "ood") for i, (rows, r) in enumerate(zip(runs, roles, strict=True))}
        for arm, found in pts.items():
            if found is None:
                continue
            start, after = found
            gain = difference(after, start)
            control = difference(after, pts["ppo-control"][1]) if arm == "ppo" and pts["ppo-control"] else None
            above = difference(after, Point({i: peak[i] for i in after.rows}), TEST)
            if arm == "ppo":
                gains[role], beyond[role] = gain, control
                overshoot.append(above.low > 0)
            lines.append(f"| {role} | {steps} | {arm} | {len(after.rows)} | {rate(start.rate)} | {rate(after.rate)} | "
                         f"{points(gain)} | {points(control) if control else '–'} | {points(above)} |")
    heals = [r for r in ("decline", "mid-decline") if r in gains]
    t2 = bool(heals) and all(gains[r].value >= 0.05 and gains[r].low > 0 and beyond[r] is not None
                             and beyond[r].low > 0 for r in heals) \
        and all(gains[r].value < 0.05 or gains[r].low <= 0 for r in ("peak", "end") if r in gains)
    return lines, t2, not any(overshoot)


def spectra_section(runs: list[tuple[list[Row], list[Row]]]) -> tuple[list[str], bool]:
    k_labels = sorted({r["k_label"] for _, spectral in runs for r in spectral})
    if not k_labels:
        return ["No spectral rows."], False
    layers = layer_spectra(runs, k_labels[0])
    lines = ["| layer | matrices | mean abs(Δσ)/σ % | mean top-k angle (°) | sine of the angle % | σ drift < half the "
             "sine |", "|---|---|---|---|---|---|"]
    ok = True
    for layer, (drift, angle, n) in layers.items():
        sine = math.sin(math.radians(angle))
        ok &= drift < sine / 2
        lines.append(f"| {layer} | {n} | {100 * drift:.2f} | {angle:.2f} | {100 * sine:.2f} | "
                     f"{'yes' if drift < sine / 2 else 'no'} |")
    return [f"({k_labels[0]}, last SFT checkpoint vs the base, mean over matrices and seeds)", "", *lines], ok


def direction_lines(runs: list[tuple[list[Row], list[Row]]], roles: list[dict[str, int | None]]) -> list[str]:
    lines = ["| role | arm | per seed: mean cosine with the way back to the peak | share of the way back % |",
             "|---|---|---|---|"]
    for role in WINDOW_ROLES:
        for arm in ARMS:
            cos, back = [], []
            for (evals, alignment), steps in zip(runs, roles, strict=True):
                found = [d for d in directions([(evals, alignment)]) if d.start_step == steps[role] and d.arm == arm]
                cos += [d.mean_cosine for d in found]
                back += [d.mean_back_fraction for d in found]
            if cos:
                lines.append(f"| {role} | {arm} | {' / '.join(f'{c:+.3f}' for c in cos)} | "
                             f"{' / '.join(f'{100 * b:.1f}' for b in back)} |")
    return lines


def revision_lines(folders: list[Path], runs: list[list[Row]], roles: list[dict[str, int | None]]) -> list[str]:
    """Score the SFT peak, the SFT end and every RL arm's last checkpoint with 5 attempts (stored in each run) and
    compare with their first attempts, paired."""
    import json

    from rlheal.evaluate import evaluate
    from rlheal.rollout import Decoding

    kinds: dict[str, dict[int, str]] = {}
    for i, (rows, steps) in enumerate(zip(runs, roles, strict=True)):
        for role in ("peak", "end"):
            kinds.setdefault(f"SFT {role}", {})[i] = sft_row(rows, steps[role], "ood")["checkpoint"]
        for role in WINDOW_ROLES:
            start = sft_row(rows, steps[role], "ood") if steps[role] else None
            for arm in ARMS:
                end = last_rl_row(rows, start, arm, "ood") if start else None
                if end:
                    kinds.setdefault(f"RL {role} {arm}", {})[i] = end["checkpoint"]
    five: dict[str, dict[int, Row]] = {}
    for i, folder in enumerate(folders):
        cfg = json.loads((folder / "study.json").read_text())["config"]["eval"]
        decoding = Decoding(temperature=cfg["temperature"], max_new_tokens=cfg["max_new_tokens"], seed=cfg["seed"])
        checkpoints = sorted({c[i] for c in kinds.values() if i in c})
        with Store(folder) as store:
            rows = evaluate(store, checkpoints, [TASK], ["ood"], episodes=cfg["episodes"], seed=cfg["seed"],
                            batch_size=cfg["batch_size"], max_attempts=5, decoding=decoding)
        by_checkpoint = {r["checkpoint"]: r for r in rows}
        for kind, ckpts in kinds.items():
            if i in ckpts:
                five.setdefault(kind, {})[i] = by_checkpoint[ckpts[i]]
    name = eval_set_id(seed=0, episodes=0, max_attempts=5, profile="compact", decoding=Decoding())
    lines = [f"(eval sets like `{name.replace('-n0', '-nN')}`: the same problems, up to 5 attempts with the det "
             "verifier's feedback, which names no value)", "",
             "| checkpoint | runs | first attempt % | up to 5 attempts % | revision adds |", "|---|---|---|---|---|"]
    for kind, rows in five.items():
        p = Point(rows)
        first = p.table(first_attempt=True)
        lines.append(f"| {kind} | {len(rows)} | {rate(estimate(first))} | {rate(p.rate)} | "
                     f"{points(paired_difference(p.table(), first))} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--revision", action="store_true", help="also the 5-attempt feedback probe (evaluates)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    loaded = [load(folder) for folder in args.runs]
    runs = [main_eval_sets(evals) for evals, _, _ in loaded]
    found: Findings = compute(runs)
    curve = found.curve(TASK)
    roles = [window_roles([r for r in rows if r["stage"] == "sft" and r["task"] == TASK]) for rows in runs]
    decline = curve.decline
    t1 = decline.value >= 0.10 and decline.low > 0
    rl_lines, t2, t3 = rl_section(runs, roles)
    spectra, t4 = spectra_section([(evals, spectral) for evals, spectral, _ in loaded])
    vv = vectors_vs_values(found.edits, TASK)
    t5 = vv is not None and vv.value >= 0.05 and vv.low > 0
    out = [f"Runs: {', '.join(map(str, args.runs))}", "",
           f"**T1, forgetting** {verdict(t1)}: OOD peak (step {curve.peak_step}, chosen on the selection half) "
           f"{rate(curve.peak.rate)} → end (step {curve.end_step}) {rate(curve.end.rate)}; peak minus end on the "
           f"test half {points(decline)}.", "",
           f"**T2, healing** {verdict(t2)}; **T3, no overshoot** {verdict(t3)}. RL by window role (OOD success, "
           "paired by problem; gain = after RL minus its start; beyond control = after RL minus its control arm's):",
           "", *rl_lines, "",
           f"**T4, σ vs vectors** {verdict(t4)}:", "", *spectra, "",
           f"**T5, edits** {verdict(t5)}: restoring the peak's top singular vectors minus its singular values: "
           f"{points(vv) if vv else 'no edits'}.", "",
           "**Probe (a), where RL moved the weights** (last checkpoint of each arm):", "",
           *direction_lines([(evals, alignment) for evals, _, alignment in loaded], roles), ""]
    if args.revision:
        out += ["**Probe (b), feedback**:", "", *revision_lines(args.runs, runs, roles), ""]
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
