"""The study report: `RUN/report.html` (self-contained) and `RUN/report/*.png`, rebuilt from the store alone."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rlheal.atomic import write_bytes, write_text
from rlheal.report import figures, text
from rlheal.report.direction import direction_sentences, directions
from rlheal.report.findings import Findings, compute
from rlheal.report.header import run_facts
from rlheal.report.html import Section, render
from rlheal.store import Store, StoreError

REPORT_HTML = "report.html"
FIGURE_DIR = "report"


def spectral_sentences(spectral: list[dict[str, Any]], steps: dict[str, int], labels: dict[str, str],
                       references: dict[str, str], k_label: str) -> list[str]:
    """σ drift against rotation for the last SFT checkpoint (`steps`: SFT checkpoint -> step) compared with
    each reference."""
    out = []
    for name, ref in references.items():
        rows = [r for r in spectral if r["reference"] == ref and r["k_label"] == k_label and r["target"] in steps]
        if not rows:
            continue
        last = max({r["target"] for r in rows}, key=lambda t: steps[t])
        mine = [r for r in rows if r["target"] == last]
        drift = 100 * float(np.nanmean([r["mean_abs_rel_sigma_drift"] for r in mine]))
        angle = float(np.degrees(np.nanmean([r["top_left_mean"] for r in mine])))
        off = float(np.nanmean([r["offdiag_share"] for r in mine if r.get("offdiag_share") is not None] or [np.nan]))
        out.append(f"{labels.get(last, last)} vs {name} ({labels.get(ref, ref)}), over {len(mine)} matrices, {k_label}: "
                   f"singular values moved by {drift:.2f} % on average (mean |Δσ|/σ), while the top-k left "
                   f"singular subspaces rotated by {angle:.2f}° on average; {100 * off:.0f} % of the update's "
                   f"energy inside the top-k block is off-diagonal (rotation) rather than diagonal (rescaling).")
    return out


def build_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write `out` (default RUN/report.html) and its figures (`report/*.png` beside it) from RUN/results.sqlite,
    opened read-only; returns the HTML path. A store that holds no rows is a StoreError, and the report already
    there is kept."""
    from rlheal.evaluate import EVALS
    from rlheal.spectral.alignment import ALIGNMENT
    from rlheal.spectral.metrics import SPECTRAL
    from rlheal.train.ppo import RL_UPDATES
    from rlheal.train.sft import LOSSES

    run = Path(run)
    if not (run / "results.sqlite").exists():
        raise StoreError(f"{run} holds no results store (results.sqlite): run a study or `rlheal eval` first")
    with Store(run, readonly=True) as store:
        evals, losses = store.rows(EVALS), store.rows(LOSSES)
        updates, spectral = store.rows(RL_UPDATES), store.rows(SPECTRAL)
        alignment = store.rows(ALIGNMENT)
    if not (evals or losses or updates or spectral):
        raise StoreError(f"{store.path} holds no results: no report was written (a report already there is kept); "
                         "run a study or `rlheal eval` first")
    out = Path(out) if out is not None else run / REPORT_HTML
    found: Findings = compute([evals])
    sft_steps = {r["checkpoint"]: r["step"] for r in evals if r["stage"] == "sft"}
    labels = {r["checkpoint"]: r["label"] for r in evals}
    peaks = {c.task: c.peak.rows[0]["checkpoint"] for c in found.sft}
    references = _spectral_references(spectral, evals, peaks)
    k_label = sorted({r["k_label"] for r in spectral})[0] if spectral else ""

    fig_dir = out.parent / FIGURE_DIR
    pngs: dict[str, bytes] = {}

    def figure(name: str, fig) -> bytes:
        pngs[name] = figures.to_png(fig)
        return pngs[name]

    sections = [
        Section("1. OOD forgetting during SFT", text.sft_sentences(found),
                figure("sft_curves.png", figures.sft_curves(evals, losses, found.sft)) if found.sft else None,
                "Success (episodes solved, with 95 % Wilson bands) on the held-out ID and OOD eval sets, and the "
                "teacher-forced answer loss on held-out ID and OOD problems, at every SFT checkpoint.",
                empty_note="No SFT checkpoints have been evaluated yet."),
        Section("2. RL from SFT checkpoints", text.rl_sentences(found),
                figure("rl_recovery.png", figures.rl_recovery(found.rl, found.sft)) if found.rl else None,
                "OOD success of each SFT checkpoint RL started from, before and after RL on ID problems only; "
                "the dashed line is the best OOD success SFT reached.", empty_note="No RL runs yet."),
        Section("3. The recovery window", (),
                figure("rl_window.png", figures.rl_window(found.rl)) if found.rl else None,
                "RL's OOD gain against the ID success of its start checkpoint.", empty_note="No RL runs yet."),
        Section("4. Advantage distributions", _advantage_sentences(updates, labels),
                figure("advantages.png", figures.advantages(updates, labels)) if updates else None,
                "Pooled per-update advantage histograms for each RL start (the paper links recovery to a "
                "flat rather than skewed distribution).", empty_note="No RL updates stored."),
        Section("5. Singular values vs singular vectors",
                spectral_sentences(spectral, sft_steps, labels, references, k_label),
                figure("spectral_summary.png", figures.spectral_summary(spectral, evals, references, k_label))
                if references else None,
                "Mean relative singular-value drift and mean principal angle of the top-k singular subspaces, "
                "averaged over the analysed matrices, against each reference: SFT checkpoints by SFT step (top); "
                "RL checkpoints by RL update, one line per start and arm (below).",
                empty_note="No spectral rows stored."),
    ]
    if references:
        name, ref = next(iter(references.items()))
        sections.append(Section(f"6. Per layer, against {name}", (),
                                figure("spectral_layers.png", figures.spectral_heatmaps(spectral, evals, ref, k_label)),
                                "SFT checkpoints; mean over the modules of each decoder layer."))
    sections.append(Section("7. Weight edits", text.edit_sentences(found),
                            figure("edits.png", figures.edits(found.edits)) if found.edits else None,
                            "OOD success after restoring singular values, singular vectors or whole early layers "
                            "of the OOD-peak checkpoint into the last SFT checkpoint.", empty_note="No edits evaluated."))
    sections.append(Section("8. Where RL moved the weights", direction_sentences(directions([(evals, alignment)])),
                            None, "Per RL arm, the cosine between its weight change from its SFT start and the "
                            "direction from that start back to the OOD peak (1: straight back; 0: somewhere new).",
                            empty_note="No alignment rows stored (RL from the OOD peak itself has no way back)."))
    sections.append(Section("All evaluation rows", (), None, "", _eval_table(evals)))

    for name, data in pngs.items():
        write_bytes(fig_dir / name, data)
    meta = (f"Run folder {run.resolve()} · built {datetime.now(UTC).isoformat(timespec='seconds')} from "
            f"{len(evals)} eval rows, {len(losses)} loss rows, {len(updates)} RL update rows, {len(spectral)} "
            "spectral rows of results.sqlite")
    write_text(out, render("rlheal study report", meta, sections, facts=run_facts(run, evals)))
    return out


def _spectral_references(spectral, evals, peaks: dict[str, str]) -> dict[str, str]:
    """Name the references found in the spectral rows: "base" (an SFT step-0 or base row) or "OOD peak"."""
    step0 = {r["checkpoint"] for r in evals if r["stage"] in ("base",) or (r["stage"] == "sft" and r["step"] == 0)}
    names = {}
    for ref in sorted({r["reference"] for r in spectral}):
        if ref in step0:
            names["base"] = ref
        elif ref in peaks.values():
            names["OOD peak"] = ref
        else:
            names[ref] = ref
    return names


def _advantage_sentences(updates, labels) -> list[str]:
    by_start = defaultdict(list)
    for u in updates:
        by_start[u["start"]].append(u)
    out = []
    for start, rows in by_start.items():
        skews = [r["adv_skew"] for r in rows if r.get("adv_skew") is not None]
        silent = sum(1 for r in rows if r.get("no_signal"))
        s = f"RL from {labels.get(start, start)}: {len(rows)} updates, mean advantage skewness "
        s += f"{np.mean(skews):+.2f}" if skews else "n/a"
        if silent:
            s += f"; {silent} update(s) had no learning signal (every attempt got the same reward)"
        out.append(s + ".")
    return out


def _eval_table(evals):
    header = ["label", "stage", "step", "task", "split", "success %", "95 % CI", "n", "format err %",
              "mean attempts", "first-attempt %"]
    rows = [[r["label"], r["stage"], r["step"], r["task"], r["split"], f"{100 * r['success_rate']:.1f}",
             f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]", r["n_episodes"],
             f"{100 * (r.get('format_error_rate') or 0):.1f}", r.get("mean_attempts"),
             f"{100 * (r.get('first_attempt_acc') or 0):.1f}"]
            for r in sorted(evals, key=lambda r: (r["stage"] != "sft", r["stage"], r["task"], r["step"], r["split"]))]
    return header, rows
