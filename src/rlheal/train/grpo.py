"""GRPO through TRL's GRPOTrainer, with whole multi-attempt episodes as completions (the second RL algorithm).

How the episodes reach TRL 1.16 (read from its source, `trl/trainer/grpo_trainer.py`): a `rollout_func(prompts,
trainer)` replaces TRL's own generation whether or not vLLM is used. It receives this process's prompts
(already repeated `num_generations` times by TRL's sampler) and returns, per prompt, `prompt_ids`,
`completion_ids` and `logprobs` (None here: they only feed vLLM's importance-sampling correction); an
`env_mask` field marks model tokens (1) against environment tokens (0) and becomes TRL's loss mask; any other
field is passed to the reward functions.

So each completion here is one whole episode of the revision protocol, played by `rlheal.rollout.play`: the
first attempt's prompt is the prompt; the completion is attempt 1, the feedback turn, attempt 2, ... with the
feedback turns masked out of the loss. The reward of the episode (one number, as GRPO needs) is the sum of
its attempts' verifier rewards; TRL normalises it within each group of `num_generations` episodes of the same
problem. Sampled tokens are used exactly; where a tokenizer re-tokenizes an earlier attempt differently
inside the next prompt, the next prompt's tokens win and the differing sampled tokens are masked out.

One update is one rollout of `prompts_per_update` problems × `num_generations` episodes followed by
`num_iterations` optimiser steps on it (TRL's μ; with μ = 1 the ratio is 1 and the clip plays no part). Checkpoints, the
`rl_updates` rows and resumption follow `train/ppo.py` (a resumed run restarts the optimiser state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlheal.store import Store
from rlheal.train.ppo import (
    STEP_FOLDER,
    RLResult,
    RLSettings,
    check_same_settings,
    rl_checkpoints,
    update_row,
)


class GRPOConfig(RLSettings):
    """GRPO settings (passed on to TRL's GRPOConfig where a field of the same meaning exists)."""

    updates: int = Field(100, ge=1, description="rollouts, each followed by num_iterations optimiser steps")
    prompts_per_update: int = Field(8, ge=1, description="problems per update, over all processes")
    num_generations: int = Field(8, ge=2, description="episodes per problem (the GRPO group)")
    lr: float = Field(1e-5, gt=0.0, description="learning rate (constant)")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient to the start (TRL's beta; 0 = no reference)")
    epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="ratio clip")
    num_iterations: int = Field(1, ge=1, description="optimisation passes per rollout (TRL's μ)")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field("dapo", description="TRL's loss aggregation")
    temperature: float = Field(1.0, gt=0.0, description="rollout temperature (GRPO needs diverse groups)")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory on large models")
    seed: int = Field(0, ge=0, description="seed of problems, sampling and shuffling")

    @property
    def arm(self) -> str:
        """The name of this RL arm in checkpoint labels and folders."""
        return "grpo"


def episode_tokens(generations: Sequence[Any]) -> tuple[list[int], list[int], list[int]]:
    """One episode as (prompt_ids, completion_ids, env_mask) for TRL.

    `generations` are the episode's attempts in order (`rollout.Generation`, with token ids). The completion
    is attempt 1, then each later prompt's new tokens (the feedback turn, mask 0), then that attempt (mask 1).
    Where a later prompt does not start with the tokens so far, the sequence is cut to their common prefix
    and continues with that prompt's tokens (mask 0), so the context of every kept token is what the model saw.
    """
    if not generations or not all(g.prompt_ids and g.completion_ids for g in generations):
        raise ValueError("every attempt needs prompt and completion token ids (use a local backend: the engine, HFBackend)")
    prompt = list(generations[0].prompt_ids)
    seq, mask = prompt + list(generations[0].completion_ids), [1] * len(generations[0].completion_ids)
    for generation in generations[1:]:
        nxt = list(generation.prompt_ids)
        common = 0
        while common < min(len(seq), len(nxt)) and seq[common] == nxt[common]:
            common += 1
        if common < len(prompt):
            raise ValueError("a later attempt's prompt does not start with the episode's first prompt")
        del seq[common:], mask[common - len(prompt):]
        seq += nxt[common:] + list(generation.completion_ids)
        mask += [0] * (len(nxt) - common) + [1] * len(generation.completion_ids)
    return prompt, seq[len(prompt):], mask


def episode_return(completions: Sequence[Any], episode_return: Sequence[float], **kwargs: Any) -> list[float]:
    """TRL reward function: each completion's episode return, as computed by the rollout."""
    return list(episode_return)


def train_grpo(
    start: str | Path,
    out: str | Path,
    config: GRPOConfig,
    *,
    store: Store | None = None,
    task: Any = None,
    show_progress: bool = True,
    report_to: Sequence[str] = (),
    on_played: Callable[[int, Sequence[Any]], None] | None = None,
) -> RLResult:
    """Run GRPO from checkpoint `start` into `out/step-XXXXXX/` (resuming from the latest checkpoint there).

    Same contract as `train_ppo`: rows to `store` (`rl_updates`, algo "grpo"; value_loss is None, kl is None
    when beta = 0), checkpoints with an rlheal manifest whose parent is `start`. TRL reports its own logs to
    the trackers of `report_to` (`rlheal.tracking`), as tracker run `rl/<out folder name>`;
    `on_played(update, played)` receives the main process's episodes of each rollout (samples).
    """
    import torch
    from accelerate.utils import gather_object
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from rlheal.engine import model_backend
    from rlheal.models.checkpoint import Manifest, check_checkpoint, load_model, read_manifest, save_model
    from rlheal.provenance import stable_hash
    from rlheal.rollout import Decoding, play
    from rlheal.tasks.base import Task
    from rlheal.tracking import TrainerReporting
    from rlheal.train.ledger import record_update

    start, out = check_checkpoint(Path(start)).resolve(), Path(out).resolve()
    if task is None:
        task = config.task_world()
    if not isinstance(task, Task):
        raise TypeError(f"task must be a rlheal Task, got {type(task).__name__}")
    run_id, config_hash = str(out), stable_hash(config.model_dump())
    saved = rl_checkpoints(out)
    if saved:
        check_same_settings(saved[-1], config)
    done = read_manifest(saved[-1]).step if saved else 0
    if done >= config.updates:
        return RLResult(saved, [])

    torch.manual_seed(config.seed)
    model, tokenizer = load_model(saved[-1] if saved else start)
    problems = task.problems("id", config.seed, (config.updates - done) * config.prompts_per_update,
                             start=done * config.prompts_per_update)
    by_prompt = {task.prompt(p): p for p in problems}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": task.prompt(p)}]} for p in problems])
    state: dict[str, Any] = {"played": [], "calls": 0, "began": time.perf_counter()}

    def rollout(prompts: list[list[dict[str, str]]], trainer: GRPOTrainer) -> dict[str, list]:
        backend = model_backend(trainer.accelerator.unwrap_model(trainer.model), tokenizer,
                                batch_size=config.rollout_batch_size, name=str(start))
        # this process's prompts are its contiguous block of the rollout's batch (Accelerate's batch sharding):
        # keyed by their places in the whole batch, the episodes are those one process would play
        seed = config.seed * 1_000_003 + done + state["calls"]
        state["calls"] += 1
        decoding = Decoding(temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=seed,
                            episode_offset=trainer.accelerator.process_index * len(prompts))
        played = play(task, [by_prompt[p[-1]["content"]] for p in prompts], backend,
                      max_attempts=config.max_attempts, decoding=decoding)
        state["played"] = played
        if on_played is not None and trainer.accelerator.is_main_process:
            on_played(done + state["calls"], played)
        tokens = [episode_tokens(pe.generations) for pe in played]
        return {"prompt_ids": [t[0] for t in tokens], "completion_ids": [t[1] for t in tokens],
                "env_mask": [t[2] for t in tokens], "logprobs": None,
                "episode_return": [float(sum(pe.rewards)) for pe in played]}

    class RecordingTrainer(GRPOTrainer):
        """TRL's trainer, keeping the advantages of the latest rollout for the `rl_updates` row."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            state["advantages"] = output["advantages"].detach().float().cpu().tolist()
            return output

    rows: list[dict[str, Any]] = []

    class Recorder(TrainerCallback):
        def on_log(self, args, trainer_state, control, logs=None, **kwargs):
            if not logs or "entropy" not in logs:
                return
            update = done + trainer_state.global_step // config.num_iterations
            played = state["played"]
            advantages = gather_object(state.get("advantages", []))
            row = update_row(
                run_id=run_id, update=update, start=start, algo="grpo", task=task.name,
                rewards=gather_object([r for pe in played for r in pe.rewards]),
                format_ok=gather_object([v.format_ok for pe in played for v in pe.episode.verdicts]),
                n_episodes=sum(gather_object([len(played)])),
                n_solved=sum(gather_object([sum(pe.episode.solved for pe in played)])),
                advantages=advantages, kl=logs.get("kl"),
                losses={"policy_loss": logs.get("loss"), "clip_frac": logs.get("clip_ratio/region_mean")},
                entropy=logs.get("entropy"), no_signal=_no_signal(advantages),
                seconds=time.perf_counter() - state["began"])
            state["began"] = time.perf_counter()
            rows.append(row)
            if args.process_index == 0:
                record_update(store, out, row)

        def on_step_end(self, args, trainer_state, control, **kwargs):
            if trainer_state.global_step % config.num_iterations:
                return
            update = done + trainer_state.global_step // config.num_iterations
            if (update % config.save_every == 0 or update == config.updates) and args.process_index == 0:
                manifest = Manifest(stage="rl", step=update, parent=str(start), seed=config.seed,
                                    config_hash=config_hash,
                                    extra={"name": f"{read_manifest(start).label}+grpo-{update}", "algo": "grpo",
                                               "task": task.name, "config": config.model_dump()})
                unwrapped = trainer.accelerator.unwrap_model(trainer.model)
                save_model(unwrapped, tokenizer, out / STEP_FOLDER.format(update), manifest, overwrite=True)

    n_proc = _num_processes()
    per_device = config.prompts_per_update * config.num_generations
    if per_device % n_proc:
        raise ValueError(f"prompts_per_update × num_generations = {per_device} must be divisible by the "
                         f"{n_proc} processes")
    reporting = TrainerReporting(report_to, out.parent.parent, f"rl/{out.name}")
    args = TRLConfig(
        output_dir=str(out / ".trl"), max_steps=(config.updates - done) * config.num_iterations, per_device_train_batch_size=per_device // n_proc,
        gradient_accumulation_steps=1, num_generations=config.num_generations, num_iterations=config.num_iterations,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, beta=config.beta,
        epsilon=config.epsilon, loss_type=config.loss_type, temperature=config.temperature,
        max_completion_length=config.max_new_tokens * (config.max_attempts or task.default_max_attempts),
        max_grad_norm=config.max_grad_norm, gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.num_iterations, save_strategy="no", seed=config.seed, data_seed=config.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), disable_tqdm=not show_progress,
        **reporting.arguments,
    )
    with reporting:
        trainer = RecordingTrainer(model=model, reward_funcs=episode_return, args=args, train_dataset=dataset,
                                   processing_class=tokenizer, rollout_func=rollout, callbacks=[Recorder()])
    trainer.train()
    return RLResult(rl_checkpoints(out), rows)


def _no_signal(advantages: Sequence[float]) -> bool:
    """No episode's advantage differs from zero: every group's episodes got the same return."""
    return all(abs(a) < 1e-6 for a in advantages)


def _num_processes() -> int:
    from rlheal.distributed import ensure_process_group

    return ensure_process_group()[1]
