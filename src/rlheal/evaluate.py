"""Evaluation: success of each checkpoint on each (task, split) over a frozen eval set, into the `evals` table.

The eval set of (task, split) is problems 0..N-1 of the eval pool drawn with seed `EVAL_SEED_OFFSET + seed`:
held-out problems, which no training text contains (`rlheal.tasks.holdout`). A stored row is identified by
(checkpoint, task, split, eval_set); `evaluate` skips the combinations already stored, checking before it
loads a model. Within a combination, episodes are played one batch of problems at a time and each problem's
outcome is stored as its batch finishes (table `eval_episodes`), so a killed evaluation loses at most the batch
in flight and resumes at the next problem; the combination's row is written when its last problem is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rlheal.models.checkpoint import Manifest, check_checkpoint, read_manifest
from rlheal.progress import bar
from rlheal.provenance import environment
from rlheal.rollout import Backend, Decoding, EpisodeBackend, PlayedEpisode, play
from rlheal.samples import SampleLog
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

# Per problem of a combination still being evaluated: its outcome, kept until the combination's row is written.
EVAL_EPISODES = Table(
    name="eval_episodes",
    columns={"checkpoint": "path", "task": "str", "split": "str", "eval_set": "str", "position": "int",
             "solved_at": "int", "attempts": "int", "format_errors": "int"},
    key=("checkpoint", "task", "split", "eval_set", "position"),
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


@dataclass(frozen=True)
class Outcome:
    """How one episode ended: the attempt that solved it (1-based; 0: none), its attempts, its format errors."""

    solved_at: int
    attempts: int
    format_errors: int


def outcome(episode: Episode) -> Outcome:
    return Outcome(solved_at=next((i + 1 for i, v in enumerate(episode.verdicts) if v.correct), 0),
                   attempts=len(episode.verdicts), format_errors=sum(not v.format_ok for v in episode.verdicts))


def summarize(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Metrics of played episodes (`summarize_outcomes` of their outcomes)."""
    return summarize_outcomes([outcome(e) for e in episodes])


def summarize_outcomes(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Metrics of episode outcomes, in eval-set order.

    success_rate: share of episodes solved at any attempt, with its 95 % Wilson interval (ci_low, ci_high);
    first_attempt_acc: share solved at the first attempt; mean_attempts: attempts per episode;
    format_error_rate: share of all attempts whose answer was not in the profile's format;
    solved_at: per episode, the attempt that solved it (1-based), 0 when none did.
    """
    if not outcomes:
        raise ValueError("cannot summarize zero episodes")
    n = len(outcomes)
    solved = sum(o.solved_at > 0 for o in outcomes)
    attempts = sum(o.attempts for o in outcomes)
    low, high = wilson_interval(solved, n)
    return {
        "n_episodes": n,
        "n_solved": solved,
        "success_rate": solved / n,
        "ci_low": low,
        "ci_high": high,
        "format_error_rate": sum(o.format_errors for o in outcomes) / attempts if attempts else 0.0,
        "mean_attempts": attempts / n,
        "first_attempt_acc": sum(o.solved_at == 1 for o in outcomes) / n,
        "solved_at": [o.solved_at for o in outcomes],
    }


def eval_row(folder: Path, manifest: Manifest, task: str, split: str, eval_set: str, outcomes: Sequence[Outcome],
             *, decoding: Decoding, seed: int, label: str | None = None) -> dict[str, Any]:
    """The `evals` row of one (checkpoint, task, split, eval set) from its episodes' outcomes; `label` replaces
    the manifest's (see `unique_label`)."""
    return {
        "checkpoint": str(folder), "label": label or manifest.label, "stage": manifest.stage, "step": manifest.step,
        "parent": manifest.parent, "task": task, "split": split, "eval_set": eval_set,
        **summarize_outcomes(outcomes),
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
    samples: SampleLog | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every checkpoint folder on every (task, split); returns the rows of all these combinations.

    `tasks` are names for `rlheal.tasks.get_task(name, profile)` or Task objects.
    Combinations already in `store` are not recomputed (their stored rows are returned), nor are the problems
    of an unfinished combination whose outcomes are stored. Each checkpoint is loaded once, with
    `load_backend(folder)` (default: `hf_backend_loader(batch_size)`), and only if it has work left. Problems are
    played `batch_size` at a time (with temperature > 0, each batch samples with its own seed drawn from
    `decoding.seed`). `max_attempts` defaults to each task's. `on_row(row)` is called after each row is stored;
    `samples` receives every played episode. A checkpoint's label is unique in the store (`unique_label`).
    Raises EvalConfigError for invalid settings and CheckpointError for a checkpoint folder that is not whole,
    before any work.
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
    stored = {c: _stored_outcomes(store, *c) for c in todo}
    left = sum(episodes - len(found) for found in stored.values())
    taken = stored_labels(store)
    labels = {folder: unique_label(taken, folder, manifests[folder].label) for folder in dict.fromkeys(c[0] for c in todo)}
    with bar("evaluating", total=len(todo) * episodes, completed=len(todo) * episodes - left,
             enabled=show_progress) as progress:
        for folder in labels:
            manifest, backend = manifests[folder], None
            for combo in (c for c in todo if c[0] == folder):
                _, task, split, eval_set = combo
                outcomes, stopped = stored[combo], 0
                problems = eval_problems(task, split, seed=seed, episodes=episodes)
                missing = [i for i in range(episodes) if i not in outcomes]
                progress.update(description=f"{labels[folder]} {task.name}/{split}")
                for chunk in (missing[i:i + batch_size] for i in range(0, len(missing), batch_size)):
                    backend = backend or load_backend(folder)
                    played = play(task, [problems[i] for i in chunk], backend, max_attempts=max_attempts,
                                  decoding=_batch_decoding(decoding, chunk[0]))
                    if samples is not None:
                        samples.write(played, {"checkpoint": str(folder), "label": labels[folder], "task": task.name,
                                               "split": split, "eval_set": eval_set})
                    outcomes |= _store_outcomes(store, combo, chunk, played)
                    stopped += sum(pe.stopped is not None for pe in played)
                    progress.advance(len(chunk))
                row = eval_row(folder, manifest, task.name, split, eval_set, [outcomes[i] for i in range(episodes)],
                               decoding=decoding, seed=seed, label=labels[folder])
                store.put(EVALS, [row])
                store.delete(EVAL_EPISODES, checkpoint=str(folder), task=task.name, split=split, eval_set=eval_set)
                if stopped:
                    progress.note(f"{labels[folder]} {task.name}/{split}: {stopped} of {episodes} episodes outgrew the "
                                  "model's context and count as unsolved")
                if on_row is not None:
                    on_row(row)
    return [store.rows(EVALS, checkpoint=str(f), task=t.name, split=s, eval_set=e)[0] for f, t, s, e in plan]


def _batch_decoding(decoding: Decoding, first_position: int) -> Decoding:
    """The decoding of the batch of problems that starts at `first_position`: sampling gets a seed of its own."""
    return decoding if decoding.greedy else replace(decoding, seed=decoding.seed * 1_000_003 + first_position)


def _stored_outcomes(store: Store, folder: Path, task: Task, split: str, eval_set: str) -> dict[int, Outcome]:
    rows = store.rows(EVAL_EPISODES, checkpoint=str(folder), task=task.name, split=split, eval_set=eval_set)
    return {r["position"]: Outcome(r["solved_at"], r["attempts"], r["format_errors"]) for r in rows}


def _store_outcomes(store: Store, combo: tuple[Path, Task, str, str], positions: Sequence[int],
                    played: Sequence[PlayedEpisode]) -> dict[int, Outcome]:
    """Store (and return) the outcome of each played episode at its position in the eval set."""
    folder, task, split, eval_set = combo
    found = {i: outcome(pe.episode) for i, pe in zip(positions, played, strict=True)}
    store.put(EVAL_EPISODES, [{"checkpoint": str(folder), "task": task.name, "split": split, "eval_set": eval_set,
                               "position": i, "solved_at": o.solved_at, "attempts": o.attempts,
                               "format_errors": o.format_errors} for i, o in found.items()])
    return found


def stored_labels(store: Store) -> dict[str, str]:
    """{label: the checkpoint it was first stored with} of the store's `evals` rows."""
    taken: dict[str, str] = {}
    for row in store.rows(EVALS):
        taken.setdefault(row["label"], row["checkpoint"])
    return taken


def unique_label(taken: dict[str, str], folder: Path, label: str) -> str:
    """The label of checkpoint `folder` given the labels `taken` ({label: checkpoint}, updated): the one it
    already has, else `label` unless another checkpoint has it, then `<parent folder>/<label>`, then `label#2`,
    `label#3`, ..."""
    mine = next((lab for lab, checkpoint in taken.items() if checkpoint == str(folder)), None)
    if mine is not None:
        return mine
    candidates = [label, f"{Path(folder).parent.name}/{label}", *(f"{label}#{n}" for n in range(2, len(taken) + 3))]
    chosen = next(c for c in candidates if c not in taken)
    taken[chosen] = str(folder)
    return chosen


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
