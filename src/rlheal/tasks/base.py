"""The contract every task world follows: problems as data, verdicts, episodes with revision turns.

Pure Python (no torch). A problem is a pure function of (task, split, pool, seed, index); it is drawn from its
pool (`train` or `eval`, `rlheal.tasks.holdout`), so no evaluation problem is ever a training problem. A
verdict is what the verifier says of one answer text; an episode is the list of turns and verdicts of the
revision protocol, shared by the rollout engine, evaluation and RL.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlheal.tasks.holdout import TRAIN, check_pool, pool_of

SPLITS: tuple[str, ...] = ("id", "ood")
PROFILES: tuple[str, ...] = ("compact", "paper")

# Verdict kinds, from best to worst. The reward of each is task-specific (the paper's §2 for gp24).
CORRECT = "correct"
WRONG_VALUE = "wrong_value"  # well-formed answer, right inputs, wrong result
WRONG_NUMBERS = "wrong_numbers"  # gp24: the formula does not use exactly the hand's numbers
ILLEGAL = "illegal"  # parsed the answer container but the content is not a legal formula / integer
UNPARSEABLE = "unparseable"  # no answer in the profile's format was found
VERDICT_KINDS: tuple[str, ...] = (CORRECT, WRONG_VALUE, WRONG_NUMBERS, ILLEGAL, UNPARSEABLE)
MAX_DRAWS = 10_000  # draws per problem before giving up (unsolvable hands and the other pool are redrawn)


def check_names(kind: str, names: list[str], valid: tuple[str, ...]) -> list[str]:
    """Return `names` if each is in `valid`, else raise ValueError naming the unknown ones and the valid ones."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; valid: {', '.join(valid)}")
    return names


def check_split(split: str) -> str:
    """Return `split` if it is a known split, else raise ValueError listing the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def problem_rng(task: str, split: str, seed: int, index: int) -> random.Random:
    """The random stream of one problem, derived from (task, split, seed, index) by SHA-256.

    Stable across processes and Python versions (never the salted built-in `hash`).
    """
    digest = hashlib.sha256(f"{task}/{split}/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class Problem:
    """One problem instance. `data` is JSON-serialisable and task-specific; `pool` is `train` or `eval`."""

    task: str
    split: str
    seed: int
    index: int
    data: dict[str, Any]
    pool: str = TRAIN

    @property
    def key(self) -> str:
        return f"{self.task}/{self.split}/{self.pool}/{self.seed}/{self.index}"


@dataclass(frozen=True)
class Verdict:
    """The verifier's word on one answer text.

    `format_ok` is False when the text held no answer in the profile's format (a format error);
    `feedback` is one line, usable as the revision turn ("You failed this trial because ...").
    """

    correct: bool
    reward: float
    kind: str
    feedback: str
    format_ok: bool

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"unknown verdict kind {self.kind!r}; valid: {', '.join(VERDICT_KINDS)}")


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass
class Episode:
    """The revision protocol as data: prompt, then (answer, verdict, feedback) until solved or out of attempts."""

    problem: Problem
    max_attempts: int
    turns: list[Turn] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def n_attempts(self) -> int:
        return len(self.verdicts)

    @property
    def solved(self) -> bool:
        return any(v.correct for v in self.verdicts)

    @property
    def done(self) -> bool:
        return self.solved or self.n_attempts >= self.max_attempts

    def messages(self) -> list[dict[str, str]]:
        """Chat messages for the next generation (ends with a user turn while not done)."""
        return [{"role": t.role, "content": t.content} for t in self.turns]


class Task(ABC):
    """A verifiable task world with an ID and an OOD split, read and shown through one prompt profile."""

    name: ClassVar[str]
    default_max_attempts: ClassVar[int]
    summary: ClassVar[str] = ""  # one line for `rlheal tasks list`: what is asked, and what ID and OOD differ in

    def __init__(self, profile: str = "compact") -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown prompt profile {profile!r}; valid: {', '.join(PROFILES)}")
        self.profile = profile

    # --- problems -------------------------------------------------------------------------------
    @abstractmethod
    def draw(self, rng: random.Random, split: str) -> dict[str, Any] | None:
        """One candidate problem's data for `split` from `rng`, or None when the draw is to be redrawn."""

    @abstractmethod
    def holdout_key(self, data: dict[str, Any]) -> str:
        """What makes the problem with this data that problem (`rlheal.tasks.holdout`): equal keys, one pool."""

    def problem(self, split: str, seed: int, index: int, pool: str = TRAIN) -> Problem:
        """The problem at (split, pool, seed, index): a pure function of its arguments. Draws from the stream of
        (task, split, seed, index) until a candidate lies in `pool`. Training code uses the default pool."""
        rng = problem_rng(self.name, check_split(split), seed, index)
        check_pool(pool)
        for _ in range(MAX_DRAWS):
            data = self.draw(rng, split)
            if data is not None and pool_of(self.holdout_key(data)) == pool:
                return Problem(self.name, split, seed, index, data, pool)
        raise ValueError(f"no {split} problem of {self.name} in the {pool} pool in {MAX_DRAWS} draws "
                         f"({self.no_problem_hint()})")

    def no_problem_hint(self) -> str:
        """What to change when no problem can be drawn (task options that leave too few problems)."""
        return "check the task's options"

    def problems(self, split: str, seed: int, n: int, start: int = 0, pool: str = TRAIN) -> list[Problem]:
        return [self.problem(split, seed, i, pool) for i in range(start, start + n)]

    # --- showing and reading ---------------------------------------------------------------------
    @abstractmethod
    def prompt(self, problem: Problem) -> str:
        """The first user turn for `problem` in this task's profile."""

    @abstractmethod
    def answer(self, problem: Problem) -> str:
        """One correct single-attempt answer text in this task's profile (the SFT target)."""

    @abstractmethod
    def verify(self, problem: Problem, text: str) -> Verdict:
        """Read `text` in this task's profile and judge it. Never raises on any text."""

    def feedback_turn(self, verdict: Verdict) -> str:
        """The user turn sent back after a wrong attempt."""
        return f"You failed this trial because {verdict.feedback}. Try again."

    # --- the revision protocol -------------------------------------------------------------------
    def new_episode(self, problem: Problem, max_attempts: int | None = None) -> Episode:
        attempts = self.default_max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {attempts}")
        return Episode(problem=problem, max_attempts=attempts, turns=[Turn("user", self.prompt(problem))])

    def step(self, episode: Episode, text: str) -> Verdict:
        """Judge `text` as the next attempt of `episode`, record it, and add the feedback turn if not done."""
        if episode.done:
            raise ValueError(f"episode {episode.problem.key} is already finished")
        verdict = self.verify(episode.problem, text)
        episode.turns.append(Turn("assistant", text))
        episode.verdicts.append(verdict)
        if not episode.done:
            episode.turns.append(Turn("user", self.feedback_turn(verdict)))
        return verdict
