"""`rlheal compare`: the paper's findings over several run folders of one study (seeds), as Markdown tables.

Every interval is paired over the shared eval problems and combines runs by a two-way bootstrap over runs and
problems (`rlheal.report.findings`, `rlheal.stats`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlheal.atomic import write_bytes
from rlheal.paths import plain_name
from rlheal.report.direction import Direction, directions
from rlheal.report.findings import Findings, SftCurve, compute, vectors_vs_values
from rlheal.report.text import points, rate
from rlheal.store import Store, StoreError

Row = dict[str, Any]


def _per_run(p) -> str:
    return " / ".join(f"{100 * r['success_rate']:.0f}" for _, r in sorted(p.rows.items()))


def sft_table(c: SftCurve) -> list[str]:
    lines = ["| SFT step | ID success % [95 % CI] | OOD success % [95 % CI] | OOD per run % |", "|---|---|---|---|"]
    for step, ood in c.ood.items():
        id_ = c.id.get(step)
        mark = " (OOD peak)" if step == c.peak_step else ""
        lines.append(f"| {step}{mark} | {rate(id_.rate) if id_ else '–'} | {rate(ood.rate)} | {_per_run(ood)} |")
    return lines


def target_lines(f: Findings, c: SftCurve) -> list[str]:
    d = c.decline
    lines = [
        f"**1. Forgetting.** Over {f.runs} run(s), OOD success peaks at SFT step {c.peak_step} (the step with the "
        f"highest success on the selection half of the eval problems) and ends at step {c.end_step}. Peak minus "
        f"end on the test half, paired by problem: {points(d)} ({'beyond' if d.low > 0 else 'within'} its 95 % "
        "interval; target: at least 10 points).",
        "",
        "**2. RL from SFT checkpoints** (last RL checkpoint of each arm; gains paired with the start; controls "
        "train on shuffled rewards):",
        "",
        "| start step | arm | runs | OOD before % | OOD after % | gain (points) | beyond control (points) | "
        "ID before → after % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    arms = [a for a in f.rl if a.task == c.task]
    for a in arms:
        control = f.beyond_control(a)
        ids = (f"{100 * a.id_before.rate.value:.0f} → {100 * a.id_after.rate.value:.0f}"
               if a.id_before and a.id_after else "–")
        lines.append(f"| {a.start_step} | {a.arm} | {len(a.ood_after.rows)} | {rate(a.ood_before.rate)} | "
                     f"{rate(a.ood_after.rate)} | {points(a.gain)} | {points(control) if control else '–'} | {ids} |")
    if not arms:
        lines.append("| – | – | 0 | – | – | – | – | – |")
    return lines


def edit_lines(f: Findings, c: SftCurve) -> list[str]:
    end_id = c.id.get(c.end_step)
    lines = [f"**4. Edits of the last SFT checkpoint toward the OOD peak** ({c.task}):", "",
             "| edit | OOD success % [95 % CI] | OOD per run % | minus unedited (points) | ID success % [95 % CI] |",
             "|---|---|---|---|---|",
             f"| none (SFT step {c.end_step}) | {rate(c.end.rate)} | {_per_run(c.end)} | – | "
             f"{rate(end_id.rate) if end_id else '–'} |"]
    for e in (e for e in f.edits if e.task == c.task):
        lines.append(f"| {e.kind} | {rate(e.ood.rate)} | {_per_run(e.ood)} | {points(e.gain)} | "
                     f"{rate(e.id.rate) if e.id else '–'} |")
    diff = vectors_vs_values(f.edits, c.task)
    if diff is not None:
        lines += ["", f"Restoring singular vectors minus restoring singular values: {points(diff)}."]
    return lines


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


def spectral_table(layers: dict[int, tuple[float, float, int]], k_label: str) -> list[str]:
    lines = [f"**3. Singular values vs singular vectors** (last SFT checkpoint vs the base, {k_label}, mean over "
             "the matrices of each layer and the runs):", "",
             "| layer | matrices | mean abs(Δσ)/σ % | mean top-k principal angle (°) |", "|---|---|---|---|"]
    lines += [f"| {layer} | {n} | {100 * d:.2f} | {a:.2f} |" for layer, (d, a, n) in layers.items()]
    return lines


def compare_markdown(run_folders: Sequence[str | Path], tasks: Sequence[str] | None = None,
                     figures: str | Path | None = None, links_from: str | Path = ".") -> str:
    """The findings of several run folders (seeds of one config) as Markdown; run folders of several SFT methods
    (`sft.method` and its settings) give the methods side by side instead (`rlheal.report.methods`). With
    `figures`, also writes `figures/findings-<task>.png` per task (`seed_figures.findings_figure`) and links it,
    relative to the folder `links_from` (where the Markdown will live). Raises StoreError for a folder without a store,
    FindingsError when the runs cannot be paired (different eval sets, no per-problem outcomes)."""
    from rlheal.evaluate import EVALS
    from rlheal.report.methods import methods_markdown, variants_of
    from rlheal.spectral.alignment import ALIGNMENT
    from rlheal.spectral.metrics import SPECTRAL

    if len(variants_of(run_folders)) > 1:  # runs of several SFT methods: those side by side, task by task
        return methods_markdown(run_folders, tasks, Path(figures) if figures is not None else None, Path(links_from))
    runs, aligned = [], []
    for folder in run_folders:
        if not (Path(folder) / "results.sqlite").exists():
            raise StoreError(f"{folder} holds no results store (results.sqlite): run `rlheal study` there first")
        with Store(folder, readonly=True) as store:
            runs.append((store.rows(EVALS), store.rows(SPECTRAL)))
            aligned.append((runs[-1][0], store.rows(ALIGNMENT)))
    found = compute([evals for evals, _ in runs])
    curves = [c for c in found.sft if tasks is None or c.task in tasks]
    k_labels = sorted({r["k_label"] for _, spectral in runs for r in spectral})
    k_label = k_labels[0] if k_labels else None
    layers = layer_spectra(runs, k_label) if k_label else {}
    out = [f"Runs: {', '.join(str(f) for f in run_folders)}", "",
           "Intervals: 95 %, paired over the shared eval problems; over several runs a two-way bootstrap over runs "
           "and problems.", ""]
    for c in curves:
        out += [f"## {c.task}", "", *sft_table(c), "", *target_lines(found, c), ""]
        if figures is not None:
            out += [_write_figure(found, c, layers, k_label or "no spectra", Path(figures), Path(links_from)), ""]
    if k_label:
        out += [*spectral_table(layers, k_label), ""]
    for c in curves:
        out += [*edit_lines(found, c), ""]
    out += direction_table(directions(aligned))
    return "\n".join(out).rstrip() + "\n"


def direction_table(found: Sequence[Direction]) -> list[str]:
    """Where each RL arm moved the weights, relative to the way back to the OOD peak (mean over runs)."""
    if not found:
        return []
    lines = ["**Where RL moved the weights** (last RL checkpoint of each arm: cosine of its change from the start "
             "with the direction back to the OOD peak, and the share of that way it covers; mean over matrices):", "",
             "| start step | arm | runs | mean cosine | per run | share of the way back % |", "|---|---|---|---|---|---|"]
    lines += [f"| {d.start_step} | {d.arm} | {len(d.cosine)} | {d.mean_cosine:+.3f} | "
              f"{' / '.join(f'{c:+.3f}' for c in d.cosine)} | {100 * d.mean_back_fraction:.1f} |" for d in found]
    return [*lines, ""]


def _write_figure(f: Findings, c: SftCurve, layers: dict[int, tuple[float, float, int]], k_label: str,
                  folder: Path, links_from: Path) -> str:
    """Write one task's findings figure into `folder`; the Markdown image line that links it."""
    from rlheal.report.figures import to_png
    from rlheal.report.seed_figures import findings_figure

    path = folder / plain_name(f"findings-{c.task}.png", "a figure named after a task of the store")
    write_bytes(path, to_png(findings_figure(f, c, layers, k_label)))
    return f"![{c.task}: the four findings over {f.runs} run(s)]({Path(os.path.relpath(path, links_from)).as_posix()})"
