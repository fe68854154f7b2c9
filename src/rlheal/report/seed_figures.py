"""The findings over runs as one figure per task: a pure function from `Findings` to a matplotlib Figure.

Four panels, one per target of the study: (1) ID and OOD success over SFT with bootstrap bands and each run's
OOD curve, (2) OOD before and after RL per start and arm, (3) σ drift vs rotation per decoder layer, (4) the
edits of the last SFT checkpoint beside the unedited checkpoint and the OOD peak.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rlheal.report.figures import SPLIT_COLORS, plain, rates  # noqa: E402
from rlheal.report.findings import Findings, SftCurve  # noqa: E402


def _sft_panel(ax: Axes, f: Findings, c: SftCurve) -> None:
    for split, curve in (("id", c.id), ("ood", c.ood)):
        if not curve:
            continue
        steps = list(curve)
        y, err = rates(list(curve.values()))
        ax.plot(steps, y, "o-", color=SPLIT_COLORS[split], label=f"{split.upper()}, mean of {f.runs} run(s)")
        ax.fill_between(steps, y - err[0], y + err[1], color=SPLIT_COLORS[split], alpha=0.18)
    if f.runs > 1:
        for i in range(f.runs):
            ax.plot(list(c.ood), [100 * p.rows[i]["success_rate"] for p in c.ood.values()], "--", color="#ff9896",
                    lw=1.0, label="OOD, each run" if i == 0 else None, gid="each-run")
    ax.axvline(c.peak_step, color="grey", ls=":", lw=1.2, label=f"OOD peak (step {c.peak_step}, selection half)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("episodes solved (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"1. {plain(c.task)}: success during SFT (95 % bands)")
    ax.legend(fontsize=7, loc="best")


def _rl_panel(ax: Axes, f: Findings, c: SftCurve) -> None:
    arms = [a for a in f.rl if a.task == c.task]
    x = np.arange(len(arms))
    for offset, which, label, color in ((-0.18, "ood_before", "after SFT (RL start)", "#7f7f7f"),
                                         (0.18, "ood_after", "after RL", "#2ca02c")):
        y, err = rates([getattr(a, which) for a in arms])
        ax.bar(x + offset, y, width=0.36, color=color, yerr=err, capsize=3, label=label)
    ax.axhline(100 * c.peak.rate.value, color=SPLIT_COLORS["ood"], ls="--", lw=1,
               label=f"SFT OOD peak (step {c.peak_step})")
    ax.set_xticks(x, [f"{a.start_step}\n{a.arm}" for a in arms], fontsize=7)
    ax.set_xlabel("SFT step RL started from, and arm")
    ax.set_ylabel("OOD episodes solved (%)")
    ax.set_title(f"2. {plain(c.task)}: OOD before and after RL on ID")
    if not arms:
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


def _edits_panel(ax: Axes, f: Findings, c: SftCurve) -> None:
    bars = [(f"none (SFT {c.end_step})", c.end, "#7f7f7f"), (f"OOD peak (SFT {c.peak_step})", c.peak, SPLIT_COLORS["ood"])]
    bars += [(e.kind, e.ood, "#9467bd") for e in f.edits if e.task == c.task]
    y, err = rates([p for _, p, _ in bars])
    ax.bar(range(len(bars)), y, color=[col for _, _, col in bars], yerr=err, capsize=3)
    ax.set_xticks(range(len(bars)), [plain(name) for name, _, _ in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("OOD episodes solved (%)")
    ax.set_title(f"4. {plain(c.task)}: edits of the last SFT checkpoint")


def findings_figure(f: Findings, c: SftCurve, layers: dict[int, tuple[float, float, int]], k_label: str) -> Figure:
    """One task's four findings over runs (see the module docstring); `layers` as `layer_spectra` returns."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _sft_panel(axes[0][0], f, c)
    _rl_panel(axes[0][1], f, c)
    _spectra_panel(axes[1][0], layers, k_label)
    _edits_panel(axes[1][1], f, c)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{plain(c.task)}: the paper's findings over {f.runs} run(s), paired by problem")
    fig.tight_layout()
    return fig
