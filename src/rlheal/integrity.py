"""Resume integrity: the checkpoints of a run folder that are not what was saved are found and forgotten,
with every row computed from them, so the stages that made them make them again.

A checkpoint is damaged when `models.checkpoint.find_damage` says so (a weight file missing, cut short or
altered against the digests its manifest records, or an unreadable manifest or config) or when it has no
manifest at all (rlheal writes the manifest last, inside the same atomic rename). Forgetting removes the folder
and its rows (`evals`, `losses`, `spectral`, `spectral_sigma`); a damaged RL checkpoint also takes the later
checkpoints of its run and their update rows, since RL resumes from the last checkpoint it finds.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from rlheal.models.checkpoint import MANIFEST, find_damage
from rlheal.store import Store

log = logging.getLogger("rlheal.integrity")


def run_checkpoints(run: str | Path) -> list[Path]:
    """The checkpoint folders rlheal writes in run folder `run`: sft/step-*, rl/*/step-*, edits/* (not hidden)."""
    run = Path(run)
    found = [*run.glob("sft/step-*"), *run.glob("rl/*/step-*"), *run.glob("edits/[!.]*")]
    return sorted(p for p in found if p.is_dir() and not p.is_symlink())


def damage_of(folder: Path) -> str | None:
    """Why `folder` (a checkpoint of a run folder) cannot be used as saved, or None."""
    if not (folder / MANIFEST).exists():
        return f"{folder} has no {MANIFEST} (rlheal writes it last: the folder is not one it finished)"
    return find_damage(folder)


def forget_damaged(run: str | Path) -> list[Path]:
    """Verify every checkpoint of `run` (each weight file is read) and forget the damaged ones (see the
    module docstring), logging why; returns the folders removed. Call it while holding the run's lock."""
    damaged = [(folder, why) for folder in run_checkpoints(run) if (why := damage_of(folder))]
    if not damaged:
        return []
    removed: list[Path] = []
    with Store(run) as store:  # rows go first: a kill in between leaves the folder to be found again
        for folder, why in damaged:
            if not folder.exists():  # already taken with an earlier RL checkpoint of its run
                continue
            log.warning("damaged checkpoint: %s; it is removed and will be made again", why)
            doomed = _later_rl_checkpoints(folder) if folder.parent.parent.name == "rl" else [folder]
            if folder.parent.parent.name == "rl":
                _forget_updates(store, folder.parent, after=_step_before(folder))
            for path in doomed:
                _forget_rows(store, path)
                shutil.rmtree(path)
                removed.append(path)
    return removed


def _steps(run_folder: Path) -> dict[Path, int]:
    """Step of each checkpoint of one RL run folder, from the folder name (`step-000010`)."""
    return {p: int(p.name.removeprefix("step-")) for p in run_folder.glob("step-*")
            if p.is_dir() and p.name.removeprefix("step-").isdigit()}


def _later_rl_checkpoints(folder: Path) -> list[Path]:
    """`folder` and the checkpoints of its RL run saved after it (all of them when its name has no step)."""
    steps = _steps(folder.parent)
    mine = steps.get(folder, 0)
    return sorted((p for p, step in steps.items() if step >= mine), key=steps.get) or [folder]


def _step_before(folder: Path) -> int:
    """The step of the last checkpoint of `folder`'s RL run saved before it (0 when none)."""
    steps = _steps(folder.parent)
    mine = steps.get(folder, 0)
    return max((step for step in steps.values() if step < mine), default=0)


def _forget_rows(store: Store, folder: Path) -> None:
    from rlheal.evaluate import EVALS
    from rlheal.spectral.metrics import SPECTRAL, SPECTRAL_SIGMA
    from rlheal.train.sft import LOSSES

    path = str(folder.resolve())
    store.delete(EVALS, checkpoint=path)
    store.delete(LOSSES, checkpoint=path)
    for table in (SPECTRAL, SPECTRAL_SIGMA):
        store.delete(table, target=path)
        store.delete(table, reference=path)


def _forget_updates(store: Store, run_folder: Path, after: int) -> None:
    """Drop the `rl_updates` rows of RL run `run_folder` after update `after` (they will be trained again)."""
    from rlheal.train.ppo import RL_UPDATES

    run_id = str(run_folder.resolve())
    for row in store.rows(RL_UPDATES, run_id=run_id):
        if row["update"] > after:
            store.delete(RL_UPDATES, run_id=run_id, update=row["update"])
