"""Playing episodes of a task with the revision protocol: `play`, and the protocols backends follow.

Evaluation and RL both use `play`, so "success" means the same everywhere. A backend plays in one of two ways:
- an `EpisodeBackend` (`rlheal.engine.EngineBackend`) takes the episodes' first chats and plays each episode to
  its end, handing every attempt to a `Referee` (here: the task's verifier) that answers with the next chat;
- a chat-level `Backend` only turns chats into completions; `play` then batches the unfinished episodes into
  one `generate` call per round. `HFBackend` (Hugging Face `generate`: chat template, left padding, KV cache),
  the OpenAI-compatible client, scripted backends in tests and `oracle_backend` are of this kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlheal.chat_tokens import encode_chat
from rlheal.tasks.base import Episode, Problem, Task

Messages = list[dict[str, str]]


class RolloutError(RuntimeError):
    """A model or tokenizer that cannot play the episodes as asked; the message says what to do."""


@dataclass(frozen=True)
class Decoding:
    """How completions are drawn. temperature 0 = greedy (top_p and seed then play no part).

    With temperature > 0, round r of `play` samples with seed `round_seed(seed, r)`, so the same seed, batch
    size and episodes give the same samples. `episode_offset` numbers the episodes of a `play` call from there
    in the episode engine's sampling keys: a process that plays episodes i.. of a larger batch (`offset = i`)
    draws the tokens one process playing the whole batch would. It takes no part in `as_dict` or `tag`.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    episode_offset: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"decoding temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"decoding top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"decoding max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.episode_offset < 0:
            raise ValueError(f"decoding episode_offset must be >= 0, got {self.episode_offset}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["episode_offset"]  # where a process's share starts, not how completions are drawn
        return data

    def tag(self) -> str:
        """A short readable id, e.g. `greedy-m256` or `t0.7-p0.95-m256-s3`."""
        if self.greedy:
            return f"greedy-m{self.max_new_tokens}"
        return f"t{self.temperature:g}-p{self.top_p:g}-m{self.max_new_tokens}-s{self.seed}"


@dataclass(frozen=True)
class Generation:
    """One completion: its text and the exact token ids (prompt without padding; completion up to and
    including the end-of-sequence token when one was generated)."""

    text: str
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)


class Backend(Protocol):
    """Turns a batch of chats into one completion each, in order, and says which chats still fit."""

    def generate(
        self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int, top_p: float = 1.0
    ) -> list[Generation]: ...

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        """Whether each chat plus `max_new_tokens` fits in the model's context."""
        ...


class Referee(Protocol):
    """What an episode backend reports each attempt to."""

    def judge(self, index: int, generation: Generation) -> Messages | None:
        """Record attempt `generation` of episode `index`; return the chat of its next attempt, or None when the
        episode is over."""
        ...

    def out_of_context(self, index: int) -> None:
        """Episode `index`'s next chat plus max_new_tokens does not fit the model's context: it stops there."""
        ...


@runtime_checkable
class EpisodeBackend(Protocol):
    """Plays whole episodes: attempt after attempt, each judged by the referee as soon as it ends."""

    def play_episodes(self, chats: Sequence[Messages], referee: Referee, decoding: Decoding) -> None:
        """Play episode i from its first chat `chats[i]` until `referee.judge` returns None for it or the
        backend calls `referee.out_of_context(i)`. Raises RolloutError when a first chat does not fit."""
        ...


@dataclass
class PlayedEpisode:
    """An episode (turns, verdicts) and the generation behind each of its attempts."""

    episode: Episode
    generations: list[Generation] = field(default_factory=list)
    stopped: str | None = None  # "context": the chat outgrew the model's context before the episode was done

    @property
    def done(self) -> bool:
        """No attempt follows: solved, out of attempts, or stopped (a truncation, not a terminal state)."""
        return self.episode.done or self.stopped is not None

    @property
    def rewards(self) -> list[float]:
        """The reward of each attempt (the verifier's `Verdict.reward`)."""
        return [v.reward for v in self.episode.verdicts]


def round_seed(seed: int, round_index: int) -> int:
    """The sampling seed of round `round_index` of a `play` call made with `Decoding.seed = seed`."""
    return (seed * 1_000_003 + round_index) % (2**63)


def play(
    task: Task,
    problems: Sequence[Problem],
    backend: Backend | EpisodeBackend,
    *,
    max_attempts: int | None = None,
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass, safe as a default
    on_round: Callable[[int, int], None] | None = None,
) -> list[PlayedEpisode]:
    """Play one episode per problem with the revision protocol; returns them in the order of `problems`.

    An `EpisodeBackend` plays the episodes itself (continuous batching); a chat-level `Backend` gets each
    round's unfinished episodes in one `generate` call (round r samples with seed `round_seed(decoding.seed,
    r)`). `max_attempts` defaults to the task's. A first attempt that does not fit the model's context is the
    backend's error (RolloutError: the model cannot play this task); an episode whose chat outgrows the
    context at a later attempt is stopped there (`stopped = "context"`) and counts as unsolved.
    `on_round(finished, total)` reports progress: after each round, or as episodes finish.
    """
    played = [PlayedEpisode(task.new_episode(p, max_attempts)) for p in problems]
    if isinstance(backend, EpisodeBackend):
        backend.play_episodes([pe.episode.messages() for pe in played], _TaskReferee(task, played, on_round),
                              decoding)
        return played
    round_index = 0
    while active := [pe for pe in played if not pe.done]:
        if round_index > 0:
            room = backend.fits([pe.episode.messages() for pe in active], max_new_tokens=decoding.max_new_tokens)
            for pe, fits in zip(active, room, strict=True):
                if not fits:
                    pe.stopped = "context"
            active = [pe for pe in active if pe.stopped is None]
        if active:
            _play_round(task, active, backend, decoding, round_index)
        round_index += 1
        if on_round is not None:
            on_round(sum(pe.done for pe in played), len(played))
    return played


class _TaskReferee:
    """The task's verifier as an episode backend's referee: each attempt is a `task.step` of its episode."""

    def __init__(self, task: Task, played: list[PlayedEpisode], on_round: Callable[[int, int], None] | None):
        self.task, self.played, self.on_round = task, played, on_round
        self.finished = 0

    def judge(self, index: int, generation: Generation) -> Messages | None:
        pe = self.played[index]
        self.task.step(pe.episode, generation.text)
        pe.generations.append(generation)
        if not pe.done:
            return pe.episode.messages()
        self._finish()
        return None

    def out_of_context(self, index: int) -> None:
        self.played[index].stopped = "context"
        self._finish()

    def _finish(self) -> None:
        self.finished += 1
        if self.on_round is not None:
            self.on_round(self.finished, len(self.played))


def _play_round(task: Task, active: list[PlayedEpisode], backend: Backend, decoding: Decoding, round_index: int):
    """One attempt for each active episode, generated in one backend call."""
    generations = backend.generate(
        [pe.episode.messages() for pe in active],
        max_new_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=round_seed(decoding.seed, round_index),
    )
    if len(generations) != len(active):
        raise RolloutError(f"backend {type(backend).__name__} returned {len(generations)} completions "
                           f"for {len(active)} chats")
    for pe, generation in zip(active, generations, strict=True):
        task.step(pe.episode, generation.text)
        pe.generations.append(generation)


class ScriptedBackend:
    """A backend whose completion of a chat is `script(messages)` (no token ids): for tests and sanity checks."""

    def __init__(self, script: Callable[[Messages], str]) -> None:
        self.script = script

    def generate(
        self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int, top_p: float = 1.0
    ) -> list[Generation]:
        return [Generation(self.script(messages)) for messages in batch]

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        return [True] * len(batch)


def oracle_backend(task: Task, problems: Sequence[Problem]) -> ScriptedBackend:
    """A backend that always gives the task's reference answer: every episode is solved at the first attempt.

    A sanity check of a task and the evaluation path (the success rate must be 1). Problems are recognised by
    their first user turn, so `problems` must be the ones being played.
    """
    by_prompt = {task.prompt(p): task.answer(p) for p in problems}

    def answer(messages: Messages) -> str:
        first = messages[0]["content"]
        if first not in by_prompt:
            raise RolloutError("oracle backend: a chat whose first turn is not the prompt of a known problem")
        return by_prompt[first]

    return ScriptedBackend(answer)


CACHES = ("auto", "static", "dynamic")


class HFBackend:
    """Hugging Face `generate` on batches of chats: chat template, left padding, KV cache.

    Chats are sorted by prompt length and cut into batches of `batch_size` to reduce padding; results come
    back in input order. Decoding uses exactly the given settings (the model's `generation_config`
    sampling extras such as top_k or repetition_penalty are switched off), under `torch.inference_mode`.
    Sampling seeds torch's RNG from `seed` inside a forked RNG state, so the caller's RNG is untouched.
    Raises RolloutError when the tokenizer has no chat template, or when a prompt plus `max_new_tokens`
    exceeds the model's context (`max_position_embeddings`; `play` asks `fits` first after round 0).

    `cache`: the KV cache layout. "static" preallocates it for prompt + `max_new_tokens` (no torch.cat per
    step; same tokens; on a CPU about 2× faster on a process's first call, 5-15 % on later ones,
    docs/BENCHMARKS.md), "dynamic" leaves it to transformers (a cache that grows per step, for most models),
    "auto" = static on a CPU, dynamic on an accelerator. transformers' automatic torch.compile is off.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, name: str = "the model",
                 cache: str = "auto") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}")
        if not getattr(tokenizer, "chat_template", None):
            raise RolloutError(f"the tokenizer of {name} has no chat template: use a chat/instruct model, or "
                               "set `tokenizer.chat_template` (a Jinja string) and save it with the checkpoint")
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise RolloutError(f"the tokenizer of {name} has neither a pad nor an eos token: set one of them")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.cache = cache if cache != "auto" else "static" if model.device.type == "cpu" else "dynamic"
        self.pad_id, self.eos_ids = pad_and_stop_ids(model, tokenizer)

    def encode_prompts(self, batch: Sequence[Messages]) -> list[list[int]]:
        """Token ids of each chat rendered by the chat template, ending with the assistant's opening; text in a
        message never becomes a control token (`chat_tokens.encode_chat`)."""
        return [encode_chat(self.tokenizer, m) for m in batch]

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        return [self._fit(len(ids), max_new_tokens) for ids in self.encode_prompts(batch)]

    def _fit(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        return self.context is None or prompt_tokens + max_new_tokens <= self.context

    def generate(
        self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int, top_p: float = 1.0
    ) -> list[Generation]:
        import torch

        prompts = self.encode_prompts(batch)
        longest = max((len(p) for p in prompts), default=0)
        if not self._fit(longest, max_new_tokens):
            raise RolloutError(
                f"{self.name} has a context of {self.context} tokens, but a chat of this rollout needs "
                f"{longest} prompt tokens + max_new_tokens={max_new_tokens}: lower max_new_tokens, use the "
                "compact prompt profile, or use a model with a longer context"
            )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        device = self.model.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                completions = self._generate_padded(
                    [prompts[i] for i in chunk], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
                )
                for i, completion in zip(chunk, completions, strict=True):
                    text = self.tokenizer.decode(completion, skip_special_tokens=True)
                    out[i] = Generation(text=text, prompt_ids=list(prompts[i]), completion_ids=completion)
        return out  # type: ignore[return-value] - every slot is filled above

    def _generate_padded(
        self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float
    ) -> list[list[int]]:
        """Generate for one batch of prompt ids (left padded); each completion is cut after its first eos."""
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        sampling = temperature > 0
        knobs = dict(temperature=temperature, top_p=top_p, top_k=0, typical_p=1.0, min_p=0.0) if sampling else {}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            use_cache=True,
            cache_implementation="static" if self.cache == "static" else None,
            disable_compile=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
            **knobs,
        )
        generated = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = generated[:, width:].tolist()
        return [_cut_at_eos(row, self.eos_ids) for row in new]


def pad_and_stop_ids(model: Any, tokenizer: Any) -> tuple[int, list[int]]:
    """(pad id, sorted eos ids) of a local backend: padding is the tokenizer's pad token (else its eos); an
    attempt ends at any of the model's `generation_config.eos_token_id` or the tokenizer's eos token."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    return pad_id, sorted(eos_ids)


def _cut_at_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    """`ids` up to and including the first eos token (generate pads finished rows after it)."""
    for pos, token in enumerate(ids):
        if token in eos_ids:
            return ids[: pos + 1]
    return ids
