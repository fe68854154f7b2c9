"""Evaluation: success of each checkpoint on each (task, split) over a frozen eval set, into the `evals` table.

The eval set of (task, split) is problems 0..N-1 of the eval pool drawn with seed `EVAL_SEED_OFFSET + seed`:
held-out problems, which no training text contains (`rlheal.tasks.holdout`). A stored row is identified by
(checkpoint, task, split, eval_set); `evaluate` skips the combinations already stored, checking before it
loads a model, and writes each new row in its own transaction: a killed evaluation loses at most the
combination in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rlheal.models.checkpoint import Manifest, check_checkpoint, read_manifest
from rlheal.provenance import environment
from rlheal.rollout import Backend, Decoding, EpisodeBackend, play
from rlheal.stats import wilson_interval
from rlheal.store import Store, Table
from rlheal.tasks.base import PROFILES, SPLITS, Episode, Problem, Task
from rlheal.tasks.holdout import EVAL

EVAL_SEED_OFFSET = 10_000  # eval problems use seed 10_000 + seed; training uses small seeds
DEFAULT_EPISODES = 500
MAX_EVAL_DRAWS_PER_PROBLEM = 20  # draws per distinct eval problem before the pool counts as too small

EVALS = Table(
    name="evals",
    columns={
        "checkpoint": "path",
        "label": "str",
        "stage": "str",
        "step": "int",
        "parent": "path",
        "task": "str",
        "split": "str",
        "eval_set": "str",
        "n_episodes": "int",
        "n_solved": "int",
        "success_rate": "float",
        "ci_low": "float",
        "ci_high": "float",
        "format_error_rate": "float",
        "mean_attempts": "float",
        "first_attempt_acc": "float",
        "solved_at": "json",  # per eval problem, in eval-set order: the attempt that solved it (1, 2, ...), 0 if none
        "decoding": "json",
        "seed": "int",
        "versions": "json",
        "created": "str",
    },
    key=("checkpoint", "task", "split", "eval_set"),
)

LoadBackend = Callable[[Path], Backend | EpisodeBackend]


class EvalConfigError(ValueError):
    """An evaluation asked for with invalid settings; the message names the setting."""


def eval_set_id(*, seed: int, episodes: int, max_attempts: int, profile: str, decoding: Decoding) -> str:
    """The id of a frozen eval set, e.g. `heldout-seed0-n300-a5-compact`; non-default decoding adds its tag."""
    base = f"heldout-seed{seed}-n{episodes}-a{max_attempts}-{profile}"
    return base if decoding == Decoding() else f"{base}-{decoding.tag()}"


def task_eval_set(task: Task, *, seed: int, episodes: int, max_attempts: int | None, decoding: Decoding) -> str:
    """The eval set id of `task` when evaluated with these settings (`max_attempts` None: the task's own)."""
    attempts = task.default_max_attempts if max_attempts is None else max_attempts
    return eval_set_id(seed=seed, episodes=episodes, max_attempts=attempts, profile=task.profile, decoding=decoding)


def eval_problems(task: Task, split: str, *, seed: int, episodes: int) -> list[Problem]:
    """The frozen eval set of (task, split): the first `episodes` distinct problems (by held-out key) of the eval
    pool drawn with seed EVAL_SEED_OFFSET + seed, so that every problem counts once. Raises EvalConfigError when
    the eval pool holds fewer distinct problems (gp24's OOD hands: a few hundred)."""
    chosen: dict[str, Problem] = {}
    index = 0
    while len(chosen) < episodes:
        if index >= MAX_EVAL_DRAWS_PER_PROBLEM * episodes:
            raise EvalConfigError(f"the eval pool of {task.name}/{split} holds about {len(chosen)} distinct problems, "
                                  f"fewer than the {episodes} asked for: evaluate with fewer episodes")
        problem = task.problem(split, EVAL_SEED_OFFSET + seed, index, pool=EVAL)
        chosen.setdefault(task.holdout_key(problem.data), problem)
        index += 1
    return list(chosen.values())


def summarize(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Metrics of played episodes.

    success_rate: share of episodes solved at any attempt, with its 95 % Wilson interval (ci_low, ci_high);
    first_attempt_acc: share solved at the first attempt; mean_attempts: attempts per episode;
    format_error_rate: share of all attempts whose answer was not in the profile's format;
    solved_at: per episode, the attempt that solved it (1-based), 0 when none did.
    """
    if not episodes:
        raise ValueError("cannot summarize zero episodes")
    n = len(episodes)
    solved = sum(e.solved for e in episodes)
    attempts = [v for e in episodes for v in e.verdicts]
    low, high = wilson_interval(solved, n)
    return {
        "n_episodes": n,
        "n_solved": solved,
        "success_rate": solved / n,
        "ci_low": low,
        "ci_high": high,
        "format_error_rate": sum(not v.format_ok for v in attempts) / len(attempts),
        "mean_attempts": len(attempts) / n,
        "first_attempt_acc": sum(e.verdicts[0].correct for e in episodes) / n,
        "solved_at": [next((i + 1 for i, v in enumerate(e.verdicts) if v.correct), 0) for e in episodes],
    }


def eval_row(folder: Path, manifest: Manifest, task: str, split: str, eval_set: str, episodes: Sequence[Episode],
             *, decoding: Decoding, seed: int) -> dict[str, Any]:
    """The `evals` row of one (checkpoint, task, split, eval set) from its played episodes."""
    return {
        "checkpoint": str(folder), "label": manifest.label, "stage": manifest.stage, "step": manifest.step,
        "parent": manifest.parent, "task": task, "split": split, "eval_set": eval_set, **summarize(episodes),
        "decoding": decoding.as_dict(), "seed": seed, "versions": environment(),
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
    }


def hf_backend_loader(batch_size: int = 16, device: str | None = None, backend: str = "engine") -> LoadBackend:
    """A `LoadBackend` that loads a checkpoint folder with `load_model` into a rollout backend
    (`rlheal.engine.model_backend`: the episode engine with `batch_size` slots, or "hf": `HFBackend`).

    `device` None picks this process's GPU when CUDA is available (cuda:LOCAL_RANK under a launcher), else CPU.
    """
    return partial(_load_hf_backend, batch_size=batch_size, device=device, backend=backend)


def _load_hf_backend(folder: Path, *, batch_size: int, device: str | None, backend: str) -> Backend | EpisodeBackend:
    from rlheal.engine import model_backend
    from rlheal.models.checkpoint import load_model
    from rlheal.models.hf import resolve_device

    model, tokenizer = load_model(folder, device=device or resolve_device("auto"))
    return model_backend(model, tokenizer, kind=backend, batch_size=batch_size, name=str(folder))


def get_tasks(names: Sequence[str | Task], profile: str) -> list[Task]:
    """Task objects for names (in `profile`) or Task objects; EvalConfigError for an unknown name."""
    from rlheal.tasks import get_task

    tasks = []
    for name in names:
        if isinstance(name, Task):
            tasks.append(name)
            continue
        try:
            tasks.append(get_task(name, profile))
        except (KeyError, ValueError) as exc:
            raise EvalConfigError(f"task {name!r}: {exc}") from exc
    return tasks


def check_settings(splits: Sequence[str], episodes: int, profile: str, max_attempts: int | None) -> None:
    """Raise EvalConfigError for unknown splits or profile, or non-positive episodes/max_attempts."""
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise EvalConfigError(f"splits {list(splits)}: each must be one of {', '.join(SPLITS)}")
    if episodes < 1:
        raise EvalConfigError(f"episodes must be at least 1, got {episodes}")
    if profile not in PROFILES:
        raise EvalConfigError(f"profile {profile!r} is unknown; valid: {', '.join(PROFILES)}")
    if max_attempts is not None and max_attempts < 1:
        raise EvalConfigError(f"max_attempts must be at least 1, got {max_attempts}")


def evaluate(
    store: Store,
    checkpoints: Sequence[str | Path],
    tasks: Sequence[str | Task],
    splits: Sequence[str] = SPLITS,
    *,
    episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    profile: str = "compact",
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass, safe as a default
    batch_size: int = 16,
    max_attempts: int | None = None,
    load_backend: LoadBackend | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every checkpoint folder on every (task, split); returns the rows of all these combinations.

    `tasks` are names for `rlheal.tasks.get_task(name, profile)` or Task objects.
    Combinations already in `store` are not recomputed (their stored rows are returned). Each checkpoint
    is loaded once, with `load_backend(folder)` (default: `hf_backend_loader(batch_size)`), and only if it
    has missing combinations. `max_attempts` defaults to each task's. `on_row(row)` is called after each
    row is stored. Raises EvalConfigError for invalid settings and CheckpointError for a checkpoint
    folder that is not whole, before any work.
    """
    check_settings(splits, episodes, profile, max_attempts)
    task_objs = get_tasks(tasks, profile)
    folders = [check_checkpoint(Path(c)).resolve() for c in checkpoints]
    manifests = {folder: read_manifest(folder) for folder in folders}
    load_backend = load_backend or hf_backend_loader(batch_size)

    plan = []  # (folder, task, split, eval_set) in evaluation order
    for folder in folders:
        for task in task_objs:
            eval_set = task_eval_set(task, seed=seed, episodes=episodes, max_attempts=max_attempts, decoding=decoding)
            plan.extend((folder, task, split, eval_set) for split in splits)
    todo = [c for c in plan if not store.has(EVALS, checkpoint=str(c[0]), task=c[1].name, split=c[2],
                                             eval_set=c[3])]

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as progress:
        bar = progress.add_task("evaluating", total=len(todo) * episodes)
        for folder in dict.fromkeys(c[0] for c in todo):
            manifest = manifests[folder]
            backend = load_backend(folder)
            for _, task, split, eval_set in (c for c in todo if c[0] == folder):
                progress.update(bar, description=f"{manifest.label} {task.name}/{split}")
                base = progress.tasks[bar].completed

                def advance(finished: int, total: int, base: float = base) -> None:
                    progress.update(bar, completed=base + finished)

                played = play(task, eval_problems(task, split, seed=seed, episodes=episodes), backend,
                              max_attempts=max_attempts, decoding=decoding, on_round=advance)
                row = eval_row(folder, manifest, task.name, split, eval_set, [pe.episode for pe in played],
                               decoding=decoding, seed=seed)
                store.put(EVALS, [row])
                stopped = sum(pe.stopped is not None for pe in played)
                if stopped:
                    progress.console.print(f"{manifest.label} {task.name}/{split}: {stopped} of {episodes} "
                                           "episodes outgrew the model's context and count as unsolved")
                if on_row is not None:
                    on_row(row)
    return [store.rows(EVALS, checkpoint=str(f), task=t.name, split=s, eval_set=e)[0] for f, t, s, e in plan]


def ood_peak(store: Store, task: str, eval_set: str | None = None) -> dict[str, Any] | None:
    """The OOD-peak checkpoint's row: the `stage='sft'` OOD row of `task` with the highest success on the
    selection half of the eval problems (`report.findings.selection_success`; ties: earliest step); None when
    there is none. With several eval sets stored, name one."""
    from rlheal.report.findings import selection_success

    where = {"task": task, "split": "ood", "stage": "sft"} | ({"eval_set": eval_set} if eval_set else {})
    rows = store.rows(EVALS, **where)
    sets = sorted({r["eval_set"] for r in rows})
    if len(sets) > 1:
        raise ValueError(f"the store holds several eval sets for {task}/ood ({', '.join(sets)}): pass eval_set")
    return max(rows, key=lambda r: (selection_success(r), -r["step"]), default=None)
