"""Every dataset a base or a study uses, as records that anyone can audit for contamination.

A record is one document or problem: `source` (`pretrain:<kind>`, `sft`, `rl`, `eval`), `task`, `split`,
`pool` (`train` or `eval`, `rlheal.tasks.holdout`), `problem` (the task's problem data: card values and rule,
or the matrix) and `messages` (the chat: the whole document for pretraining, prompt and target for SFT, the
prompt for RL and evaluation). `rlheal data dump` writes them as JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlheal.config import StudyConfig
from rlheal.tasks.holdout import TRAIN

Record = dict[str, Any]
WHAT = ("pretrain", "sft", "rl", "eval")


def pretrain_records(model: str) -> Iterator[Record]:
    """The pretraining corpus of the built-in base `model` (a name of `rlheal.models.builtin.RECIPES`)."""
    from rlheal.models.builtin import RECIPES
    from rlheal.models.world import generate_corpus

    if model not in RECIPES:
        raise ValueError(f"unknown built-in model {model!r}; valid: {', '.join(RECIPES)}")
    recipe = RECIPES[model]
    for doc in generate_corpus(recipe.world, seed=recipe.seed):
        yield {"source": f"pretrain:{doc.kind}", "task": doc.task, "split": "pretrain", "pool": TRAIN,
               "problem": doc.problem, "messages": doc.messages}


def _problem_record(source: str, task, problem, messages: list[dict[str, str]]) -> Record:
    return {"source": source, "task": task.name, "split": problem.split, "pool": problem.pool,
            "problem": problem.data, "messages": messages}


def sft_records(cfg: StudyConfig) -> Iterator[Record]:
    """The SFT set of a study: one (prompt, answer) chat per ID training problem of every task."""
    from rlheal.tasks import get_task

    sft = cfg.sft
    for name in sft.tasks:
        task = get_task(name, sft.profile)
        for problem in task.problems("id", sft.train_seed, sft.n_train):
            yield _problem_record("sft", task, problem, [{"role": "user", "content": task.prompt(problem)},
                                                         {"role": "assistant", "content": task.answer(problem)}])


def rl_records(cfg: StudyConfig) -> Iterator[Record]:
    """The RL problems of a study: every ID problem any RL start trains on (every start and arm draws the same)."""
    settings = getattr(cfg.rl, cfg.rl.algo)
    per_update = settings.episodes_per_update if cfg.rl.algo == "ppo" else settings.prompts_per_update
    for name in cfg.tasks:
        task = settings.model_copy(update={"task": name}).task_world()
        for problem in task.problems("id", settings.seed, settings.updates * per_update):
            yield _problem_record("rl", task, problem, [{"role": "user", "content": task.prompt(problem)}])


def eval_records(cfg: StudyConfig) -> Iterator[Record]:
    """The eval sets of a study (also its SFT loss sets, which are their first problems): every split of every
    task, from the eval pool."""
    from rlheal.evaluate import eval_problems
    from rlheal.tasks import get_task

    for name in cfg.tasks:
        task = get_task(name, cfg.profile)
        for split in cfg.splits:
            for problem in eval_problems(task, split, seed=cfg.eval.seed, episodes=cfg.eval.episodes):
                yield _problem_record("eval", task, problem, [{"role": "user", "content": task.prompt(problem)}])


def study_records(cfg: StudyConfig, what: str) -> Iterator[Record]:
    """The records of one kind (`sft`, `rl` or `eval`) of a study config."""
    readers = {"sft": sft_records, "rl": rl_records, "eval": eval_records}
    if what not in readers:
        raise ValueError(f"--what {what!r} with a config: use one of {', '.join(readers)} (pretraining data "
                         "belongs to a base: --base builtin:NAME --what pretrain)")
    return readers[what](cfg)


def write_jsonl(records: Iterable[Record], out: Path | None) -> int:
    """Write records as JSON lines to `out` atomically (or to stdout when None); returns how many."""
    from rlheal.atomic import write_text

    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    text = "\n".join(lines) + ("\n" if lines else "")
    if out is None:
        print(text, end="")
    else:
        write_text(out, text)
    return len(lines)
