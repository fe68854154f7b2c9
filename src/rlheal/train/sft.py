"""Supervised fine-tuning on the ID split with TRL's SFTTrainer and a dense checkpoint schedule.

Data: one (prompt, completion) chat pair per ID training problem, `task.prompt(p)` -> `task.answer(p)`, in
TRL's conversational prompt-completion form, so the model's chat template is applied and the loss falls on
the completion tokens only (TRL masks the prompt: it tokenizes the prompt with the generation prompt and
the prompt + completion, and labels only the tokens after their common prefix).

At every scheduled step (step 0 is the starting model) a callback saves the model to `RUN/sft/step-NNNNNN/`
with a manifest (stage "sft", step, parent = the starting model, seed, config hash) and writes the
teacher-forced answer-token loss on frozen ID and OOD test sets (the evaluation problems) to the `losses`
table. HF's own checkpointing, evaluation and reporting are off.

Resume: no optimizer state is stored, so a rerun with the same config retrains from the start
(deterministic on CPU), skips the checkpoints already saved (their losses are added only if missing) and
stops after the last missing step. A rerun with a different config into the same folder is refused. Under
`accelerate launch` every process runs this same code; only the main process writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from rlheal.atomic import write_text
from rlheal.models.checkpoint import (
    CheckpointError,
    Manifest,
    check_checkpoint,
    read_manifest,
    save_model,
    weights_sha256,
)
from rlheal.provenance import stable_hash
from rlheal.store import Store, Table
from rlheal.tasks.base import PROFILES, check_names
from rlheal.tracking import Trackers
from rlheal.train.schedule import ScheduleError, resolve_schedule
from rlheal.yaml_input import YamlInputError, load_yaml_file

LOSSES = Table(
    name="losses",
    columns={"checkpoint": "path", "task": "str", "split": "str", "step": "int", "loss": "float",
             "n_tokens": "int"},
    key=("checkpoint", "task", "split"),
)
SFT_DIR = "sft"
TRAIN_LOG = "train_log.json"
METHOD_MODULES = ("q", "k", "v", "o", "gate", "up", "down")
METHOD_FIELDS = ("method", "method_modules", "lora_rank", "lora_alpha", "penalty_weight", "penalty_k")


def _checkpointing_argument() -> str:
    """The training argument that switches activation (gradient) checkpointing: transformers renamed it."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


class SFTConfigError(ValueError):
    """An SFT config that cannot be used; the message names the file and field and what to do."""


class SFTConfig(BaseModel):
    """What an SFT run does. `model` is a Hugging Face checkpoint folder or a built-in base (`builtin:det`, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "builtin:det"
    tasks: list[str] = Field(default_factory=lambda: ["det"], min_length=1)
    profile: str = "compact"
    n_train: int = Field(2000, ge=1, description="ID training problems per task")
    train_seed: int = Field(0, ge=0, description="seed of the ID training problems")
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="per-device batch size")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: str | list[int] = "log:12"
    loss_eval_n: int = Field(100, ge=1, description="problems per (task, split) in the loss test sets")
    loss_eval_seed: int = Field(0, ge=0, description="the eval-set seed whose problems form the loss test sets")
    max_length: int = Field(1024, ge=16)
    bf16: bool = False
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory for large models, slower; the built-in model trains without it")
    seed: int = 0
    method: Literal["full", "lora", "rotation_penalty", "sigma_only"] = Field(
        "full", description="how the weights may move: full, lora (adapters, saved merged), rotation_penalty "
        "(full SFT plus a penalty on turning the base's top-k singular subspaces), sigma_only (only singular "
        "values train, in the base's singular basis); docs/RESULTS.md")
    method_modules: list[str] = Field(default_factory=lambda: list(METHOD_MODULES), min_length=1,
                                      description="the decoder projections the method acts on (q, k, v, o, gate, up, down)")
    lora_rank: int = Field(8, ge=1, description="lora: the adapters' rank")
    lora_alpha: float = Field(16.0, gt=0, description="lora: the adapters' scale numerator (scale = alpha / rank)")
    penalty_weight: float = Field(1.0, ge=0, description="rotation_penalty: its weight in the loss")
    penalty_k: float = Field(0.2, gt=0, description="rotation_penalty: the top-k subspaces kept, a fraction of the "
                             "rank (≤ 1) or a count")

    @model_serializer(mode="wrap")
    def _omit_defaults_that_change_no_result(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dumps leave out the method's settings while they are the defaults (plain full SFT) and
        `gradient_checkpointing` while off, so configs without them keep their hashes and study fingerprints
        (checkpointing changes memory and time, not weights: runs made when TRL's default had it on hold the
        same weights)."""
        data = handler(self)
        fields = type(self).model_fields
        if all(getattr(self, n) == fields[n].get_default(call_default_factory=True) for n in METHOD_FIELDS):
            for name in METHOD_FIELDS:
                data.pop(name, None)
        if not self.gradient_checkpointing:
            data.pop("gradient_checkpointing", None)
        return data

    @field_validator("method_modules")
    @classmethod
    def _known_modules(cls, value: list[str]) -> list[str]:
        return check_names("method_modules", value, METHOD_MODULES)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        from rlheal.tasks import TASK_NAMES

        return check_names("tasks", value, TASK_NAMES)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        return check_names("profile", [value], PROFILES)[0]

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str | list[int]) -> str | list[int]:
        resolve_schedule(value, 10**9)  # raises ScheduleError (a ValueError) with the reason
        return value

    def checkpoint_steps(self) -> list[int]:
        try:
            return resolve_schedule(self.schedule, self.steps)
        except ScheduleError as exc:
            raise SFTConfigError(f"schedule: {exc}") from exc


def load_sft_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> SFTConfig:
    """Read and validate a YAML SFT config (an optional top-level `sft:` section is accepted); None gives the
    built-in study's SFT settings. `overrides` ({field: value}) replace fields before validation."""
    source = "the built-in study's SFT settings" if path is None else str(path)
    if path is None:
        from rlheal.config import StudyConfig

        data: Any = StudyConfig().sft.model_dump()
    else:
        try:
            data = load_yaml_file(Path(path))
        except YamlInputError as exc:
            raise SFTConfigError(str(exc)) from None
        if data is None:
            raise SFTConfigError(f"{path} holds no settings: write the SFT fields (see rlheal.train.sft.SFTConfig)")
        if isinstance(data, dict) and isinstance(data.get("sft"), dict):
            data = data["sft"]
        if not isinstance(data, dict):
            raise SFTConfigError(f"{path} must hold a mapping of SFT settings, found {type(data).__name__}")
    try:
        return SFTConfig(**{**data, **(overrides or {})})
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
        raise SFTConfigError(f"{source}: {problems}") from exc


def sft_examples(tasks: Sequence[Any], n: int, seed: int) -> list[dict[str, list[dict[str, str]]]]:
    """Conversational prompt-completion pairs for the first `n` ID problems of `seed` of every task."""
    return [
        {"prompt": [{"role": "user", "content": task.prompt(p)}],
         "completion": [{"role": "assistant", "content": task.answer(p)}]}
        for task in tasks
        for p in task.problems("id", seed, n)
    ]


def answer_token_batch(tokenizer, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, labels) per (prompt, answer): labels are -100 on the prompt, as TRL's completion loss."""
    inputs, labels = [], []
    for prompt, answer in pairs:
        user = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=True,
                                             return_dict=False)
        cut = 0
        while cut < min(len(prompt_ids), len(full)) and prompt_ids[cut] == full[cut]:
            cut += 1
        inputs.append(full)
        labels.append([-100] * cut + full[cut:])
    return inputs, labels


def answer_loss(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> tuple[float, int]:
    """Teacher-forced mean NLL per answer token over `pairs`, and the number of answer tokens."""
    import torch

    inputs, labels = answer_token_batch(tokenizer, pairs)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            ids, lab = inputs[start:start + batch_size], labels[start:start + batch_size]
            width = max(len(x) for x in ids)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            target = torch.tensor([y + [-100] * (width - len(y)) for y in lab], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            target = target[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    model.train(was_training)
    return total / max(count, 1), count


def resolve_model(name: str, progress: bool = True) -> Path:
    """The starting checkpoint folder: a name of `rlheal.models.builtin.RECIPES` ("builtin:det", "builtin:gp24",
    "builtin:tiny" for smoke runs) is the built-in base, built if missing; anything else is a Hugging Face
    checkpoint folder."""
    if name.startswith("builtin"):
        from rlheal.models.builtin import RECIPES, builtin_base

        if name not in RECIPES:
            raise SFTConfigError(f"unknown built-in model {name!r}; valid: {', '.join(RECIPES)}")
        return builtin_base(RECIPES[name], progress=progress)
    try:
        return check_checkpoint(Path(name).expanduser())
    except CheckpointError as exc:
        raise SFTConfigError(f"model: {exc}") from None


def bf16_available() -> bool:
    """Whether this machine trains in bfloat16 (a CUDA GPU that supports it)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def step_folder(out: Path, step: int) -> Path:
    return Path(out) / SFT_DIR / f"step-{step:06d}"


def config_hash(cfg: SFTConfig, start: Path) -> str:
    """The hash recorded in every checkpoint: the config without the start's path, plus the identity of the
    starting model (its manifest's config hash, e.g. a built-in recipe; else its weights' sha256). No path
    enters it, so a run resumes wherever its base lies (another cache, user or machine)."""
    start_id = read_manifest(start).config_hash or weights_sha256(start)
    return stable_hash({"sft": cfg.model_dump(exclude={"model"}), "start": start_id})


def path_config_hash(cfg: SFTConfig, start: Path) -> str:
    """The hash rlheal recorded before hashes were path-free (the config with the start's path, a start without
    a manifest hash by its resolved path): checkpoints saved with it still resume where they were made."""
    start_id = read_manifest(start).config_hash or str(start.resolve())
    return stable_hash({"sft": cfg.model_dump(), "start": start_id})


def existing_steps(out: Path, expected_hash: str, *older_hashes: str) -> set[int]:
    """Steps already saved under RUN/sft (with `expected_hash`, or one of `older_hashes` of the same config);
    refuses a folder written by another config."""
    saved: set[int] = set()
    sft_dir = Path(out) / SFT_DIR
    if not sft_dir.is_dir():
        return saved
    for folder in sorted(sft_dir.glob("step-*")):
        if not folder.is_dir():
            continue
        try:
            check_checkpoint(folder)
            manifest = read_manifest(folder)
        except CheckpointError as exc:
            raise SFTConfigError(f"{exc}. Delete {folder} and rerun: the step will be trained and saved again") from exc
        if manifest.config_hash not in (expected_hash, *older_hashes):
            raise SFTConfigError(
                f"{folder} was written by another SFT config (hash {manifest.config_hash}, this one is "
                f"{expected_hash}); choose a new --out folder, or move the old run aside")
        saved.add(manifest.step)
    return saved


def run_sft(cfg: SFTConfig, out: str | Path, store: Store, progress: bool = True,
            trackers: Trackers | None = None) -> list[Path]:
    """Train per `cfg` into the run folder `out`; returns the folders of all scheduled checkpoints.

    `progress` shows one bar over the steps; the trainer's own log lines appear only while transformers'
    logging is at INFO or WARNING (its default; `rlheal --verbose`). With `trackers` (`rlheal.tracking`) the
    trainer reports to the same trackers as run `sft`, and the scheduled test losses go to run `eval/sft`."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from rlheal.evaluate import eval_problems
    from rlheal.models.checkpoint import load_model
    from rlheal.progress import bar
    from rlheal.tasks import get_task
    from rlheal.tracking import TrainerReporting
    from rlheal.train import sft_methods

    out = Path(out)
    if cfg.bf16 and not bf16_available():
        raise SFTConfigError("bf16: this machine has no GPU that computes in bfloat16; set bf16 to false")
    tasks = [get_task(name, profile=cfg.profile) for name in cfg.tasks]
    schedule = cfg.checkpoint_steps()
    start = resolve_model(cfg.model, progress=progress)
    chash = config_hash(cfg, start)
    saved = existing_steps(out, chash, path_config_hash(cfg, start))
    model, tokenizer = load_model(start)
    model, penalty = sft_methods.prepare(model, cfg)
    model.train()
    loss_sets = {(t.name, split): [(t.prompt(p), t.answer(p))
                                   for p in eval_problems(t, split, seed=cfg.loss_eval_seed, episodes=cfg.loss_eval_n)]
                 for t in tasks for split in ("id", "ood")}
    todo = [s for s in schedule if s not in saved or not _has_losses(store, step_folder(out, s), loss_sets)]
    todo = _main_process_view(todo)
    if not todo:
        return [step_folder(out, s) for s in schedule]

    class ScheduleCallback(TrainerCallback):
        """Save + loss rows at scheduled steps; stop after the last step still to do."""

        trainer: Any = None
        bar: Any = None

        def checkpoint(self, step: int) -> None:
            if step not in todo:
                return
            trainer, folder = self.trainer, step_folder(out, step)
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
            losses = {key: answer_loss(trainer.model_wrapped, tokenizer, pairs) for key, pairs in loss_sets.items()}
            if trainer.is_world_process_zero():
                if step not in saved:
                    manifest = Manifest(stage="sft", step=step, parent=str(start.resolve()), seed=cfg.seed,
                                        config_hash=chash, extra={"tasks": cfg.tasks, "profile": cfg.profile})
                    unwrapped = trainer.accelerator.unwrap_model(trainer.model_wrapped)
                    if cfg.method in ("lora", "sigma_only"):  # a plain HF model, as every other stage reads
                        unwrapped, state_dict = sft_methods.plain_weights(unwrapped, cfg.method)
                    save_model(unwrapped, tokenizer, folder, manifest, overwrite=False, state_dict=state_dict)
                store.put(LOSSES, [{"checkpoint": str(folder.resolve()), "task": task, "split": split,
                                    "step": step, "loss": loss, "n_tokens": n}
                                   for (task, split), (loss, n) in losses.items()])
            if trackers is not None and trainer.is_world_process_zero():
                trackers.log("eval/sft", {f"{task}/{split}/test_loss": loss for (task, split), (loss, _) in
                                          losses.items()}, step)
            trainer.accelerator.wait_for_everyone()

        def on_train_begin(self, args, state, control, **kwargs):
            self.checkpoint(0)

        def on_step_end(self, args, state, control, **kwargs):
            self.checkpoint(state.global_step)
            self.bar.advance(1, description=f"SFT step {state.global_step}")
            if state.global_step >= max(todo):
                control.should_training_stop = True

    reporting = TrainerReporting(trackers.report_to if trackers else [], out, "sft")
    args = TRLConfig(
        output_dir=str(out / SFT_DIR / ".trainer"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        bf16=cfg.bf16,
        **{_checkpointing_argument(): cfg.gradient_checkpointing},
        optim="adamw_torch",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,  # rlheal's own bar instead
        **reporting.arguments,
    )

    class PenalizedTrainer(SFTTrainer):
        """TRL's SFTTrainer with the method's penalty added to every training loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if return_outputs:
                return result[0] + penalty(), result[1]
            return result + penalty()

    callback = ScheduleCallback()
    started = time.perf_counter()
    with reporting:
        trainer = (SFTTrainer if penalty is None else PenalizedTrainer)(
            model=model, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list(sft_examples(tasks, cfg.n_train, cfg.train_seed)), callbacks=[callback])
    callback.trainer = trainer
    if hf_logging.get_verbosity() > hf_logging.WARNING:
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts (the history is still kept)
    with bar("SFT", total=max(todo), enabled=progress) as callback.bar:
        trainer.train()
    if trainer.is_world_process_zero():
        log = {"wall_s": round(time.perf_counter() - started, 2), "config_hash": chash,
               "history": [h for h in trainer.state.log_history if "loss" in h]}
        write_text(out / SFT_DIR / TRAIN_LOG, json.dumps(log, indent=1))
    missing = [s for s in schedule if not step_folder(out, s).is_dir()]
    if missing:
        raise CheckpointError(f"SFT ended without saving steps {missing} under {out / SFT_DIR}")
    return [step_folder(out, s) for s in schedule]


def _main_process_view(todo: list[int]) -> list[int]:
    """The steps still to do as the main process sees them, on every process (under a launcher the main
    process may already be writing rows while another reads the store)."""
    from rlheal.distributed import ensure_process_group, gather_json

    ensure_process_group()  # sets up the process group of a launched run
    return list(gather_json(todo)[0])


def _has_losses(store: Store, folder: Path, loss_sets: dict[tuple[str, str], Any]) -> bool:
    return all(store.has(LOSSES, checkpoint=str(folder.resolve()), task=task, split=split)
               for task, split in loss_sets)
