"""Turn-level PPO as in the paper (its §3), in one readable module in the spirit of CleanRL.

One update:
1. Rollout: play `episodes_per_update` ID episodes with the revision protocol (`rlheal.rollout.play`) at the
   rollout temperature. Each attempt is one step; its reward is the verifier's.
2. Score the steps with the policy before the update, one forward pass per episode over its final chat (each
   attempt's prompt and completion are a prefix of it; `attempt_rows`): the action log-probability is the sum
   over the attempt's generated tokens of log softmax(logits / temperature), in float32; the value is the value
   head on the hidden state of the attempt prompt's last token (the whole chat up to that attempt); with
   `track_kl`, the same log-probabilities under the frozen starting model give the KL to the start (k3).
3. Rewards minus `kl_coef` × KL to the start (with `kl_target`, the coefficient adapts after every update
   toward that KL, `rl_math.adaptive_kl_coef`); in the control arm (`control`) the rewards are shuffled
   across the batch first. Turn-level GAE (γ, λ) inside each episode (`rl_math.turn_gae`: bootstrap 0 after
   the last attempt, nothing crosses an episode boundary); advantages normalised over the batch.
4. `epochs` passes of shuffled minibatches of whole episodes (about `minibatch_size` steps each, one forward
   pass per episode): clipped surrogate + `value_coef` × clipped value loss, each a mean over the minibatch's
   steps (- `entropy_coef` × entropy), gradient clipping, one optimiser step per minibatch. The value head has its
   own learning rate (`value_lr`); for the first `value_warmup` updates only the value loss is optimised and
   the backbone does not move.
5. Every update's row records the critic's explained variance (before the update), the clip fraction and
   the KL; once the KL to the start exceeds `kl_stop`, the run saves and stops.

A batch where every attempt got the same reward (e.g. a checkpoint whose answers never parse) carries no
learning signal: the update is recorded with `no_signal = True` and no optimiser step is taken.

Built on Accelerate: under `accelerate launch -m rlheal ...` each process plays its contiguous share of each
update's episodes (sampling keyed by the episode's place in the whole batch, so the episodes are those of one
process); rewards, advantage statistics and minibatches are taken over the whole batch (`GlobalBatch`), and
each process weighs its steps' share of every minibatch mean so that the DDP-averaged gradient is the one
process's gradient: N processes train as one process on the same `episodes_per_update` would, up to
floating-point summation order. Only the main process writes. A single CPU process needs no configuration. Checkpoints are plain HF
folders (`step-000010/`) with an rlheal manifest (stage "rl", parent = the starting checkpoint) and
`value_head.safetensors`; training resumes from the latest one (with a fresh optimiser state) when it was
trained with the same settings (only `updates` and `save_every` may change), and refuses otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from rlheal.store import Store, Table

RL_UPDATES = Table(
    name="rl_updates",
    columns={
        "run_id": "path",  # the RL output folder (resolved)
        "update": "int",
        "start": "path",  # the starting (SFT) checkpoint folder (resolved)
        "algo": "str",
        "task": "str",
        "mean_reward": "float",  # mean verifier reward per attempt
        "success_rate": "float",  # share of episodes solved
        "format_rate": "float",  # share of attempts whose answer parsed
        "kl": "float",  # mean KL(π‖π_start) per attempt (nats, summed over tokens); None when not tracked
        "value_loss": "float",
        "policy_loss": "float",
        "clip_frac": "float",
        "explained_variance": "float",  # 1 − Var(returns − values) / Var(returns) of the rollout, before the update;
        # None when the update had no learning signal (every reward equal: only the KL penalty tells returns apart)
        "kl_coef": "float",  # the KL penalty coefficient this update used
        "entropy": "float",  # mean per-token entropy of the sampled completions
        "adv_mean": "float",  # moments and histogram of the raw (un-normalised) advantages
        "adv_std": "float",
        "adv_skew": "float",
        "adv_hist": "json",  # {"edges": [...], "counts": [...]}
        "n_episodes": "int",
        "n_steps": "int",
        "no_signal": "bool",  # every attempt got the same reward: nothing to learn from
        "seconds": "float",
    },
    key=("run_id", "update"),
)

STEP_FOLDER = "step-{:06d}"


class RLSettings(BaseModel):
    """Settings every RL algorithm here shares: what it trains on, how it plays episodes, when it saves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field("gp24", description="task trained on (its ID split)")
    profile: Literal["compact", "paper"] = Field("compact", description="prompt profile of the task")
    max_attempts: int | None = Field(None, ge=1, description="attempts per episode; None = the task's default")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradient clipping norm")
    max_new_tokens: int = Field(64, ge=1, description="longest attempt, in tokens")
    rollout_batch_size: int = Field(16, ge=1, description="chats per generate call")
    save_every: int = Field(10, ge=1, description="save a checkpoint every this many updates (and the last)")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the task for the RL problems only, e.g. gp24's {id_max_rank: "
        "9}: ID hands without a card worth 10; evaluation uses the task's defaults")

    @model_validator(mode="after")
    def _task_options_are_known(self) -> RLSettings:
        if self.task_options:  # the task name itself is checked when training starts (a Task object may replace it)
            self.task_world()
        return self

    def task_world(self) -> Any:
        """The Task RL draws its problems from: `task` in `profile`, with `task_options`."""
        from rlheal.tasks import get_task

        return get_task(self.task, self.profile, **self.task_options)

    @model_serializer(mode="wrap")
    def _omit_empty_task_options(self, handler: Any) -> dict[str, Any]:
        """Dumps leave `task_options` out while empty, so configs without it keep their hashes and fingerprints."""
        data = handler(self)
        if not self.task_options:
            data.pop("task_options", None)
        return data


class PPOConfig(RLSettings):
    """Turn-level PPO settings; defaults follow the paper except the learning rate (sized for small models)."""

    updates: int = Field(100, ge=1, description="PPO updates (rollout + optimisation) to run")
    episodes_per_update: int = Field(64, ge=1, description="episodes played per update, over all processes")
    gamma: float = Field(0.9, ge=0.0, le=1.0, description="discount between attempts")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE λ")
    clip: float = Field(0.1, gt=0.0, lt=1.0, description="PPO ratio clip ε")
    value_clip: float | None = Field(1.0, gt=0.0, description="value clip, in reward units; None = unclipped")
    epochs: int = Field(4, ge=1, description="passes over each rollout")
    minibatch_size: int = Field(16, ge=1, description="steps (attempts) per minibatch, over all processes; "
                                "minibatches hold whole episodes, about this many steps each")
    lr: float = Field(1e-5, gt=0.0, description="AdamW learning rate of the model (paper: 1e-6 for 7-11B models)")
    value_lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the value head")
    value_warmup: int = Field(5, ge=0, description="first updates that train the value head alone (the model "
                              "does not move), so the critic is fitted before the policy follows it")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    value_coef: float = Field(0.5, ge=0.0, description="weight of the value loss")
    kl_coef: float = Field(0.0, ge=0.0, description="KL penalty to the starting model, subtracted from rewards "
                           "(the starting coefficient when kl_target is set)")
    kl_target: float | None = Field(None, gt=0.0, description="adapt kl_coef after every update toward this "
                                    "mean KL to the start per attempt (nats); None keeps kl_coef fixed")
    kl_horizon: int = Field(10_000, ge=1, description="steps over which the adaptive KL coefficient adapts")
    kl_stop: float | None = Field(None, gt=0.0, description="save and stop once the mean KL to the start per "
                                  "attempt exceeds this (nats); None never stops early")
    control: bool = Field(False, description="the control arm: rewards shuffled across each batch, so training "
                          "sees the same rewards no longer tied to the answers")
    entropy_coef: float = Field(0.0, ge=0.0, description="entropy bonus")
    track_kl: bool = Field(True, description="keep a frozen copy of the start to log KL (needed if kl_coef > 0)")
    temperature: float = Field(0.2, gt=0.0, description="rollout sampling temperature (also scales logits)")
    seed: int = Field(0, ge=0, description="training seed: problems, sampling, shuffling, value head init")

    def model_post_init(self, _context: Any) -> None:
        if (self.kl_coef > 0 or self.kl_target or self.kl_stop) and not self.track_kl:
            raise ValueError("kl_coef, kl_target and kl_stop need track_kl = True (they use the frozen starting model)")
        if self.kl_target and self.kl_coef == 0:
            raise ValueError("kl_target adapts kl_coef, which must start above 0 (e.g. kl_coef: 0.05)")

    @property
    def arm(self) -> str:
        """The name of this RL arm in checkpoint labels and folders: `ppo`, or `ppo-control`."""
        return "ppo-control" if self.control else "ppo"


# --------------------------------------------------------------------------------------------------------------
# Steps: the flat view of a batch of played episodes
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Steps:
    """Attempts of whole episodes, in order, and the token rows that score them in one pass each.

    Step t is the completion of `completion_lens[t]` tokens at `prompt_lens[t]` in row `rows[row[t]]` (its
    prompt is all that precedes it there); `episode[t]` numbers its episode; `dones[t]` marks each episode's
    last attempt. An episode normally has one row, its final chat, holding every attempt."""

    rows: list[list[int]]
    row: list[int]
    prompt_lens: list[int]
    completion_lens: list[int]
    episode: list[int]
    rewards: list[float]
    dones: list[bool]
    format_ok: list[bool]
    n_episodes: int
    n_solved: int

    def __len__(self) -> int:
        return len(self.rewards)

    def of_episodes(self, episodes: Sequence[int]) -> list[int]:
        """The steps of `episodes`, in step order."""
        chosen = set(episodes)
        return [t for t, e in enumerate(self.episode) if e in chosen]


def attempt_rows(generations: Sequence[Any]) -> tuple[list[list[int]], list[int]]:
    """The rows that hold an episode's attempts and the row of each attempt: attempt k + 1 extends attempt k's
    row when that row (attempt k's prompt and completion) begins its prompt, as the engine's chats do; where a
    re-tokenised chat does not begin with it, a new row starts, so every attempt is scored in the context the
    model saw when it sampled."""
    rows: list[list[int]] = []
    row_of: list[int] = []
    for generation in generations:
        prompt, chat = list(generation.prompt_ids), list(generation.prompt_ids) + list(generation.completion_ids)
        if rows and prompt[: len(rows[-1])] == rows[-1]:
            rows[-1] = chat
        else:
            rows.append(chat)
        row_of.append(len(rows) - 1)
    return rows, row_of


def flatten_episodes(played: Sequence[Any]) -> Steps:
    """The steps of `PlayedEpisode`s; raises ValueError when a generation carries no token ids."""
    steps = Steps([], [], [], [], [], [], [], [], n_episodes=len(played), n_solved=0)
    for e, pe in enumerate(played):
        verdicts = pe.episode.verdicts
        for t, generation in enumerate(pe.generations):
            if not generation.prompt_ids or not generation.completion_ids:
                raise ValueError(f"episode {pe.episode.problem.key}, attempt {t + 1}: the backend returned no token "
                                 "ids; PPO needs a local backend that reports them (the engine, HFBackend)")
        rows, row_of = attempt_rows(pe.generations)
        first = len(steps.rows)
        steps.rows += rows
        for t, (generation, verdict) in enumerate(zip(pe.generations, verdicts, strict=True)):
            steps.row.append(first + row_of[t])
            steps.prompt_lens.append(len(generation.prompt_ids))
            steps.completion_lens.append(len(generation.completion_ids))
            steps.episode.append(e)
            steps.rewards.append(float(verdict.reward))
            steps.dones.append(t == len(verdicts) - 1)
            steps.format_ok.append(bool(verdict.format_ok))
        steps.n_solved += int(pe.episode.solved)
    return steps


def episode_chunks(steps: Steps, max_steps: int) -> list[list[int]]:
    """Consecutive episodes grouped so that each group has at most `max_steps` steps (an episode with more goes
    alone): the scoring passes before an update."""
    groups: list[list[int]] = []
    count = 0
    for e in range(steps.n_episodes):
        size = steps.episode.count(e)
        if groups and count + size <= max_steps:
            groups[-1].append(e)
            count += size
        else:
            groups.append([e])
            count = size
    return groups


@dataclass
class GlobalBatch:
    """What every process knows of an update's whole batch (all processes' steps, in rank order): the step
    count and completion tokens of each episode and every reward, and where this process's episodes and steps
    lie in it. Minibatches are drawn over the whole batch, so several processes take the optimiser steps one
    process would on the same batch."""

    episode_steps: list[int]
    episode_tokens: list[int]
    rewards: list[float]
    first_episode: int
    first_step: int
    n_local_episodes: int

    @classmethod
    def gather(cls, steps: Steps, first_episode: int, rank: int) -> GlobalBatch:
        """Gather `steps` (this process's, its episodes numbered from `first_episode` in the batch) from all
        processes; call it on every process."""
        from accelerate.utils import gather_object

        sizes = [steps.episode.count(e) for e in range(steps.n_episodes)]
        tokens = [sum(n for n, e in zip(steps.completion_lens, steps.episode, strict=True) if e == i)
                  for i in range(steps.n_episodes)]
        parts = gather_object([(sizes, tokens, steps.rewards)])
        first_step = sum(len(p[2]) for p in parts[:rank])
        return cls([n for p in parts for n in p[0]], [n for p in parts for n in p[1]],
                   [r for p in parts for r in p[2]], first_episode, first_step, steps.n_episodes)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_steps)

    @property
    def n_steps(self) -> int:
        return len(self.rewards)

    def mine(self, values: Any) -> Any:
        """This process's part of a per-step sequence over the whole batch."""
        return values[self.first_step:self.first_step + sum(self.episode_steps[self.first_episode:
                                                                                  self.first_episode + self.n_local_episodes])]

    def minibatch(self, episodes: Sequence[int]) -> tuple[list[int], int, int]:
        """(this process's episodes among `episodes`, numbered locally; the steps and the completion tokens of
        all of `episodes`)."""
        local = [e - self.first_episode for e in episodes
                 if self.first_episode <= e < self.first_episode + self.n_local_episodes]
        return (local, sum(self.episode_steps[e] for e in episodes), sum(self.episode_tokens[e] for e in episodes))


# --------------------------------------------------------------------------------------------------------------
# The policy and its critic on one backbone
# --------------------------------------------------------------------------------------------------------------
def _actor_critic_class():
    from torch import nn

    class ActorCritic(nn.Module):
        """A causal LM and a value head on its last hidden layer: one module, so DDP wraps both."""

        def __init__(self, model: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.head = head

        def forward(self, input_ids, attention_mask, value_rows, value_positions):
            """The logits of every position, and the values at (row, position) pairs."""
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return out.logits, self.head(out.hidden_states[-1][value_rows, value_positions])

    return ActorCritic


def score_steps(module, steps: Steps, chosen: Sequence[int], pad_id: int, temperature: float, device: Any):
    """Per chosen step: (sequence log-prob, value, token log-probs, token entropies, token mask) under `module`
    (an ActorCritic, or a bare causal LM for the reference, whose values are then None), from one forward pass
    over the rows that hold the chosen steps: log-probs at each step's completion positions, its value on the
    hidden state of its prompt's last token."""
    import torch

    from rlheal.train.rl_math import gather_completion

    needed = list(dict.fromkeys(steps.row[t] for t in chosen))
    local = {r: i for i, r in enumerate(needed)}
    rows = [steps.rows[r] for r in needed]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    as_tensor = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    step_rows = as_tensor([local[steps.row[t]] for t in chosen])
    prompt_lens = as_tensor([steps.prompt_lens[t] for t in chosen])
    completion_lens = as_tensor([steps.completion_lens[t] for t in chosen])
    if hasattr(module, "head") or hasattr(getattr(module, "module", None), "head"):
        logits, values = module(input_ids, attention_mask, step_rows, prompt_lens - 1)
    else:
        logits, values = module(input_ids=input_ids, attention_mask=attention_mask).logits, None
    token_logps, entropy, mask = gather_completion(logits, input_ids, prompt_lens, completion_lens, rows=step_rows,
                                                   temperature=temperature)
    return token_logps.sum(-1), values, token_logps, entropy, mask


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
def rl_checkpoints(out: Path) -> list[Path]:
    """The whole RL checkpoints in `out` (manifest present), by step."""
    from rlheal.models.checkpoint import MANIFEST, read_manifest

    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MANIFEST).exists()]
    return sorted(found, key=lambda p: read_manifest(p).step)


def latest_resumable(out: Path) -> Path | None:
    """The latest RL checkpoint in `out` that also holds its value head, or None."""
    from rlheal.train.value_head import VALUE_HEAD_FILE

    resumable = [p for p in rl_checkpoints(out) if (p / VALUE_HEAD_FILE).exists()]
    return resumable[-1] if resumable else None


RESUMABLE_CHANGES: tuple[str, ...] = ("updates", "save_every")  # settings a resumed run may change


class ResumeError(ValueError):
    """An RL output folder holds checkpoints trained with other settings than the ones asked for."""


def check_same_settings(checkpoint: Path, config: BaseModel) -> None:
    """Raise ResumeError, naming each differing setting, when RL checkpoint `checkpoint` was trained with
    settings other than `config` (the run length and the checkpoint spacing aside)."""
    from rlheal.models.checkpoint import read_manifest

    saved = read_manifest(checkpoint).extra.get("config") or {}
    now = json.loads(json.dumps(config.model_dump(), default=str))
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if differ:
        changes = "; ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ResumeError(f"{checkpoint.parent} holds RL checkpoints trained with other settings ({changes}); "
                          "run with the same settings to resume it, or give another output folder (--out)")


@dataclass
class RLResult:
    """What an RL run left: its checkpoints (by step) and its `rl_updates` rows (this call's updates)."""

    checkpoints: list[Path]
    rows: list[dict[str, Any]]

    @property
    def no_signal(self) -> bool:
        """True when no update of this call had a learning signal."""
        return bool(self.rows) and all(r["no_signal"] for r in self.rows)


def update_row(*, run_id: str, update: int, start: Path, algo: str, task: str, rewards: Sequence[float],
               format_ok: Sequence[bool], n_episodes: int, n_solved: int, advantages: Sequence[float],
               kl: float | None, losses: dict[str, float | None], entropy: float | None, no_signal: bool,
               seconds: float, explained_variance: float | None = None, kl_coef: float | None = None) -> dict[str, Any]:
    """One `rl_updates` row from the gathered numbers of an update (shared by PPO and GRPO)."""
    from rlheal.train.rl_math import advantage_stats

    stats = advantage_stats(list(advantages))
    nan_to_none = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else x  # noqa: E731
    return {
        "run_id": run_id, "update": update, "start": str(start), "algo": algo, "task": task,
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "success_rate": n_solved / n_episodes if n_episodes else None,
        "format_rate": sum(format_ok) / len(format_ok) if format_ok else None,
        "kl": nan_to_none(kl), "value_loss": nan_to_none(losses.get("value_loss")),
        "policy_loss": nan_to_none(losses.get("policy_loss")), "clip_frac": nan_to_none(losses.get("clip_frac")),
        "explained_variance": nan_to_none(explained_variance), "kl_coef": kl_coef, "entropy": nan_to_none(entropy),
        "adv_mean": nan_to_none(stats["mean"]), "adv_std": nan_to_none(stats["std"]),
        "adv_skew": nan_to_none(stats["skew"]), "adv_hist": stats["hist"],
        "n_episodes": n_episodes, "n_steps": len(rewards), "no_signal": no_signal, "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def train_ppo(
    start: str | Path,
    out: str | Path,
    config: PPOConfig,
    *,
    store: Store | None = None,
    task: Any = None,
    show_progress: bool = True,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    on_played: Callable[[int, Sequence[Any]], None] | None = None,
) -> RLResult:
    """Run PPO from checkpoint `start` into `out/step-XXXXXX/`, resuming from the latest checkpoint there.

    `task` overrides `config.task` with a Task object (tests, custom worlds). Each update's row goes to
    `store` (table `rl_updates`, run_id = resolved `out`) and to `on_update`; `on_played(update, played)`
    receives the main process's played episodes of each update (samples). Returns the checkpoints in `out`
    and this call's rows; a run whose last update is already saved returns at once.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from rich.console import Console

    from rlheal.distributed import ensure_process_group, shard
    from rlheal.engine import model_backend
    from rlheal.models.checkpoint import Manifest, check_checkpoint, load_model, read_manifest, save_model
    from rlheal.progress import bar
    from rlheal.provenance import stable_hash
    from rlheal.rollout import Decoding, play
    from rlheal.tasks.base import Task
    from rlheal.train.ledger import record_update
    from rlheal.train.rl_math import (
        adaptive_kl_coef,
        clipped_surrogate,
        clipped_value_loss,
        explained_variance,
        kl_to_reference,
        minibatch_indices,
        normalize_advantages,
        shuffled,
        turn_gae,
    )
    from rlheal.train.value_head import ValueHead, load_value_head, save_value_head

    start, out = check_checkpoint(Path(start)).resolve(), Path(out).resolve()
    if task is None:
        task = config.task_world()
    if not isinstance(task, Task):
        raise TypeError(f"task must be a rlheal Task, got {type(task).__name__}")
    run_id, config_hash = str(out), stable_hash(config.model_dump())

    resume = latest_resumable(out)
    if resume is not None:
        check_same_settings(resume, config)
    first_update = 1 if resume is None else _step_of(resume) + 1
    if first_update > config.updates or (resume is not None and read_manifest(resume).extra.get("kl_stopped")):
        return RLResult(rl_checkpoints(out), [])
    kl_coef = config.kl_coef if resume is None else float(read_manifest(resume).extra.get("kl_coef", config.kl_coef))

    ensure_process_group()  # a launched run's group, left cleanly at exit
    accelerator = Accelerator()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(resume or start)
    hidden = model.config.get_text_config().hidden_size
    head = load_value_head(resume, hidden) if resume else ValueHead(hidden)
    reference = None
    if config.track_kl:
        reference = load_model(start)[0].to(accelerator.device).requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    actor_critic = _actor_critic_class()(model, head)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": config.lr},
                                   {"params": list(head.parameters()), "lr": config.value_lr}],
                                  weight_decay=config.weight_decay)
    actor_critic, optimizer = accelerator.prepare(actor_critic, optimizer)
    policy = accelerator.unwrap_model(actor_critic)
    backend = model_backend(policy.model, tokenizer, batch_size=config.rollout_batch_size, name=str(resume or start))
    device, n_proc, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    if config.episodes_per_update < n_proc:
        raise ValueError(f"episodes_per_update ({config.episodes_per_update}) must be at least the number of "
                         f"processes ({n_proc}): every process plays a share of each update's episodes")
    mine = shard(range(config.episodes_per_update), rank, n_proc)  # this process's episodes of each update
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []

    show = show_progress and accelerator.is_main_process
    with bar(f"PPO {start.name}", total=config.updates, completed=first_update - 1, enabled=show) as progress:
        for update in range(first_update, config.updates + 1):
            began = time.perf_counter()
            # 1. rollout --------------------------------------------------------------------------------------
            actor_critic.eval()
            problems = task.problems("id", config.seed, len(mine),
                                     start=(update - 1) * config.episodes_per_update + mine[0])
            decoding = Decoding(temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                                seed=config.seed * 1_000_003 + update, episode_offset=mine[0])
            played = play(task, problems, backend, max_attempts=config.max_attempts, decoding=decoding)
            if on_played is not None and accelerator.is_main_process:
                on_played(update, played)
            steps = flatten_episodes(played)
            batch = GlobalBatch.gather(steps, mine[0], rank)

            # 2. score with the policy before the update (and the frozen start): one pass per episode's chat -----
            old_logp, old_values, kl_seq, entropy_sum, n_tokens = [], [], [], 0.0, 0
            with torch.no_grad():
                for episodes in episode_chunks(steps, config.minibatch_size):
                    chosen = steps.of_episodes(episodes)
                    logp, values, token_logps, entropy, mask = score_steps(
                        actor_critic, steps, chosen, pad_id, config.temperature, device)
                    old_logp.append(logp)
                    old_values.append(values)
                    entropy_sum += float(entropy.sum())
                    n_tokens += int(mask.sum())
                    if reference is not None:
                        ref_token_logps = score_steps(reference, steps, chosen, pad_id, config.temperature, device)[2]
                        kl_seq.append(kl_to_reference(token_logps, ref_token_logps, mask))
            old_logp, old_values = torch.cat(old_logp), torch.cat(old_values)
            kl_seq = torch.cat(kl_seq) if kl_seq else None

            # 3. rewards (shuffled in the control arm) − KL penalty → turn-level GAE → normalised advantages --
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + update * 97)  # the same on all ranks
            all_rewards = batch.rewards
            rewards = torch.tensor(steps.rewards, dtype=torch.float32, device=device)
            if config.control:  # shuffled across the whole batch, then each process takes its steps back
                rewards = batch.mine(shuffled(torch.tensor(all_rewards, dtype=torch.float32), generator)).to(device)
            if kl_coef > 0:
                rewards = rewards - kl_coef * kl_seq
            dones = torch.tensor(steps.dones, dtype=torch.bool, device=device)
            advantages, returns = turn_gae(rewards, old_values, dones, config.gamma, config.lam)
            all_values, all_returns = gather_object(old_values.tolist()), gather_object(returns.tolist())
            all_advantages = gather_object(advantages.tolist())
            no_signal = len(set(all_rewards)) < 2
            normed, has_spread = normalize_advantages(advantages, torch.tensor(all_advantages, device=device))
            no_signal = no_signal or not has_spread

            # 4. epochs of clipped PPO on shuffled minibatches of whole episodes -------------------------------
            losses: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_frac": []}  # my shares
            warming_up = update <= config.value_warmup  # the critic alone: the model's learning rate is 0
            optimizer.param_groups[0]["lr"] = 0.0 if warming_up else config.lr
            if not no_signal:
                actor_critic.train()
                n_minibatches = min(batch.n_episodes, math.ceil(batch.n_steps / config.minibatch_size))
                for _ in range(config.epochs):
                    for episodes in minibatch_indices(batch.n_episodes, n_minibatches, generator):
                        local, n_steps, n_tokens_mb = batch.minibatch(episodes.tolist())
                        # my steps' share of the minibatch means, times the processes (DDP averages gradients):
                        # the all-reduced gradient is that of one process on the whole minibatch
                        chosen = steps.of_episodes(local or [0])  # no episode here: a zero-weight pass
                        weight = len(steps.of_episodes(local)) / n_steps
                        logp, values, _, entropy, mask = score_steps(
                            actor_critic, steps, chosen, pad_id, config.temperature, device)
                        idx = torch.tensor(chosen, device=device)
                        policy_loss, clip_frac = clipped_surrogate(logp, old_logp[idx], normed[idx], config.clip)
                        value_loss = clipped_value_loss(values, old_values[idx], returns[idx], config.value_clip)
                        entropy_share = entropy.sum() / n_tokens_mb if local else entropy.sum() * 0
                        loss = config.value_coef * value_loss * weight
                        if not warming_up:
                            loss = loss + policy_loss * weight - config.entropy_coef * entropy_share
                        optimizer.zero_grad(set_to_none=True)
                        accelerator.backward(loss * n_proc)
                        accelerator.clip_grad_norm_(actor_critic.parameters(), config.max_grad_norm)
                        optimizer.step()
                        losses["policy_loss"].append(policy_loss.item() * weight)
                        losses["value_loss"].append(value_loss.item() * weight)
                        losses["clip_frac"].append(clip_frac.item() * weight)

            # 5. record and save --------------------------------------------------------------------------------
            mean_loss = {k: _mean([sum(shares) for shares in zip(*gather_object([v]), strict=True)])
                         for k, v in losses.items()}
            token_stats = gather_object([(entropy_sum, n_tokens)])
            kl_values = gather_object(kl_seq.tolist()) if kl_seq is not None else []
            mean_kl = _mean(kl_values) if kl_values else None
            row = update_row(
                run_id=run_id, update=update, start=start, algo=config.arm, task=task.name, rewards=all_rewards,
                format_ok=gather_object(steps.format_ok), n_episodes=sum(gather_object([steps.n_episodes])),
                n_solved=sum(gather_object([steps.n_solved])), advantages=all_advantages,
                kl=mean_kl, losses=mean_loss,
                entropy=sum(e for e, _ in token_stats) / max(1, sum(n for _, n in token_stats)),
                no_signal=no_signal, seconds=time.perf_counter() - began, kl_coef=kl_coef,
                explained_variance=None if no_signal else explained_variance(torch.tensor(all_values),
                                                                             torch.tensor(all_returns)))
            rows.append(row)
            stop = config.kl_stop is not None and mean_kl is not None and mean_kl > config.kl_stop
            if config.kl_target is not None and mean_kl is not None:
                kl_coef = adaptive_kl_coef(kl_coef, mean_kl, config.kl_target, config.kl_horizon, len(all_rewards))
            if accelerator.is_main_process:
                record_update(store, out, row)
                if on_update is not None:
                    on_update(row)
                if update % config.save_every == 0 or update == config.updates or stop:
                    folder = out / STEP_FOLDER.format(update)
                    manifest = Manifest(stage="rl", step=update, parent=str(start), seed=config.seed,
                                        config_hash=config_hash,
                                        extra={"name": f"{read_manifest(start).label}+{config.arm}-{update}",
                                               "algo": "ppo", "task": task.name, "config": config.model_dump(),
                                               "kl_coef": kl_coef, "kl_stopped": stop})
                    save_model(policy.model, tokenizer, folder, manifest, overwrite=True)
                    save_value_head(policy.head, folder)
            accelerator.wait_for_everyone()
            signal_note = "no learning signal" if no_signal else f"clip {row['clip_frac'] or 0:.2f}"
            progress.advance(1, description=(
                f"PPO {start.name} u{update} reward {row['mean_reward']:.2f} "
                f"solved {row['success_rate']:.0%} {signal_note}"))
            if stop:
                console.print(f"PPO from {start.name}: the KL to the start reached {mean_kl:.2f} nats per attempt "
                              f"(kl_stop {config.kl_stop}) at update {update}; saved and stopped")
                break

    result = RLResult(rl_checkpoints(out), rows)
    if result.no_signal and accelerator.is_main_process:
        console.print(f"[yellow]PPO from {start}: no learning signal in any update: every attempt got the same "
                      f"reward. {no_signal_advice(rows[-1])}[/yellow]")
    return result


def no_signal_advice(row: dict[str, Any]) -> str:
    """What to change when RL had no learning signal, from the last update's row."""
    if row["success_rate"] == 1.0:
        return ("Every episode was solved at the first attempt: nothing to learn. Start from a checkpoint that still fails "
                "some problems, sample at a higher temperature, or train on harder problems (task_options).")
    return (f"The answers parse in {row['format_rate']:.0%} of attempts and none is rewarded differently: "
            "train SFT longer or check the prompt profile.")


def _step_of(folder: Path) -> int:
    from rlheal.models.checkpoint import read_manifest

    return read_manifest(folder).step


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
