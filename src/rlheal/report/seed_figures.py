"""The findings over seeds as one figure per task: a pure function from `SeedFindings` to a matplotlib Figure.

Four panels, one per target of the study: (1) pooled ID and OOD success over SFT with Wilson bands and each
run's OOD curve, (2) OOD before and after RL per start step, (3) σ drift vs rotation per decoder layer,
(4) the edits of the last SFT checkpoint beside the unedited checkpoint and the OOD peak.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rlheal.report.figures import SPLIT_COLORS, plain  # noqa: E402
from rlheal.report.seeds import Pooled, SeedFindings  # noqa: E402


def _rates(points: list[Pooled]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled rates in % and their Wilson error bars (2 × n, below and above) for `ax.errorbar`/`ax.bar`."""
    y = np.array([100 * p.rate for p in points])
    lows = np.array([100 * p.ci[0] for p in points])
    highs = np.array([100 * p.ci[1] for p in points])
    return y, np.vstack([y - lows, highs - y])


def _sft_panel(ax: Axes, f: SeedFindings) -> None:
    for split, color in SPLIT_COLORS.items():
        curve = f.sft.get(split)
        if not curve:
            continue
        steps = list(curve)
        y, err = _rates(list(curve.values()))
        ax.plot(steps, y, "o-", color=color, label=f"{split.upper()}, pooled over {f.runs} run(s)")
        ax.fill_between(steps, y - err[0], y + err[1], color=color, alpha=0.18)
    ood = f.sft["ood"]
    if all(len(p.per_run) == f.runs for p in ood.values()):  # each run at every step: per_run is in run order
        for i, run in enumerate(zip(*(p.per_run for p in ood.values()), strict=True)):
            ax.plot(list(ood), 100 * np.array(run), "--", color="#ff9896", lw=1.0,
                    label="OOD, each run" if i == 0 else None, gid="each-run")
    ax.axvline(f.peak_step, color="grey", ls=":", lw=1.2, label=f"pooled OOD peak (step {f.peak_step})")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("episodes solved (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"1. {plain(f.task)}: success during SFT (95 % Wilson bands)")
    ax.legend(fontsize=7, loc="best")


def _rl_panel(ax: Axes, f: SeedFindings) -> None:
    starts = list(f.rl)
    x = np.arange(len(starts))
    for offset, index, label, color in ((-0.18, 0, "after SFT (RL start)", "#7f7f7f"), (0.18, 1, "after RL", "#2ca02c")):
        y, err = _rates([f.rl[s][index] for s in starts])
        ax.bar(x + offset, y, width=0.36, color=color, yerr=err, capsize=3, label=label)
    ax.axhline(100 * f.peak.rate, color=SPLIT_COLORS["ood"], ls="--", lw=1, label=f"SFT OOD peak (step {f.peak_step})")
    ax.set_xticks(x, [f"{s}\n({len(f.rl[s][1].per_run)} run(s))" for s in starts], fontsize=8)
    ax.set_xlabel("SFT step RL started from")
    ax.set_ylabel("OOD episodes solved (%)")
    ax.set_title(f"2. {plain(f.task)}: OOD before and after RL on ID")
    if not starts:
        ax.text(0.5, 0.5, "no RL rows", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=7, loc="best")


def _spectra_panel(ax: Axes, layers: dict[int, tuple[float, float, int]], k_label: str) -> None:
    x = np.arange(len(layers))
    drift = [100 * d for d, _, _ in layers.values()]
    angle = [a for _, a, _ in layers.values()]
    ax.bar(x - 0.18, drift, width=0.36, color="#1f77b4", label="mean |Δσ|/σ (%)")
    twin = ax.twinx()
    twin.bar(x + 0.18, angle, width=0.36, color="#d62728", label="mean top-k principal angle (°)")
    ax.set_xticks(x, [str(layer) for layer in layers])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("singular-value drift (%)", color="#1f77b4")
    twin.set_ylabel("rotation of singular vectors (°)", color="#d62728")
    ax.set_title(f"3. last SFT checkpoint vs base, per layer ({plain(k_label)})")
    if not layers:
        ax.text(0.5, 0.5, "no spectral rows", ha="center", va="center", transform=ax.transAxes)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")


def _edits_panel(ax: Axes, f: SeedFindings) -> None:
    bars = [(f"none (SFT {f.end_step})", f.end, "#7f7f7f"), (f"OOD peak (SFT {f.peak_step})", f.peak, SPLIT_COLORS["ood"])]
    bars += [(kind, by_split["ood"], "#9467bd") for kind, by_split in f.edits.items() if "ood" in by_split]
    y, err = _rates([p for _, p, _ in bars])
    ax.bar(range(len(bars)), y, color=[c for _, _, c in bars], yerr=err, capsize=3)
    ax.set_xticks(range(len(bars)), [plain(name) for name, _, _ in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("OOD episodes solved (%)")
    ax.set_title(f"4. {plain(f.task)}: edits of the last SFT checkpoint")


def findings_figure(f: SeedFindings, layers: dict[int, tuple[float, float, int]], k_label: str) -> Figure:
    """One task's four findings over runs (see the module docstring); `layers` as `layer_spectra` returns."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _sft_panel(axes[0][0], f)
    _rl_panel(axes[0][1], f)
    _spectra_panel(axes[1][0], layers, k_label)
    _edits_panel(axes[1][1], f)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{plain(f.task)}: the paper's findings over {f.runs} run(s), episodes pooled")
    fig.tight_layout()
    return fig
