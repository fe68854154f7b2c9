"""The report's figures, each a pure function from stored rows to a matplotlib Figure (Agg backend).

Stored strings (task names, labels, references) reach a figure only through `plain`, so a `$` in them is
drawn as a dollar sign, never parsed as mathtext."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rlheal.report.findings import EditResult, Point, RlArm, SftCurve, rl_arm  # noqa: E402

Row = dict[str, Any]
SPLIT_COLORS = {"id": "#1f77b4", "ood": "#d62728"}


def plain(text: object) -> str:
    """`text` as matplotlib draws it literally: every `$` escaped (unescaped pairs would start mathtext)."""
    return str(text).replace("$", r"\$")


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (110 dpi); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pct(values) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=float)


def rates(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Rates in % and their 95 % error bars (2 × n, below and above) for `ax.errorbar`/`ax.bar`."""
    y = np.array([100 * p.rate.value for p in points])
    lows = np.array([100 * p.rate.low for p in points])
    highs = np.array([100 * p.rate.high for p in points])
    return y, np.vstack([y - lows, highs - y])


def sft_curves(evals: Sequence[Row], losses: Sequence[Row], curves: Sequence[SftCurve]) -> Figure:
    """Per task: ID and OOD success vs SFT step with 95 % bands (top) and teacher-forced test loss (bottom)."""
    tasks = sorted({r["task"] for r in evals if r["stage"] == "sft"})
    fig, axes = plt.subplots(2, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 7.5), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [3, 2]})
    peaks = {c.task: c.peak_step for c in curves}
    for col, task in enumerate(tasks):
        ax, lax = axes[0][col], axes[1][col]
        for split, color in SPLIT_COLORS.items():
            rows = sorted((r for r in evals if r["stage"] == "sft" and r["task"] == task and r["split"] == split),
                          key=lambda r: r["step"])
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            ax.plot(steps, _pct([r["success_rate"] for r in rows]), "o-", color=color, label=f"{split.upper()} success")
            ax.fill_between(steps, _pct([r["ci_low"] for r in rows]), _pct([r["ci_high"] for r in rows]),
                            color=color, alpha=0.18, label=f"{split.upper()} 95 % interval")
            lrows = sorted((r for r in losses if r["task"] == task and r["split"] == split), key=lambda r: r["step"])
            if lrows:
                lax.plot([r["step"] for r in lrows], [r["loss"] for r in lrows], "s--", color=color,
                         label=f"{split.upper()} test loss")
        if task in peaks:
            ax.axvline(peaks[task], color="grey", ls=":", lw=1.2, label="OOD peak (selection half)")
        ax.set_title(f"{plain(task)}: success during SFT")
        ax.set_ylabel("episodes solved (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        lax.set_title(f"{plain(task)}: teacher-forced answer loss on held-out problems")
        lax.set_xlabel("SFT step")
        lax.set_ylabel("loss (nats/token)")
        lax.grid(alpha=0.3)
        if lax.get_legend_handles_labels()[0]:
            lax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rl_recovery(arms: Sequence[RlArm], curves: Sequence[SftCurve]) -> Figure:
    """Per task: OOD success at each RL start checkpoint, before and after each RL arm, against the SFT peak."""
    tasks = sorted({a.task for a in arms})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 4.5), squeeze=False)
    peaks = {c.task: c for c in curves}
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        mine = [a for a in arms if a.task == task]
        x = np.arange(len(mine))
        for offset, which, label, color in ((-0.17, "ood_before", "after SFT (RL start)", "#7f7f7f"),
                                             (0.17, "ood_after", "after RL", "#2ca02c")):
            y, err = rates([getattr(a, which) for a in mine])
            ax.bar(x + offset, y, width=0.34, color=color, label=label, yerr=err, capsize=3)
        if task in peaks:
            ax.axhline(100 * peaks[task].peak.rate.value, color="#d62728", ls="--",
                       label=f"SFT OOD peak (step {peaks[task].peak_step})")
        ax.set_xticks(x, [f"{a.start_step}\n{a.arm}" for a in mine], fontsize=8)
        ax.set_xlabel("SFT checkpoint RL started from (step), and arm")
        ax.set_ylabel("OOD episodes solved (%)")
        ax.set_title(f"{plain(task)}: does RL restore OOD success?")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rl_window(arms: Sequence[RlArm]) -> Figure:
    """RL's OOD gain (with its interval) against the start checkpoint's ID success: where recovery works."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for task, arm in sorted({(a.task, a.arm) for a in arms}):
        mine = [a for a in arms if (a.task, a.arm) == (task, arm) and a.id_before is not None]
        xs = _pct([a.id_before.rate.value for a in mine])
        gains = _pct([a.gain.value for a in mine])
        err = np.vstack([gains - _pct([a.gain.low for a in mine]), _pct([a.gain.high for a in mine]) - gains])
        ax.errorbar(xs, gains, yerr=err, fmt="o-", capsize=3, label=plain(f"{task} {arm}"))
        for a, x, g in zip(mine, xs, gains, strict=True):
            ax.annotate(f"step {a.start_step}", (x, g), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("ID success of the start checkpoint (%)")
    ax.set_ylabel("OOD success after RL − before (points)")
    ax.set_title("The recovery window: RL gain vs how far SFT went")
    ax.grid(alpha=0.3)
    if arms:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def advantages(updates: Sequence[Row], labels: dict[str, str]) -> Figure:
    """Pooled advantage histograms per RL start (all updates), with skewness in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    skews: dict[str, list[float]] = defaultdict(list)
    for row in updates:
        hist = row.get("adv_hist") or {}
        if not hist.get("counts"):
            continue
        edges = np.asarray(hist["edges"], dtype=float)
        pooled[row["start"]].append(((edges[:-1] + edges[1:]) / 2, np.asarray(hist["counts"], dtype=float)))
        if row.get("adv_skew") is not None:
            skews[row["start"]].append(row["adv_skew"])
    for start, parts in sorted(pooled.items(), key=lambda kv: labels.get(kv[0], kv[0])):
        mids = np.concatenate([m for m, _ in parts])
        weights = np.concatenate([c for _, c in parts])
        density, edges = np.histogram(mids, bins=30, weights=weights, density=True)
        skew = float(np.mean(skews[start])) if skews[start] else float("nan")
        ax.step(edges[:-1], density, where="post", label=f"{plain(labels.get(start, start))} (mean skew {skew:+.2f})")
    ax.set_xlabel("advantage (normalised)")
    ax.set_ylabel("density")
    ax.set_title("Advantage distributions per RL start")
    ax.grid(alpha=0.3)
    if pooled:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def edits(results: Sequence[EditResult]) -> Figure:
    """OOD success of each edited checkpoint beside the unedited target and the OOD-peak reference."""
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * (len(results) + 2)), 4.5))
    bars: list[tuple[str, Point, str]] = []
    if results:
        bars += [("unedited target", results[0].target, "#7f7f7f"), ("OOD-peak reference", results[0].peak, "#d62728")]
    bars += [(r.kind, r.ood, "#9467bd") for r in results]
    y, err = rates([p for _, p, _ in bars])
    ax.bar(range(len(bars)), y, color=[b[2] for b in bars], yerr=err if bars else None, capsize=3)
    ax.set_xticks(range(len(bars)), [plain(b[0]) for b in bars], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("OOD episodes solved (%)")
    ax.set_title("Weight edits of the last SFT checkpoint toward the OOD peak")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def spectral_series(spectral: Sequence[Row], evals: Sequence[Row], reference: str, k_label: str
                    ) -> dict[str, dict[int, list[Row]]]:
    """The spectral rows of one reference and k as series, never mixing the two kinds of step: `SFT` keyed
    by SFT step, and one series per RL start and arm (`sft-24+ppo`) keyed by RL update, starting at update 0
    with the start checkpoint itself. Targets that were not evaluated (no stage known) are left out."""
    sft = {r["checkpoint"]: r["step"] for r in evals if r["stage"] == "sft"}
    labels = {r["checkpoint"]: r["label"] for r in evals}
    rl = {r["checkpoint"]: (f"{labels.get(r['parent'], r['parent'])}+{rl_arm(r['label'])}", r["step"], r["parent"])
          for r in evals if r["stage"] == "rl" and r.get("parent")}
    mine = [r for r in spectral if r["reference"] == reference and r["k_label"] == k_label]
    by_target: dict[str, list[Row]] = defaultdict(list)
    for r in mine:
        by_target[r["target"]].append(r)
    series: dict[str, dict[int, list[Row]]] = defaultdict(dict)
    for target, rows in by_target.items():
        if target in sft:
            series["SFT"][sft[target]] = rows
        elif target in rl:
            name, update, start = rl[target]
            series[name][update] = rows
            if start in by_target:
                series[name].setdefault(0, by_target[start])
    return {name: dict(sorted(points.items())) for name, points in sorted(series.items(), key=lambda kv: kv[0] != "SFT")}


def _mean(rows: Sequence[Row], key: str, scale: float = 1.0) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return scale * float(np.mean(values)) if values else float("nan")


def spectral_summary(spectral: Sequence[Row], evals: Sequence[Row], references: dict[str, str],
                     k_label: str) -> Figure:
    """Per reference (columns): mean |Δσ|/σ (%) and mean top-k principal angle (degrees) over matrices. Top row:
    SFT checkpoints against SFT step; with RL, two more rows against RL update, one line per start and arm
    (update 0 is the start): SFT steps and RL updates never share an axis."""
    per_ref = {name: spectral_series(spectral, evals, ref, k_label) for name, ref in references.items()}
    has_rl = any(len(series) > 1 or "SFT" not in series for series in per_ref.values())
    n_rows = 3 if has_rl else 1
    fig, axes = plt.subplots(n_rows, max(1, len(references)), figsize=(6.5 * max(1, len(references)), 4.2 * n_rows),
                             squeeze=False)
    for col, (name, series) in enumerate(per_ref.items()):
        ax = axes[0][col]
        sft = series.get("SFT", {})
        xs = list(sft)
        ax.plot(xs, [_mean(rows, "mean_abs_rel_sigma_drift", 100) for rows in sft.values()], "o-", color="#1f77b4",
                label="mean |Δσ|/σ (%)")
        ax.set_xlabel("SFT step")
        ax.set_ylabel("singular-value drift (%)", color="#1f77b4")
        twin = ax.twinx()
        for key, style, label in (("top_left_mean", "s--", "top-k left (U)"), ("top_right_mean", "^--", "top-k right (V)")):
            twin.plot(xs, [_mean(rows, key, 180 / np.pi) for rows in sft.values()], style, color="#d62728",
                      label=f"mean angle, {label}")
        twin.set_ylabel("principal angle (degrees)", color="#d62728")
        ax.set_title(plain(f"SFT checkpoints vs {name}: σ drift and rotation ({k_label})"))
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="upper left")
        if not has_rl:
            continue
        for row, (key, scale, unit) in enumerate((("top_left_mean", 180 / np.pi, "mean top-k left angle (degrees)"),
                                                  ("mean_abs_rel_sigma_drift", 100.0, "mean |Δσ|/σ (%)")), start=1):
            rax = axes[row][col]
            for arm, points in series.items():
                if arm != "SFT":
                    rax.plot(list(points), [_mean(rows, key, scale) for rows in points.values()], "o-", label=plain(arm))
            rax.set_xlabel("RL update (0: the SFT checkpoint RL started from)")
            rax.set_ylabel(unit)
            rax.set_title(plain(f"RL checkpoints vs {name}, one line per start and arm"))
            rax.grid(alpha=0.3)
            if rax.get_legend_handles_labels()[0]:
                rax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectral_heatmaps(spectral: Sequence[Row], evals: Sequence[Row], reference: str, k_label: str) -> Figure:
    """Layer × SFT checkpoint heatmaps of σ drift and top-k rotation against one reference."""
    by_step = spectral_series(spectral, evals, reference, k_label).get("SFT", {})
    layers = sorted({r["layer"] for rows in by_step.values() for r in rows if r.get("layer") is not None})
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(4, len(layers)) + 2))
    for ax, key, title, scale, unit in (
        (axes[0], "mean_abs_rel_sigma_drift", "singular-value drift", 100.0, "mean |Δσ|/σ (%)"),
        (axes[1], "top_left_mean", "rotation of top-k left singular vectors", 180.0 / np.pi, "mean angle (degrees)"),
    ):
        grid = np.full((len(layers), len(by_step)), np.nan)
        for j, rows in enumerate(by_step.values()):
            for i, layer in enumerate(layers):
                vals = [r[key] for r in rows if r.get("layer") == layer and r.get(key) is not None]
                if vals:
                    grid[i, j] = scale * float(np.mean(vals))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(len(by_step)), [str(s) for s in by_step], rotation=45, fontsize=7)
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
        ax.set_xlabel("SFT step")
        ax.set_ylabel("decoder layer")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label=unit)
    fig.tight_layout()
    return fig
