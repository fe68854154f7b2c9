"""The study config: one YAML file, validated with pydantic before any work starts.

`model`, `tasks` and `profile` are stated once at the top and passed down to the SFT and RL sections.
Every problem in a file is reported at once, each with the path of the offending field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlheal.provenance import stable_hash
from rlheal.spectral.weights import DECODER_MODULES, MODULES
from rlheal.tasks import TASK_NAMES
from rlheal.tasks.base import PROFILES, SPLITS, check_names
from rlheal.train.grpo import GRPOConfig
from rlheal.train.ppo import PPOConfig
from rlheal.train.sft import SFTConfig
from rlheal.yaml_input import YamlInputError, load_yaml_file

# Where the study's defaults differ from the section classes' own: the built-in det study on a CPU (SFT at a
# gentle learning rate for long enough that 3x3 success can decline; RL as pre-registered in docs/RESULTS.md,
# with its dated amendment: first attempts, a gentle learning rate, 100 updates under adaptive KL control, the
# same episodes for every start).
STUDY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"steps": 2000, "schedule": "log:12", "lr": 1e-4},
    "ppo": {"updates": 100, "episodes_per_update": 32, "rollout_batch_size": 32, "lr": 1e-5, "max_attempts": 1,
            "max_new_tokens": 176, "save_every": 50, "kl_coef": 0.05, "kl_target": 2.0, "kl_stop": 20.0},
    "grpo": {"max_new_tokens": 176},
}


class ConfigError(ValueError):
    """An invalid study config; the message lists every problem with its field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalSection(_Section):
    episodes: int = Field(300, ge=1, description="distinct held-out problems per (checkpoint, task, split)")
    seed: int = Field(0, ge=0, description="eval-set seed (the frozen problems)")
    batch_size: int = Field(100, ge=1, description="chats per generate call")
    max_new_tokens: int = Field(176, ge=1, description="longest attempt, in tokens (a worked 3x3 determinant is at "
                                "most ~160 characters, a gp24 compact answer ~46)")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    max_attempts: int | None = Field(1, ge=1, description="attempts per episode: 1 scores the first attempt; "
                                     "None = each task's default (revision)")


def _decline_points(rule: str) -> float:
    """5 for `decline`, P for `decline:P` (0 < P ≤ 100); anything else is an error that lists the choices."""
    name, colon, points = rule.partition(":")
    value = None
    if name == "decline":
        try:
            value = float(points) if colon else 5.0
        except ValueError:
            pass
    if value is None or not 0.0 < value <= 100.0:
        raise ValueError(f"unknown RL start rule {rule!r}: use auto, window, decline, decline:P with 0 < P <= 100 "
                         f"(percentage points below the OOD peak), or a list of SFT steps")
    return value


class RLSection(_Section):
    algo: Literal["ppo", "grpo"] = "ppo"
    starts: Literal["auto", "window"] | str | list[int] = Field(
        "window", description="SFT steps to start RL from; auto spreads them over the ID-success range, "
        "always with the OOD peak and the last checkpoint; window takes the checkpoint before the OOD peak, the "
        "peak, the first checkpoint 5 points below it, the first at or below the midpoint of peak and end, and "
        "the end (the base never); decline (or decline:P) takes the first checkpoint whose OOD success is 5 (or "
        "P) percentage points below the peak, and the last checkpoint; an empty list skips RL (SFT-only studies)")
    n_starts: int = Field(3, ge=1, description="how many starts `auto` picks")
    control: bool = Field(True, description="also run PPO's control arm from every start: the same updates "
                          "with rewards shuffled across each batch, so regression to the mean is visible")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="settings when algo is ppo")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="settings when algo is grpo")

    @field_validator("starts")
    @classmethod
    def _known_rule(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("auto", "window"):
            _decline_points(value)
        return value

    @property
    def decline_points(self) -> float | None:
        """Points below the OOD peak of the `decline` rule, or None when `starts` is not that rule."""
        named = isinstance(self.starts, str) and self.starts not in ("auto", "window")
        return _decline_points(self.starts) if named else None

    @model_validator(mode="before")
    @classmethod
    def _task_is_set_at_the_top(cls, data: Any) -> Any:
        for algo in ("ppo", "grpo"):
            if isinstance(data, dict) and isinstance(data.get(algo), dict) and "task" in data[algo]:
                raise ValueError(f"rl.{algo}.task: RL trains on each of the study's `tasks`; set them at the top level")
        return data

    @model_validator(mode="after")
    def _control_is_a_ppo_arm(self) -> RLSection:
        if self.control and self.algo != "ppo":
            raise ValueError("rl.control: the shuffled-reward control arm is built into PPO; set algo: ppo")
        return self

    def settings(self, task: str) -> dict[str, Any]:
        """The chosen algorithm's settings for RL on `task`."""
        return {**getattr(self, self.algo).model_dump(), "task": task}

    def arms(self, task: str) -> list[dict[str, Any]]:
        """The settings of every RL arm on `task`: the algorithm's, then its control arm when asked for."""
        main = self.settings(task)
        return [main, {**main, "control": True}] if self.control else [main]


class SpectralSection(_Section):
    references: list[Literal["base", "ood-peak"]] = Field(default_factory=lambda: ["base", "ood-peak"])
    k: list[float] = Field(default_factory=lambda: [0.2], min_length=1,
                           description="top/tail subspace sizes: a fraction of the rank (≤ 1) or a count (> 1)")
    modules: list[str] = Field(default_factory=lambda: list(DECODER_MODULES), min_length=1)
    targets: Literal["sft", "sft+rl"] = "sft+rl"

    @field_validator("modules")
    @classmethod
    def _known_modules(cls, value: list[str]) -> list[str]:
        return check_names("modules", value, MODULES)

    @field_validator("k")
    @classmethod
    def _positive_k(cls, value: list[float]) -> list[float]:
        if any(not k > 0 for k in value):
            raise ValueError("every k must be > 0 (a fraction of the rank ≤ 1, or a count)")
        return value


class EditsSection(_Section):
    modes: list[Literal["values", "vectors", "triplets", "layers"]] = Field(
        default_factory=lambda: ["values", "vectors", "layers"])
    top: float = Field(0.2, ge=0, description="top-k directions restored (fraction of the rank or count)")
    tail: float = Field(0.0, ge=0, description="tail-k directions restored (fraction of the rank or count)")
    layers: float = Field(0.25, gt=0, le=1, description="`layers` mode: restore this first share of decoder layers")


class StudyConfig(_Section):
    """The whole study: model → SFT → eval → RL → eval → spectrum → edits → eval → report."""

    model: str = Field("builtin:det", description='"builtin:det" (the built-in study\'s base), "builtin:gp24", '
                       '"builtin:tiny" (smoke runs) or a Hugging Face checkpoint folder')
    tasks: list[str] = Field(default_factory=lambda: ["det"], min_length=1)
    splits: list[str] = Field(default_factory=lambda: list(SPLITS), min_length=1)
    profile: str = "compact"
    seed: int = Field(0, ge=0)
    eval: EvalSection = Field(default_factory=EvalSection)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLSection = Field(default_factory=RLSection)
    spectral: SpectralSection = Field(default_factory=SpectralSection)
    edits: EditsSection = Field(default_factory=EditsSection)

    @model_validator(mode="before")
    @classmethod
    def _pass_down_shared_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        shared = {k: data[k] for k in ("model", "tasks", "profile", "seed") if k in data}
        sft = data.get("sft", {})
        if isinstance(sft, dict):  # SFT starts from the study's model and tasks, their defaults included
            defaults = {"model": cls.model_fields["model"].default, "tasks": cls.model_fields["tasks"].default_factory()}
            data["sft"] = {**STUDY_DEFAULTS["sft"], **defaults, **shared, **sft}
        rl = data.get("rl", {})
        if isinstance(rl, dict):
            passed = {k: v for k, v in shared.items() if k in ("profile", "seed")}
            rl = dict(rl)
            if rl.get("algo") == "grpo":
                rl.setdefault("control", False)  # the control arm is PPO's
            for algo in ("ppo", "grpo"):
                if isinstance(rl.get(algo, {}), dict):
                    rl[algo] = {**STUDY_DEFAULTS.get(algo, {}), **passed, **rl.get(algo, {})}
            data["rl"] = rl
        return data

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        return check_names("tasks", value, TASK_NAMES)

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, value: list[str]) -> list[str]:
        return check_names("splits", value, SPLITS)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        return check_names("profile", [value], PROFILES)[0]

    @model_validator(mode="after")
    def _rl_task_options_fit_every_task(self) -> StudyConfig:
        settings = getattr(self.rl, self.rl.algo)
        for task in self.tasks:
            try:
                settings.model_copy(update={"task": task}).task_world()
            except ValueError as exc:
                raise ValueError(f"rl.{self.rl.algo}.task_options do not fit task {task!r}: {exc}") from None
        return self

    def fingerprint(self) -> str:
        """A hash of everything that changes results; a run folder made by another fingerprint is refused."""
        return stable_hash(self.model_dump(mode="json"))


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the config:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"] if len(err["msg"]) <= 300 else err["msg"][:300] + "…"  # messages may echo the value
        lines.append(f"  - {where}: {msg}")
    lines.append("Fix these fields (see configs/default.yaml for a complete example) and run again.")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> StudyConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, found {type(data).__name__}")
    try:
        return StudyConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(
    path: str | Path | None = None, seed: int | None = None, overrides: Mapping[str, Any] | None = None
) -> StudyConfig:
    """Read and validate a YAML study config; None gives the built-in default (`configs/default.yaml`).

    `seed` replaces the config's top-level seed (passed down to every section that does not set its own).
    `overrides` maps dotted keys to values (`{"sft.n_train": 500}`) and replaces them in the file's data
    before validation, so a wrong key or value is reported like one in the file.
    """
    source = "the built-in default" if path is None else str(path)
    data: Any = {}
    if path is not None:
        try:
            data = load_yaml_file(path)
        except YamlInputError as exc:
            raise ConfigError(str(exc)) from None
        if data is None:
            raise ConfigError(f"{path} holds no settings, and an empty config would silently run the whole default "
                              "study: write the fields to change, `{}` for the defaults, or leave out --config")
    if isinstance(data, dict):
        data = apply_overrides(data, {**(overrides or {}), **({} if seed is None else {"seed": seed})})
    return parse_config(data, source=source)


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with each dotted key (`sft.lr`) set to its value; sections are created as needed."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        *sections, leaf = dotted.split(".")
        node = data
        for depth, name in enumerate(sections):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                where = ".".join(sections[: depth + 1])
                raise ConfigError(f"cannot set {dotted}: {where} is a value, not a section")
        node[leaf] = value
    return data


def default_yaml() -> str:
    """configs/default.yaml: the StudyConfig defaults, with the shared fields stated once at the top."""
    data = StudyConfig().model_dump(mode="json")
    for key in ("model", "tasks", "profile", "seed"):
        data["sft"].pop(key, None)
    for algo in ("ppo", "grpo"):
        for key in ("profile", "seed", "task"):
            data["rl"][algo].pop(key, None)
    head = ("# The built-in study: `rlheal study` with no --config runs exactly this (a test keeps the two equal;\n"
            "# regenerate with: python -c 'from rlheal.config import default_yaml; print(default_yaml(), end=\"\")'"
            " > configs/default.yaml).\n")
    return head + yaml.safe_dump(data, sort_keys=False)
