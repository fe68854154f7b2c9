"""`rlheal compare`: the paper's findings over several run folders of one study (seeds), as Markdown tables."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from rlheal.atomic import write_bytes
from rlheal.paths import plain_name
from rlheal.report.seeds import Pooled, SeedFindings, layer_spectra, seed_findings, seed_interval
from rlheal.store import Store, StoreError


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def _cell(p: Pooled) -> str:
    low, high = p.ci
    return f"{_pct(p.rate)} [{_pct(low)}, {_pct(high)}]"


def _runs_cell(p: Pooled) -> str:
    return " / ".join(f"{100 * r:.0f}" for r in p.per_run)


def _seed_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, low, high = seed_interval(values)
    return f"{100 * mean:+.1f} [{_pct(low)}, {_pct(high)}]"


def sft_table(f: SeedFindings) -> list[str]:
    lines = ["| SFT step | ID success % [95 % CI] | OOD success % [95 % CI] | OOD per run % |", "|---|---|---|---|"]
    for step, ood in f.sft["ood"].items():
        id_ = f.sft.get("id", {}).get(step)
        mark = " (pooled peak)" if step == f.peak_step else ""
        lines.append(f"| {step}{mark} | {_cell(id_) if id_ else '–'} | {_cell(ood)} | {_runs_cell(ood)} |")
    return lines


def target_lines(f: SeedFindings) -> list[str]:
    decline = f.peak.rate - f.end.rate
    verdict = "outside" if f.decline_significant else "within"
    lines = [
        f"**1. Forgetting.** Pooled over {f.runs} run(s), OOD success peaks at SFT step {f.peak_step} "
        f"({_cell(f.peak)} %) and ends at step {f.end_step} ({_cell(f.end)} %): a decline of "
        f"{100 * decline:.1f} points, {verdict} the pooled 95 % intervals. Each run's own peak minus end, mean "
        f"over runs with a t-interval: {_seed_cell(f.declines)} points (target: at least 10, outside the "
        "intervals). Each run's own peak is the maximum of many noisy checkpoints and overstates the decline; "
        "with the peak step chosen by the other runs (leave-one-out): "
        f"{_seed_cell(f.held_out_declines)} points.",
        "",
        "**2. RL from SFT checkpoints** (OOD success, pooled over the runs that started there):",
        "",
        "| start step | runs | OOD before % | OOD after % | gain (points) | significant |",
        "|---|---|---|---|---|---|",
    ]
    for step, (before, after) in f.rl.items():
        gain = after.rate - before.rate
        sig = "yes, up" if after.ci[0] > before.ci[1] else "yes, down" if after.ci[1] < before.ci[0] else "no"
        lines.append(f"| {step} | {len(after.per_run)} | {_cell(before)} | {_cell(after)} | {100 * gain:+.1f} | {sig} |")
    if not f.rl:
        lines.append("| – | 0 | – | – | – | – |")
    return lines


def edit_lines(f: SeedFindings) -> list[str]:
    end_id = f.sft.get("id", {}).get(f.end_step)
    lines = [f"**4. Edits of the last SFT checkpoint toward the OOD peak** ({f.task}, pooled over the runs):", "",
             "| edit | OOD success % [95 % CI] | OOD per run % | ID success % [95 % CI] |", "|---|---|---|---|",
             f"| none (SFT step {f.end_step}) | {_cell(f.end)} | {_runs_cell(f.end)} | "
             f"{_cell(end_id) if end_id else '–'} |"]
    for kind, by_split in f.edits.items():
        ood, id_ = by_split.get("ood"), by_split.get("id")
        lines.append(f"| {kind} | {_cell(ood) if ood else '–'} | {_runs_cell(ood) if ood else '–'} | "
                     f"{_cell(id_) if id_ else '–'} |")
    return lines


def spectral_table(layers: dict[int, tuple[float, float, int]], k_label: str) -> list[str]:
    lines = [f"**3. Singular values vs singular vectors** (last SFT checkpoint vs the base, {k_label}, mean over "
             "the matrices of each layer and the runs):", "",
             "| layer | matrices | mean abs(Δσ)/σ % | mean top-k principal angle (°) |", "|---|---|---|---|"]
    lines += [f"| {layer} | {n} | {100 * d:.2f} | {a:.2f} |" for layer, (d, a, n) in layers.items()]
    return lines


def compare_markdown(run_folders: Sequence[str | Path], tasks: Sequence[str] | None = None,
                     figures: str | Path | None = None, links_from: str | Path = ".") -> str:
    """The findings of several run folders (seeds of one config) as Markdown. With `figures`, also writes
    `figures/findings-<task>.png` per task (`seed_figures.findings_figure`) and links it, relative to the
    folder `links_from` (where the Markdown will live). Raises StoreError for a folder without a store,
    ValueError when the runs cannot be pooled (different eval sets, no SFT rows)."""
    from rlheal.evaluate import EVALS
    from rlheal.spectral.metrics import SPECTRAL

    runs = []
    for folder in run_folders:
        if not (Path(folder) / "results.sqlite").exists():
            raise StoreError(f"{folder} holds no results store (results.sqlite): run `rlheal study` there first")
        with Store(folder, readonly=True) as store:
            runs.append((store.rows(EVALS), store.rows(SPECTRAL)))
    tasks = tasks or sorted({r["task"] for evals, _ in runs for r in evals})
    found = [seed_findings([evals for evals, _ in runs], task) for task in tasks]
    k_labels = sorted({r["k_label"] for _, spectral in runs for r in spectral})
    k_label = k_labels[0] if k_labels else None
    layers = layer_spectra(runs, k_label) if k_label else {}
    out = [f"Runs: {', '.join(str(f) for f in run_folders)}", ""]
    for f in found:
        out += [f"## {f.task}", "", *sft_table(f), "", *target_lines(f), ""]
        if figures is not None:
            out += [_write_figure(f, layers, k_label or "no spectra", Path(figures), Path(links_from)), ""]
    if k_label:
        out += [*spectral_table(layers, k_label), ""]
    for f in found:
        out += [*edit_lines(f), ""]
    return "\n".join(out).rstrip() + "\n"


def _write_figure(f: SeedFindings, layers: dict[int, tuple[float, float, int]], k_label: str, folder: Path,
                  links_from: Path) -> str:
    """Write one task's findings figure into `folder`; the Markdown image line that links it."""
    from rlheal.report.figures import to_png
    from rlheal.report.seed_figures import findings_figure

    path = folder / plain_name(f"findings-{f.task}.png", "a figure named after a task of the store")
    write_bytes(path, to_png(findings_figure(f, layers, k_label)))
    return f"![{f.task}: the four findings over {f.runs} run(s)]({Path(os.path.relpath(path, links_from)).as_posix()})"
