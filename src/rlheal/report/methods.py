"""SFT methods side by side: runs of one study that differ in `sft.method` (and its settings) and in seed.

Each variant (a method with its non-default settings) is a group of runs; every run scores every checkpoint on
the same eval problems, so a variant's OOD success is paired with the plain (`full`) variant's run by run (same
seed) and problem by problem (`rlheal.stats`). How much a variant learned the ID task is its teacher-forced ID
test loss (table `losses`): on det a base that works answers out already solves ID problems, so ID success
says little about learning the SFT targets. Pure functions over stored rows; `methods_markdown` reads stores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlheal.report.compare import layer_spectra
from rlheal.report.findings import FindingsError, SftCurve, compute
from rlheal.report.text import points, rate
from rlheal.stats import Estimate, paired_difference

Row = dict[str, Any]
PLAIN = "full"
SETTINGS = {"lora": ("lora_rank", "lora_alpha", "method_modules"),
            "rotation_penalty": ("penalty_weight", "penalty_k", "method_modules"),
            "sigma_only": ("method_modules",)}


def variant(sft_config: dict[str, Any]) -> str:
    """`rotation_penalty penalty_weight=10`: an SFT config's method and the method's settings that differ from
    their defaults (a dump leaves the method fields out while all are default, so a plain config is `full`)."""
    from rlheal.train.sft import SFTConfig

    method = sft_config.get("method", PLAIN)
    fields = SFTConfig.model_fields
    named = [f"{k}={_short(sft_config[k])}" for k in SETTINGS.get(method, ())
             if k in sft_config and sft_config[k] != fields[k].get_default(call_default_factory=True)]
    return " ".join([method, *named])


def _short(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Run:
    """One run folder's rows and the study settings that place it: its SFT variant and seed."""

    variant: str
    seed: int
    evals: list[Row]
    losses: list[Row]
    spectral: list[Row]


@dataclass(frozen=True)
class Variant:
    """The runs of one SFT variant (ordered by seed), their pooled SFT curve and per-step mean test losses."""

    name: str
    seeds: list[int]
    curve: SftCurve
    id_loss: dict[int, float]
    drift: float | None  # mean |Δσ|/σ of the last SFT checkpoint against the base
    angle: float | None  # mean top-k left principal angle (degrees), same pair


def mean_losses(runs: Sequence[Run], split: str) -> dict[int, float]:
    """Per SFT step, the mean over runs of the teacher-forced test loss on `split` (steps every run has)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for r in run.losses:
            if r["split"] == split:
                by_step.setdefault(r["step"], []).append(r["loss"])
    return {s: sum(v) / len(v) for s, v in sorted(by_step.items()) if len(v) == len(runs)}


def end_spectra(runs: Sequence[Run], k_label: str | None) -> tuple[float | None, float | None]:
    """Mean |Δσ|/σ and mean top-k left angle (degrees) over every matrix of each run's last SFT checkpoint
    against its step 0 (`compare.layer_spectra`, pooled over layers)."""
    layers = layer_spectra([(run.evals, run.spectral) for run in runs], k_label) if k_label else {}
    matrices = sum(n for _, _, n in layers.values())
    if not matrices:
        return None, None
    return (sum(d * n for d, _, n in layers.values()) / matrices, sum(a * n for _, a, n in layers.values()) / matrices)


def group(runs: Sequence[Run], task: str, k_label: str | None) -> list[Variant]:
    """The variants of `runs`, `full` first; FindingsError when a variant holds one seed twice."""
    variants = []
    names = sorted({r.variant for r in runs}, key=lambda n: (n != PLAIN, n))
    for name in names:
        mine = sorted((r for r in runs if r.variant == name), key=lambda r: r.seed)
        seeds = [r.seed for r in mine]
        if len(set(seeds)) != len(seeds):
            raise FindingsError(f"two runs of SFT variant {name!r} have the same seed: compare one run per seed")
        curve = next((c for c in compute([r.evals for r in mine]).sft if c.task == task), None)
        if curve is None:
            raise FindingsError(f"the runs of SFT variant {name!r} hold no {task} SFT evaluations")
        drift, angle = end_spectra(mine, k_label)
        variants.append(Variant(name, seeds, curve, mean_losses(mine, "id"), drift, angle))
    return variants


def _paired_ood(v: Variant, step: int, plain: Variant, plain_step: int) -> Estimate | None:
    """OOD success of `v` at `step` minus plain SFT's at `plain_step`, paired by seed and problem; None for plain
    SFT itself or without a shared seed."""
    shared = [s for s in v.seeds if s in plain.seeds]
    if not shared or v is plain or step not in v.curve.ood:
        return None
    return paired_difference(v.curve.ood[step].table([v.seeds.index(s) for s in shared]),
                             plain.curve.ood[plain_step].table([plain.seeds.index(s) for s in shared]))


def versus_plain(v: Variant, plain: Variant) -> Estimate | None:
    """OOD success at the end of SFT, variant minus plain, paired by seed and problem (None without shared seeds)."""
    return _paired_ood(v, v.curve.end_step, plain, plain.curve.end_step)


def matched_step(v: Variant, plain: Variant, step: int | None = None) -> int | None:
    """The plain SFT step whose mean ID test loss is nearest the variant's at `step` (default: its end) on a
    log scale: where plain SFT had learned the ID targets as far as the variant had."""
    loss = v.id_loss.get(v.curve.end_step if step is None else step)
    steps = [s for s in plain.id_loss if s in plain.curve.ood]
    if loss is None or loss <= 0 or not steps:
        return None
    return min(steps, key=lambda s: abs(math.log(plain.id_loss[s] / loss)))


def versus_matched(v: Variant, plain: Variant, step: int | None = None) -> tuple[int, Estimate] | None:
    """OOD success of the variant at `step` (default: its end) minus plain SFT's at `matched_step`, paired by
    seed and problem; None for plain SFT itself or without a shared seed."""
    step = v.curve.end_step if step is None else step
    matched = matched_step(v, plain, step)
    found = None if matched is None else _paired_ood(v, step, plain, matched)
    return None if found is None else (matched, found)


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def variant_table(variants: Sequence[Variant]) -> list[str]:
    plain = next((v for v in variants if v.name == PLAIN), None)
    lines = ["| SFT variant | seeds | ID test loss at end | ID success at end | OOD peak (step) | OOD at end | "
             f"OOD at end minus {PLAIN}'s end (points) | minus {PLAIN} at matched ID loss (its step) | "
             "top-k angle to base (°) | mean abs(Δσ)/σ % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        c = v.curve
        end_id = c.id.get(c.end_step)
        diff = versus_plain(v, plain) if plain else None
        matched = versus_matched(v, plain) if plain else None
        lines.append(f"| {v.name} | {', '.join(map(str, v.seeds))} | {_cell(v.id_loss.get(c.end_step), '.3f')} | "
                     f"{rate(end_id.rate) if end_id else '–'} | {rate(c.peak.rate)} ({c.peak_step}) | {rate(c.end.rate)} | "
                     f"{points(diff) if diff else '–'} | {f'{points(matched[1])} ({matched[0]})' if matched else '–'} | "
                     f"{_cell(v.angle, '.2f')} | {_cell(None if v.drift is None else 100 * v.drift, '.2f')} |")
    return lines


def tradeoff_table(variants: Sequence[Variant]) -> list[str]:
    """Per variant and SFT step: ID test loss, OOD success, and the OOD difference with plain SFT where it had
    learned as far (matched ID test loss): the trade-off the figure draws."""
    plain = next((v for v in variants if v.name == PLAIN), None)
    lines = [f"| SFT variant | step | ID test loss | OOD success % [95 % CI] | minus {PLAIN} at matched ID loss "
             "(its step) |", "|---|---|---|---|---|"]
    for v in variants:
        for step, p in v.curve.ood.items():
            matched = versus_matched(v, plain, step) if plain else None
            lines.append(f"| {v.name} | {step} | {_cell(v.id_loss.get(step), '.3f')} | {rate(p.rate)} | "
                         f"{f'{points(matched[1])} ({matched[0]})' if matched else '–'} |")
    return lines


def tradeoff_figure(variants: Sequence[Variant], task: str):
    """OOD success against ID test loss through SFT, one line per variant (mean over its seeds), and OOD
    success against the SFT step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for v in variants:
        steps = [s for s in v.curve.ood if s in v.id_loss]
        ood = [100 * v.curve.ood[s].rate.value for s in steps]
        (line,) = left.plot([v.id_loss[s] for s in steps], ood, "o-", label=f"{v.name} ({len(v.seeds)} seeds)")
        right.plot(list(v.curve.ood), [100 * p.rate.value for p in v.curve.ood.values()], "o-",
                   color=line.get_color(), label=v.name)
    left.set_xscale("log")
    left.invert_xaxis()
    left.set_xlabel("ID test loss (teacher-forced on the SFT targets; falls as SFT learns →)")
    left.set_ylabel("OOD episodes solved (%)")
    left.set_title(f"{task}: OOD success against ID learning, through SFT")
    right.set_xscale("symlog", linthresh=10)
    right.set_xlim(left=0)
    right.set_xlabel("SFT step")
    right.set_ylabel("OOD episodes solved (%)")
    right.set_title(f"{task}: OOD success during SFT, by SFT method")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _study_config(folder: Path) -> dict[str, Any] | None:
    study = folder / "study.json"
    return json.loads(study.read_text(encoding="utf-8"))["config"] if study.exists() else None


def read_run(folder: str | Path) -> Run:
    """A study run folder's rows and its SFT variant and seed (from `study.json`)."""
    from rlheal.evaluate import EVALS
    from rlheal.spectral.metrics import SPECTRAL
    from rlheal.store import Store, StoreError
    from rlheal.train.sft import LOSSES

    folder = Path(folder)
    config = _study_config(folder)
    if config is None:
        raise StoreError(f"{folder} has no study.json: comparing SFT methods needs run folders of `rlheal study`")
    with Store(folder, readonly=True) as store:
        return Run(variant(config.get("sft", {})), int(config.get("seed", 0)), store.rows(EVALS), store.rows(LOSSES),
                   store.rows(SPECTRAL))


def variants_of(folders: Sequence[str | Path]) -> set[str]:
    """The SFT variants the run folders used (cheap: study.json only; folders without one count as none)."""
    configs = (_study_config(Path(folder)) for folder in folders)
    return {variant(config.get("sft", {})) for config in configs if config is not None}


def methods_markdown(folders: Sequence[str | Path], tasks: Sequence[str] | None = None,
                     figures: Path | None = None, links_from: Path = Path(".")) -> str:
    """The SFT variants of `folders` side by side, per task (default: every task the first run's SFT evaluated),
    as Markdown; with `figures`, also each task's trade-off PNG `sft-methods-<task>.png` written there and
    linked relative to `links_from`."""
    import os

    from rlheal.atomic import write_bytes
    from rlheal.paths import plain_name
    from rlheal.report.figures import to_png

    runs = [read_run(f) for f in folders]
    k_labels = sorted({r["k_label"] for run in runs for r in run.spectral})
    k_label = k_labels[0] if k_labels else None
    out = [f"Runs: {', '.join(str(f) for f in folders)}", ""]
    for task in tasks or sorted({r["task"] for r in runs[0].evals if r["stage"] == "sft"}):
        variants = group(runs, task, k_label)
        out += [f"## {task}: SFT methods side by side", "",
                "Intervals: 95 %, two-way bootstrap over seeds and problems; differences paired by seed and problem. "
                "OOD peak chosen on the selection half of the problems; angles and σ drift of the last SFT checkpoint "
                f"against the base ({k_label or 'no spectra'}).", "",
                *variant_table(variants), ""]
        if figures is not None:
            figure = Path(figures) / plain_name(f"sft-methods-{task}.png", "a figure named after a task of the store")
            write_bytes(figure, to_png(tradeoff_figure(variants, task)))
            out += [f"![{task}: OOD success against ID test loss, by SFT method]"
                    f"({Path(os.path.relpath(figure, links_from)).as_posix()})", ""]
        out += ["OOD success and ID test loss at every SFT checkpoint (mean over seeds), and against plain SFT where "
                "it had learned the ID targets as far:", "", *tradeoff_table(variants), ""]
    return "\n".join(out).rstrip() + "\n"
