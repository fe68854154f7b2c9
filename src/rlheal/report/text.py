"""Findings as plain sentences, each number with its 95 % interval and the checkpoints it came from."""

from __future__ import annotations

from rlheal.report.findings import Findings, Point, RlArm, recovery_window, vectors_vs_values
from rlheal.stats import Estimate


def rate(e: Estimate) -> str:
    """`14.0 % [8.5, 22.1]`: a success rate with its interval."""
    return f"{100 * e.value:.1f} % [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def points(e: Estimate) -> str:
    """`+4.2 points [1.4, 6.9]`: a paired difference with its interval (and McNemar's p within one run)."""
    p = "" if e.p_value is None else f", McNemar p = {e.p_value:.3g}"
    return f"{100 * e.value:+.1f} points [{100 * e.low:+.1f}, {100 * e.high:+.1f}{p}]"


def _src(p: Point) -> str:
    return f"({p.label}, {len(p.rows)} run(s) × {p.rate.problems} problems)"


def _design(f: Findings) -> str:
    return ("paired over the same problems, two-way bootstrap over runs and problems" if f.runs > 1
            else "paired over the same problems")


def sft_sentences(f: Findings) -> list[str]:
    out = []
    for c in f.sft:
        s = (f"{c.task}: OOD success peaks at SFT step {c.peak_step} (chosen on the selection half of the eval "
             f"problems) with {rate(c.peak.rate)} {_src(c.peak)} and ends at step {c.end_step} with "
             f"{rate(c.end.rate)}. ")
        if c.peak_step == c.end_step:
            s += "The last checkpoint is the peak: no decline."
        else:
            d = c.decline
            verdict = "a decline beyond its interval" if d.low > 0 else "not a decline beyond its interval"
            s += f"Peak minus end on the held-back test half, {_design(f)}: {points(d)}, {verdict}."
        if c.peak_step in c.id and c.end_step in c.id:
            s += (f" ID success is {rate(c.id[c.peak_step].rate)} at the OOD peak and {rate(c.id[c.end_step].rate)} "
                  "at the end.")
        out.append(s)
    return out


def _arm_sentence(f: Findings, a: RlArm) -> str:
    g = a.gain
    word = "raises" if g.low > 0 else "lowers" if g.high < 0 else "does not clearly change"
    s = (f"{a.task}: {a.arm} from SFT step {a.start_step} {word} OOD success: {rate(a.ood_before.rate)} → "
         f"{rate(a.ood_after.rate)}, {points(g)} {_src(a.ood_after)}.")
    control = f.beyond_control(a)
    if control is not None:
        s += f" Beyond its shuffled-reward control arm: {points(control)}."
    return s


def rl_sentences(f: Findings) -> list[str]:
    out = [_arm_sentence(f, a) for a in f.rl]
    for task in sorted({a.task for a in f.rl}):
        arms = [a for a in f.rl if a.task == task]
        window = recovery_window(arms)
        if window is None:
            out.append(f"{task}: no RL arm raised OOD success beyond its interval: no recovery window here.")
        else:
            out.append(f"{task}: RL raised OOD success beyond its interval from SFT steps {window[0]}–{window[1]}.")
        above = [a for a in arms if not a.is_control and (b := f.beyond_peak(a)) is not None and b.low > 0]
        real = [a for a in arms if not a.is_control]
        if f.curve(task) is not None:
            out.append(f"{task}: RL exceeds the SFT OOD peak beyond the interval (test half) from {len(above)} of "
                       f"{len(real)} starts.")
    return out


def edit_sentences(f: Findings) -> list[str]:
    out = []
    for e in f.edits:
        frac = e.recovered_fraction
        how = "n/a (the target lost no OOD success)" if frac is None else f"{100 * frac:.0f} % of the lost OOD success"
        out.append(f"{e.task}: edit {e.kind} gives {rate(e.ood.rate)} {_src(e.ood)}, {points(e.gain)} over the "
                   f"unedited checkpoint: recovers {how}.")
    for task in sorted({e.task for e in f.edits}):
        diff = vectors_vs_values(f.edits, task)
        if diff is not None:
            out.append(f"{task}: restoring singular vectors minus restoring singular values: {points(diff)}.")
    return out
