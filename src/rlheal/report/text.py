"""Findings as plain sentences, each number followed by the stored row it came from."""

from __future__ import annotations

from rlheal.report.findings import Findings, RlStart, recovery_window


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(row: dict) -> str:
    return f"{_pct(row['success_rate'])} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _src(row: dict) -> str:
    return f"(row: {row['label']}, {row['task']}/{row['split']}, n={row['n_episodes']})"


def sft_sentences(findings: Findings) -> list[str]:
    out = []
    for c in findings.sft:
        peak, end = c.peak, c.end
        s = (f"{c.task}: OOD success peaks at SFT step {peak['step']} with {_ci(peak)} {_src(peak)}"
             f" and ends at step {end['step']} with {_ci(end)} {_src(end)}: ")
        if c.decline <= 0 or peak["step"] == end["step"]:
            s += "no decline (the last checkpoint is as good on OOD as the peak)."
        else:
            verdict = "outside the 95 % intervals" if c.decline_significant else "within the 95 % intervals (not significant)"
            s += f"a decline of {100 * c.decline:.1f} points, {verdict}."
        if c.id_at_peak and c.id_at_end:
            s += (f" ID success is {_pct(c.id_at_peak['success_rate'])} at the OOD peak and "
                  f"{_pct(c.id_at_end['success_rate'])} at the end.")
        out.append(s)
    return out


def _start_sentence(s: RlStart) -> str:
    word = ("raises" if s.gain_significant else "lowers" if s.loss_significant else "does not significantly change")
    return (f"{s.task}: RL from SFT step {s.start_step} {word} OOD success: {_ci(s.ood_before)} → "
            f"{_ci(s.ood_after)} ({100 * s.gain:+.1f} points) {_src(s.ood_after)}.")


def rl_sentences(findings: Findings) -> list[str]:
    out = [_start_sentence(s) for s in findings.rl]
    for task in sorted({s.task for s in findings.rl}):
        starts = [s for s in findings.rl if s.task == task]
        window = recovery_window(starts)
        if window is None:
            out.append(f"{task}: no RL start raised OOD success significantly: no recovery window at this scale.")
        else:
            out.append(f"{task}: RL recovers OOD success from SFT steps {window[0]}–{window[1]}.")
        peak = next((c.peak for c in findings.sft if c.task == task), None)
        if peak is not None:
            above = [s for s in starts if s.ood_after["ci_low"] > peak["ci_high"]]
            out.append(f"{task}: RL exceeds the SFT OOD peak beyond the intervals from "
                       f"{len(above)} of {len(starts)} starts.")
    return out


def edit_sentences(findings: Findings) -> list[str]:
    out = []
    for e in findings.edits:
        frac = e.recovered_fraction
        how = "n/a (the target lost no OOD success)" if frac is None else f"{100 * frac:.0f} % of the lost OOD success"
        out.append(f"{e.task}: edit {e.edit['label']} gives {_ci(e.edit)} {_src(e.edit)}: recovers {how}.")
    return out
