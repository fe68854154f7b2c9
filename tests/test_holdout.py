"""Held-out evaluation: no eval problem, nor any of its solutions, occurs in any training text of any built-in
base, SFT set or RL pool of any shipped config. The training texts are read back from `rlheal data dump`'s
records and scanned as raw text, independently of how the generators choose their problems: every matrix in
any text, and every hand (a card line under its rule, or a 4-number formula worth 24) in the texts of the
24 game and of plain arithmetic. (A det working's 2x2 minor such as `5*5-1*1 = 24` is a determinant step,
not an answer to a hand, so det texts are not read for hands.)"""

import hashlib
import itertools
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.config import load_config
from rlheal.data import pretrain_records, study_records
from rlheal.models.builtin import RECIPES
from rlheal.tasks import TASK_NAMES, get_task
from rlheal.tasks.arith import FormulaError, parse_formula
from rlheal.tasks.holdout import EVAL_SHARE, hand_key, matrix_key, pool_of
from rlheal.tasks.solver24 import solve

CONFIGS = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
MATRIX = re.compile(r"\[\[[-0-9,\[\] ]+\]\]")
CARD_LINE = re.compile(r"cards: ([^|]+) \| ([^|]+) \| ")
FORMULA_RUN = re.compile(r"[0-9()+\-*/ ]{7,}")
NUMBER = re.compile(r"[0-9]+")
RANK = {"A": 1, **{str(n): n for n in range(2, 11)}}


def reference_pool(key: str) -> str:
    """The pool rule restated: the first 8 bytes of the key's SHA-256 as a fraction of 2^64, below the share."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2**64
    return "eval" if fraction < EVAL_SHARE else "train"


def rule_faces(rule: str) -> list[int]:
    """`J,Q,K=10`, `J,Q,K=11,12,13` or `J=4,Q=7,K=1` -> the values of J, Q and K."""
    if rule.startswith("J,Q,K="):
        faces = [int(x) for x in rule.removeprefix("J,Q,K=").split(",")]
        return faces * 3 if len(faces) == 1 else faces
    named = dict(part.split("=") for part in rule.split(","))
    return [int(named[face]) for face in "JQK"]


def hands_in(text: str) -> list[tuple[int, ...]]:
    """Every hand a text states (card lines under their rule) and every 4-number formula worth 24 it writes."""
    hands = []
    for cards, rule in CARD_LINE.findall(text):
        faces = rule_faces(rule.strip())
        values = [RANK[c[:-1]] if c[:-1] in RANK else faces["JQK".index(c[:-1])] for c in cards.split()]
        hands.append(tuple(sorted(values)))
    for run in FORMULA_RUN.findall(text):
        if len(NUMBER.findall(run)) != 4:
            continue
        for candidate in {run.strip(), run.strip().strip("()")}:
            try:
                parsed = parse_formula(candidate)
            except FormulaError:
                continue
            if len(parsed.numbers) == 4 and parsed.value == Fraction(24):
                hands.append(tuple(sorted(parsed.numbers)))
    return hands


def matrices_in(text: str) -> set[str]:
    return {json.dumps(json.loads(m), separators=(",", ":")) for m in MATRIX.findall(text)}


def training_texts(records, task: str | None = "any") -> list[str]:
    """The message texts of the records (only those of `task`, and of no task, unless `task` is "any")."""
    return [m["content"] for r in records if task == "any" or r["task"] in (None, task) or r["task"].startswith(task)
            for m in r["messages"]]


def eval_keys(configs) -> tuple[set[tuple[int, ...]], set[str]]:
    hands, matrices = set(), set()
    for cfg in configs:
        for r in study_records(cfg, "eval"):
            assert r["pool"] == "eval"
            if "values" in r["problem"]:
                hands.add(tuple(sorted(r["problem"]["values"])))
            else:
                matrices.add(json.dumps(r["problem"]["matrix"], separators=(",", ":")))
    return hands, matrices


@pytest.fixture(scope="module")
def configs():
    return [load_config(None)] + [load_config(path) for path in CONFIGS]


@pytest.fixture(scope="module")
def held_out(configs):
    return eval_keys(configs)


def test_the_pool_rule_is_a_hash_of_the_key_alone():
    for key in [hand_key([13, 5, 2, 1], 24), hand_key((1, 2, 5, 13), 24), matrix_key([[1, 2], [3, 4]])]:
        assert pool_of(key) == reference_pool(key)
    assert hand_key([13, 5, 2, 1], 24) == hand_key([1, 2, 5, 13], 24) == "hand:24:1,2,5,13"
    # about EVAL_SHARE of all 2x2 matrices with entries in [-4, 4] are held out
    keys = [matrix_key([[a, b], [c, d]]) for a, b, c, d in itertools.product(range(-4, 5), repeat=4)]
    share = sum(reference_pool(k) == "eval" for k in keys) / len(keys)
    assert abs(share - EVAL_SHARE) < 0.02


@pytest.mark.parametrize("name", TASK_NAMES)
def test_problems_come_from_the_pool_asked_for(name):
    task = get_task(name)
    for split in ("id", "ood"):
        for pool in ("train", "eval"):
            for problem in task.problems(split, 3, 40, pool=pool):
                assert problem.pool == pool and reference_pool(task.holdout_key(problem.data)) == pool
    assert task.problem("id", 3, 0).pool == "train"  # training code gets the train pool by default


@pytest.mark.parametrize("model", sorted(RECIPES))
def test_no_eval_problem_in_any_pretraining_corpus(model, held_out):
    hands, matrices = held_out
    records = list(pretrain_records(model))
    texts = training_texts(records)
    assert texts
    found_hands = [h for t in training_texts(records, "gp24") for h in hands_in(t)]
    found_matrices = set().union(*(matrices_in(t) for t in texts))
    assert not set(found_hands) & hands
    assert not found_matrices & matrices
    if model == "builtin:det":
        assert len(found_matrices) > 10_000  # the scan does read the matrices it is meant to check
    if model == "builtin:gp24":
        assert len(found_hands) > 20_000


@pytest.mark.parametrize("what", ["sft", "rl"])
def test_no_eval_problem_in_any_sft_set_or_rl_pool(configs, held_out, what):
    hands, matrices = held_out
    for cfg in configs:
        records = list(study_records(cfg, what))
        texts = training_texts(records)
        assert texts
        assert not {h for t in training_texts(records, "gp24") for h in hands_in(t)} & hands
        assert not set().union(*(matrices_in(t) for t in texts)) & matrices


def test_the_scan_finds_a_planted_eval_problem(held_out):
    hands, matrices = held_out
    hand = sorted(hands)[0]
    matrix = sorted(matrices)[0]
    solution = solve(list(hand), 24)[0]
    assert hand in hands_in(f"values {' '.join(map(str, hand))}, so formula: {solution} = 24")
    assert matrix in matrices_in(f"det of {matrix}?")


def test_data_dump_writes_every_kind(tmp_path):
    runner = CliRunner()
    out = tmp_path / "pre.jsonl"
    result = runner.invoke(app, ["data", "dump", "--what", "pretrain", "--base", "builtin:tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 22 and {r["pool"] for r in rows} == {"train"}
    assert {"source", "task", "split", "pool", "problem", "messages"} == set(rows[0])
    for what, pool in (("sft", "train"), ("rl", "train"), ("eval", "eval")):
        result = runner.invoke(app, ["data", "dump", "--what", what, "--config", "configs/quick.yaml"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert rows and {r["pool"] for r in rows} == {pool} and {r["source"] for r in rows} == {what}
    result = runner.invoke(app, ["data", "dump", "--what", "sft", "--base", "builtin:tiny"])
    assert result.exit_code == 2 and "--config" in result.output
