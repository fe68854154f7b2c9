"""A transformers `TrainerCallback` that watches any HF or TRL trainer the way the study watches its SFT runs.

At each save it evaluates the checkpoint the trainer just wrote on a small frozen ID/OOD eval set
(`rlheal.evaluate.evaluate`, table `evals`), measures the rotation of its weight matrices against the start
(`rlheal.spectral.run_spectrum`, tables `spectral` and `spectral_sigma`), writes both to the rlheal results
store in `store_dir`, and raises the "OOD peak" alarm (a `logging` warning and an `OODPeakWarning`) when OOD
success has fallen `alarm_drop` or more below its best so far. The start is evaluated too, at the beginning
of training, so the best so far includes it.

Only the main process works (`state.is_world_process_zero`); the other processes go on training and wait at
their next collective call, so keep `episodes` small or raise `TrainingArguments.ddp_timeout` for long
evaluations.

    trainer = SFTTrainer(model=..., args=SFTConfig(output_dir="runs/x", save_steps=50), train_dataset=...,
                         callbacks=[RlhealCallback("runs/x", tasks=("gp24",), profile="paper")])
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlheal.evaluate import LoadBackend, evaluate
from rlheal.models.checkpoint import CheckpointError, Manifest, save_model
from rlheal.models.hf import check_model_folder, hf_loader
from rlheal.rollout import Decoding
from rlheal.store import Store
from rlheal.tasks.base import Task

log = logging.getLogger(__name__)
START_DIR = "start"
SPECTRAL_CACHE_DIR = "spectral-cache"


class OODPeakWarning(UserWarning):
    """OOD success fell a set amount below its best so far: the OOD peak checkpoint is behind."""


def ood_alarm(best: dict[str, Any] | None, current: dict[str, Any], drop: float) -> str | None:
    """The alarm message when `current` OOD success is at least `drop` below `best` (rows with
    `success_rate`, `step`, `checkpoint`), else None."""
    if best is None or best["success_rate"] - current["success_rate"] < drop - 1e-12:
        return None
    return (f"OOD peak alarm ({current['task']}): OOD success {current['success_rate']:.3f} at step "
            f"{current['step']} is {best['success_rate'] - current['success_rate']:.3f} below its best "
            f"{best['success_rate']:.3f} (step {best['step']}, {best['checkpoint']}); that checkpoint is the OOD "
            "peak so far: keep it, and consider stopping SFT or starting RL from it")


class RlhealCallback(TrainerCallback):
    """Evaluate ID/OOD and the top-k rotation relative to the start at every save; warn at an OOD drop.

    store_dir: run folder of the results store (created if missing); a copy of the initial weights goes to
    `store_dir/start` when the model was not loaded from a local folder (or `start` names none).
    tasks, splits, episodes, eval_seed, profile, max_attempts, decoding: the frozen eval set (as `rlheal eval`).
    k, modules: the top-k subspace size (fraction of the rank or count) and the matrices compared.
    alarm_drop: OOD success drop below the best so far that raises the alarm.
    load_backend: how a checkpoint folder becomes a backend (default: `rlheal.models.hf.hf_loader` with the
    trainer's tokenizer: bf16 on GPU, batch size from free memory).
    device: where evaluation and the spectral analysis run ("auto": this process's GPU, else CPU).
    """

    def __init__(
        self,
        store_dir: str | Path,
        tasks: Sequence[str | Task] = ("gp24",),
        splits: Sequence[str] = ("id", "ood"),
        *,
        episodes: int = 64,
        k: float = 0.2,
        modules: str | Sequence[str] | None = None,
        alarm_drop: float = 0.05,
        eval_seed: int = 0,
        profile: str = "paper",
        max_attempts: int | None = None,
        decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass, safe as a default
        start: str | Path | None = None,
        load_backend: LoadBackend | None = None,
        device: str = "auto",
        spectral: bool = True,
    ) -> None:
        if "ood" not in splits:
            raise ValueError(f"splits {list(splits)} must include 'ood': the alarm watches OOD success")
        if not alarm_drop > 0:
            raise ValueError(f"alarm_drop must be > 0 (a drop in success rate), got {alarm_drop}")
        self.store_dir = Path(store_dir)
        self.tasks, self.splits, self.episodes = list(tasks), tuple(splits), episodes
        self.k, self.modules, self.alarm_drop = k, modules, alarm_drop
        self.eval_seed, self.profile, self.max_attempts, self.decoding = eval_seed, profile, max_attempts, decoding
        self.start = Path(start) if start is not None else None
        self.load_backend, self.device, self.spectral = load_backend, device, spectral
        self.best: dict[str, dict[str, Any]] = {}  # task -> best OOD row so far
        self.alarms: list[str] = []

    # --- trainer events ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.start = self._resolve_start(model, processing_class)
        self._evaluate(self.start, processing_class)

    def on_save(self, args, state, control, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("rlheal: no checkpoint folder %s after the save at step %d; nothing evaluated",
                        folder, state.global_step)
            return
        self._evaluate(folder, processing_class)
        if self.spectral and self.start is not None:
            self._rotation(folder)

    # --- work -------------------------------------------------------------------------------------------------
    def _resolve_start(self, model: Any, tokenizer: Any) -> Path:
        """The start checkpoint: `start`, else the local folder the model was loaded from, else a saved copy."""
        if self.start is not None:
            return check_model_folder(self.start)
        source = Path(getattr(model, "name_or_path", "") or "")
        if str(source) and source.is_dir():
            try:
                return check_model_folder(source)
            except CheckpointError:
                pass  # not a whole HF folder: save a copy below
        copy = self.store_dir / START_DIR
        if not copy.is_dir():
            if tokenizer is None:
                raise CheckpointError("RlhealCallback needs the tokenizer to save the starting model: pass "
                                      "processing_class=tokenizer to the trainer, or start=FOLDER to the callback")
            save_model(model, tokenizer, copy, Manifest(stage="base", step=0, extra={"name": "start"}))
        return copy

    def _backend_loader(self, tokenizer: Any) -> LoadBackend:
        if self.load_backend is not None:
            return self.load_backend
        return hf_loader("auto", device=self.device, tokenizer=tokenizer,
                         new_tokens=self.decoding.max_new_tokens)

    def _evaluate(self, folder: Path, tokenizer: Any) -> list[dict[str, Any]]:
        with Store(self.store_dir) as store:
            rows = evaluate(store, [folder], self.tasks, self.splits, episodes=self.episodes, seed=self.eval_seed,
                            profile=self.profile, decoding=self.decoding, max_attempts=self.max_attempts,
                            load_backend=self._backend_loader(tokenizer), show_progress=False)
        for row in rows:
            log.info("rlheal: %s %s/%s success %.3f", row["label"], row["task"], row["split"], row["success_rate"])
            if row["split"] != "ood":
                continue
            message = ood_alarm(self.best.get(row["task"]), row, self.alarm_drop)
            if message:
                self.alarms.append(message)
                log.warning(message)
                warnings.warn(message, OODPeakWarning, stacklevel=2)
            best = self.best.get(row["task"])
            if best is None or row["success_rate"] > best["success_rate"]:
                self.best[row["task"]] = row
        return rows

    def _rotation(self, folder: Path) -> list[dict[str, Any]]:
        from rlheal.spectral import SPECTRAL, SPECTRAL_SIGMA, DecompositionCache, aggregate, run_spectrum

        rows, sigma_rows = run_spectrum([(self.start, folder)], (self.k,), self.modules, device=self.device,
                                        cache=DecompositionCache(self.store_dir / SPECTRAL_CACHE_DIR), progress=False)
        with Store(self.store_dir) as store, store.transaction():
            store.put(SPECTRAL, rows)
            store.put(SPECTRAL_SIGMA, sigma_rows)
        for agg in aggregate(rows, ("k_label",)):
            log.info("rlheal: %s vs start, %s: max top-k angle %.4f (left) %.4f (right) rad, mean |Δσ|/σ %.4g",
                     folder.name, agg["k_label"], agg["top_left_max"], agg["top_right_max"],
                     agg["mean_abs_rel_sigma_drift"])
        return rows
