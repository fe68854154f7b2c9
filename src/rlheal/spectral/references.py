"""Reference checkpoints for a sweep: a path, the run's base model, the run's OOD-peak SFT checkpoint, or
each target's predecessor."""

from __future__ import annotations

from pathlib import Path

from rlheal.store import Store, StoreError

NAMED_REFERENCES = ("base", "ood-peak", "previous")


def ood_peak_checkpoint(run: str | Path, task: str | None = None) -> Path:
    """The OOD-peak SFT checkpoint of RUN's store (`rlheal.evaluate.ood_peak`).

    With evaluations of several tasks in the store, `task` must say which one to use.
    """
    from rlheal.evaluate import EVALS, ood_peak

    with Store(run) as store:
        if "evals" not in store.tables():
            raise StoreError(f"{store.path} has no evals table: evaluate the SFT checkpoints first "
                             "(rlheal eval) or give the reference checkpoint as a path")
        tasks = sorted({r["task"] for r in store.rows(EVALS, stage="sft", split="ood")})
        if task is None and len(tasks) > 1:
            raise StoreError(f"{store.path} holds OOD evaluations of several tasks {tasks}: choose one with --task")
        best = ood_peak(store, task or (tasks[0] if tasks else ""))
    if best is None:
        raise StoreError(f"{store.path} holds no OOD evaluation of an SFT checkpoint"
                         + (f" for task {task!r}" if task else "") + ": evaluate them first or give a path")
    return Path(best["checkpoint"])


def base_checkpoint(run: str | Path) -> Path:
    """RUN/base, the base model a study run starts from."""
    base = Path(run) / "base"
    if not (base / "config.json").exists():
        raise StoreError(f"{base} is not a checkpoint: give the base model's folder as --ref PATH instead")
    return base


def reference_pairs(ref: str, targets: list[Path], run: str | Path | None = None,
                    task: str | None = None) -> list[tuple[Path, Path]]:
    """(reference, target) pairs for a --ref value: a checkpoint path, `base`, `ood-peak` (both need a run
    folder) or `previous` (each target against the one before it; the first target has none and is skipped)."""
    if ref == "previous":
        if len(targets) < 2:
            raise StoreError("--ref previous needs at least two checkpoints")
        return list(zip(targets[:-1], targets[1:], strict=True))
    if ref in ("base", "ood-peak"):
        if run is None:
            raise StoreError(f"--ref {ref} needs --store RUN (the run folder), or give the reference as a path")
        reference = base_checkpoint(run) if ref == "base" else ood_peak_checkpoint(run, task)
    else:
        reference = Path(ref)
    return [(reference, t) for t in targets]
