"""RL from each chosen SFT checkpoint, then ID/OOD evaluation of every RL checkpoint (the paper's sweep).

Starts run one after another here (each is an independent job on a cluster: same command, one checkpoint).
Layout: `RUN/rl/<start-label>-<arm>/step-000010/` (e.g. `RUN/rl/sft-40-ppo/`, and `RUN/rl/sft-40-ppo-control/`
for the shuffled-reward control arm). Resuming is per start: a
start whose last RL checkpoint exists is not retrained, its missing evaluations are run (`evaluate` skips
stored rows); an interrupted start restarts from its latest saved RL checkpoint (PPO: with its value head;
both: with a fresh optimiser state). Update rows the store lacks for checkpoints already saved (a store lost or
moved aside) are put back from the start's ledger (`rlheal.train.ledger`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlheal.samples import SampleLog
from rlheal.store import Store
from rlheal.tracking import Trackers

ALGOS: tuple[str, ...] = ("ppo", "grpo")


class SweepError(ValueError):
    """A sweep asked for with invalid settings; the message says what is wrong and what to do."""


def make_config(algo: str, overrides: Mapping[str, Any] | None = None):
    """The validated config of `algo` (PPOConfig or GRPOConfig) with `overrides`; pydantic's ValidationError
    names a bad field, SweepError an unknown algorithm."""
    from rlheal.train.grpo import GRPOConfig
    from rlheal.train.ppo import PPOConfig

    configs = {"ppo": PPOConfig, "grpo": GRPOConfig}
    if algo not in configs:
        raise SweepError(f"unknown RL algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    return configs[algo](**dict(overrides or {}))


def select_starts(sft: str | Path, steps: Sequence[int] | None = None) -> list[Path]:
    """The checkpoints in folder `sft` whose manifest step is in `steps` (all when None), by step."""
    from rlheal.models.checkpoint import CheckpointError, find_checkpoints, read_manifest

    try:
        found = find_checkpoints([sft])
    except CheckpointError as exc:
        raise SweepError(f"--from {sft}: {exc}") from exc
    by_step = {read_manifest(p).step: p for p in found}
    if steps is None:
        return [by_step[s] for s in sorted(by_step)]
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise SweepError(f"no checkpoint of step {', '.join(map(str, missing))} in {sft}; "
                         f"available steps: {', '.join(map(str, sorted(by_step)))}")
    return [by_step[s] for s in dict.fromkeys(steps)]


def rl_folder(run: str | Path, start: Path, arm: str) -> Path:
    """Where RL arm `arm` (`ppo`, `ppo-control`, `grpo`) from `start` writes its checkpoints:
    `run/rl/<start-label>-<arm>`."""
    from rlheal.models.checkpoint import read_manifest

    return Path(run) / "rl" / f"{read_manifest(start).label}-{arm}"


def run_sweep(
    sft: str | Path,
    run: str | Path,
    *,
    algo: str = "ppo",
    steps: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    eval_episodes: int = 100,
    eval_seed: int = 0,
    eval_decoding: Any = None,
    eval_max_attempts: int | None = None,
    task: Any = None,
    show_progress: bool = True,
    samples: SampleLog | None = None,
    eval_samples: SampleLog | None = None,
    trackers: Trackers | None = None,
) -> list[dict[str, Any]]:
    """RL from each selected checkpoint of `sft`, then evaluate the start and every RL checkpoint on ID and OOD
    of the trained task, into `run/results.sqlite` (with `eval_decoding`, default greedy `Decoding()`, the
    evaluator's default, so the starts' rows from the SFT sweep are reused) and `eval_max_attempts` attempts
    per episode (default: the RL config's, which defaults to the task's). `task` (a Task object) overrides
    the config's task name. `samples` receives the RL episodes, `eval_samples` the evaluation's;
    `trackers` the update and evaluation rows (GRPO reports through TRL to the same trackers).
    Returns `rl_summary` rows of the starts of this sweep."""
    from rlheal.distributed import ensure_process_group, evaluate_launched, on_main
    from rlheal.progress import note
    from rlheal.rollout import Decoding
    from rlheal.train.grpo import train_grpo
    from rlheal.train.ledger import restore_updates
    from rlheal.train.ppo import rl_checkpoints, train_ppo

    config = make_config(algo, overrides)
    starts = select_starts(sft, steps)
    eval_task = task if task is not None else config.task
    trackers = trackers or Trackers([], run)
    main = ensure_process_group()[0] == 0
    with Store(run) as store:
        for start in starts:
            out = rl_folder(run, start, config.arm)
            on_played = _sample_writer(samples, start, out, config.arm)
            if algo == "ppo":
                result = train_ppo(start, out, config, store=store, task=task, show_progress=show_progress,
                                   on_update=trackers.log_update_row, on_played=on_played)
            else:
                result = train_grpo(start, out, config, store=store, task=task, show_progress=show_progress,
                                    report_to=trackers.report_to, on_played=on_played)
            on_main(restore_updates, store, out, start)  # rows a lost or moved-aside store no longer holds
            if result.no_signal and main:
                note(f"{start.name}: no learning signal (format rate {result.rows[-1]['format_rate']:.0%})")
            evaluate_launched(store, [start, *rl_checkpoints(out)], [eval_task], episodes=eval_episodes, seed=eval_seed,
                     profile=config.profile,
                     max_attempts=config.max_attempts if eval_max_attempts is None else eval_max_attempts,
                     decoding=eval_decoding or Decoding(), show_progress=show_progress, samples=eval_samples,
                     on_row=trackers.log_eval_row)
        chosen = {str(s.resolve()) for s in starts}
        return [r for r in rl_summary(store) if r["start"] in chosen]


def _sample_writer(samples: SampleLog | None, start: Path, out: Path, arm: str):
    """The trainers' `on_played` that writes each update's episodes to `samples` (None without samples)."""
    if samples is None:
        return None
    context = {"run_id": str(out.resolve()), "start": str(start.resolve()), "arm": arm}
    return lambda update, played: samples.write(played, {**context, "update": update})


def rl_summary(store: Store) -> list[dict[str, Any]]:
    """For each (start checkpoint, arm, task, eval set): ID and OOD success before RL (the start) and after
    (its RL checkpoint of the highest step), from the `evals` table. Missing evaluations read None."""
    from rlheal.evaluate import EVALS
    from rlheal.report.findings import rl_arm

    evals = store.rows(EVALS)
    success = {(r["checkpoint"], r["task"], r["split"], r["eval_set"]): r["success_rate"] for r in evals}
    latest: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in (r for r in evals if r["stage"] == "rl" and r["parent"]):
        key = (row["parent"], rl_arm(row["label"]), row["task"], row["eval_set"])
        if key not in latest or row["step"] > latest[key]["step"]:
            latest[key] = row
    out = []
    for (start, arm, task, eval_set), row in sorted(latest.items()):
        start_rows = [r for r in evals if r["checkpoint"] == start]
        out.append({
            "start": start, "start_label": start_rows[0]["label"] if start_rows else Path(start).name,
            "start_step": start_rows[0]["step"] if start_rows else None, "arm": arm, "task": task,
            "eval_set": eval_set, "rl_checkpoint": row["checkpoint"], "rl_step": row["step"],
            **{f"{split}_{when}": success.get((ckpt, task, split, eval_set))
               for split in ("id", "ood") for when, ckpt in (("before", start), ("after", row["checkpoint"]))},
        })
    return sorted(out, key=lambda r: (r["task"], r["arm"], r["start_step"] or 0))
