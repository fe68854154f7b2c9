"""The pretraining world of the built-in model: a seeded generator of chat documents (pure Python).

It gives the base model the abilities the study needs before SFT, written in other layouts than the compact
SFT answer (`numbers: ... | formula: ...` / `answer: N`), each ending in the verifier's own key, so the base is
scored from step 0 and RL can reward a return toward the base's way of answering. Document kinds (design and
reasons in docs/BUILTIN_MODEL.md):

- `arith`: `compute (13-5)*(2+1)` -> `(13-5)*(2+1) = 24` (exact values, fractions as `7/2`);
- `values`: a gp24-style card line under a stated face-card rule -> the card values (`13 5 2 1`);
- `solve`: the gp24 compact prompt under a stated rule -> the card values read, then `formula:` and the worked
  formula, in one of several layouts (`13 5 2 1 -> formula: (13-5)*(2+1) = 24`);
- `revise`: the same prompt, a wrong attempt, the verifier's feedback turn, a corrected attempt;
- `matrix`: the rank/det compact prompts -> `rank = 3` / `det = -12`;
- `det_work` (none unless asked for): the det compact prompt, 2x2 or 3x3, -> the determinant worked out step by
  step (minors, products, sums), then `answer: N` (`det_working`). The `builtin:det` recipe uses it.

Held out: every hand, 4-number formula and matrix in a document lies in the train pool
(`rlheal.tasks.holdout`), so no evaluation problem, nor any of its solutions, occurs in the corpus.
Rules: face-card rules are drawn at random (`J,Q,K=10`, `J,Q,K=11,12,13` and any other values 1..13, stated
as `J,Q,K=a,b,c` or `J=a,Q=b,K=c`), so reading the stated rule is a general skill, not a switch among a few.
A typical wrong attempt in `revise` uses the values of another rule, and the feedback names the right card
values: correcting a misread rule is in-distribution for the base.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlheal.tasks import linalg
from rlheal.tasks.arith import parse_formula, show_value
from rlheal.tasks.gp24 import RANKS, SUITS, draw_ranks, judge_formula
from rlheal.tasks.holdout import TRAIN, hand_key, pool_of
from rlheal.tasks.solver24 import solvable, solve

WORLD_VERSION = "4"
TARGET = 24
Messages = list[dict[str, str]]
Faces = tuple[int, int, int]  # the values of J, Q and K under a rule

ID_FACES: Faces = (10, 10, 10)
OOD_FACES: Faces = (11, 12, 13)
FACES_WEIGHTS = {"id": 0.3, "ood": 0.3, "random": 0.4}  # how often a document states each kind of rule


@dataclass(frozen=True)
class Document:
    """One pretraining document: its kind, the task its problem belongs to (None for plain arithmetic), the
    problem's data (card values and rule, a matrix, the numbers of a formula) and the chat messages."""

    kind: str
    task: str | None
    problem: dict[str, Any]
    messages: Messages


class WorldSpec(BaseModel):
    """How many documents of each kind the corpus holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_arith: int = Field(3000, ge=0)
    n_values: int = Field(2000, ge=0)
    n_solve: int = Field(7000, ge=0)
    n_revise: int = Field(2500, ge=0)
    n_matrix: int = Field(800, ge=0)
    n_det_work: int = Field(0, ge=0)

    @classmethod
    def tiny(cls) -> WorldSpec:
        return cls(n_arith=6, n_values=6, n_solve=4, n_revise=4, n_matrix=2)


# --- pieces ---------------------------------------------------------------------------------------------
def card_line(cards: list[str], rule: str, ask: str) -> str:
    """A gp24 compact-profile line: `cards: Kh 5d 2c Ah | J,Q,K=10 | make 24` (ask = `make 24`, `values`)."""
    return f"cards: {' '.join(cards)} | {rule} | {ask}"


def rule_sentence(faces: Faces, form: int = 0) -> str:
    """A rule as a card line states it: form 0 `J,Q,K=11,12,13` (`J,Q,K=10` when all three are equal, as the
    gp24 prompt writes the ID rule), form 1 `J=11,Q=12,K=13`."""
    if form == 1:
        return ",".join(f"{face}={value}" for face, value in zip("JQK", faces, strict=True))
    return f"J,Q,K={faces[0]}" if len(set(faces)) == 1 else "J,Q,K=" + ",".join(map(str, faces))


def face_value(rank: int, faces: Faces) -> int:
    """The number a card of rank 1..13 counts as under a rule: A..10 their rank, J/Q/K the rule's values."""
    return rank if rank <= 10 else faces[rank - 11]


def pick_rule(rng: random.Random) -> tuple[Faces, str]:
    """A rule and its sentence: the ID rule, the OOD rule (each in the gp24 prompt's form 4 times in 5), or
    random values 1..13 for J, Q and K in either form."""
    kind = rng.choices(list(FACES_WEIGHTS), weights=list(FACES_WEIGHTS.values()))[0]
    if kind == "random":
        faces = (rng.randint(1, 13), rng.randint(1, 13), rng.randint(1, 13))
        return faces, rule_sentence(faces, rng.randrange(2))
    faces = ID_FACES if kind == "id" else OOD_FACES
    return faces, rule_sentence(faces, 0 if rng.random() < 0.8 else 1)


def in_train_pool(values: Sequence[int]) -> bool:
    """Whether a 4-number hand may appear in training text (its key is not held out for evaluation)."""
    return pool_of(hand_key(values, TARGET)) == TRAIN


def worked(formula: str) -> str:
    """The pretraining answer format of a formula: the formula, then `=` and its exact value."""
    return f"{formula} = {show_value(parse_formula(formula).value)}"


# How a hand's answer is written: the card values read, then `formula:` and the worked formula, in one of several
# layouts, so that (like a real base LLM) the base knows the content apart from the layout. Every layout holds
# the verifier's key `formula:` (the verifier reads the rest of that line, a trailing `= 24` included); none is
# the SFT layout `numbers: ... | formula: ...`.
HAND_LAYOUTS: tuple[str, ...] = (
    "{values} -> formula: {worked}",
    "values {values}, so formula: {worked}",
    "card values: {values}; formula: {worked}",
    "[{values}] formula: {worked}",
)


def worked_hand(values: list[int], formula: str, layout: int = 0) -> str:
    """The pretraining answer to a hand in `HAND_LAYOUTS[layout]`, e.g. `13 5 2 1 -> formula: (13-5)*(2+1) = 24`."""
    return HAND_LAYOUTS[layout].format(values=" ".join(map(str, values)), worked=worked(formula))


def draw_hand(rng: random.Random, faces: Faces) -> tuple[list[str], list[int]]:
    """Four cards (rank + suit) of the train pool, solvable to 24 under the rule `faces`; face cards are common
    as in the OOD split."""
    while True:
        ranks = draw_ranks(rng, rng.choice(("id", "ood")))
        values = [face_value(r, faces) for r in ranks]
        if in_train_pool(values) and solvable(values, TARGET):
            return [RANKS[r - 1] + rng.choice(SUITS) for r in ranks], values


def pick_solution(rng: random.Random, values: list[int]) -> str:
    """Mostly the shortest canonical solution (what SFT answers use), sometimes another one."""
    solutions = solve(values, TARGET)
    return solutions[0] if rng.random() < 0.7 else rng.choice(solutions)


def random_formula(rng: random.Random, numbers: list[int]) -> str:
    """A random formula over `numbers` in order: random operators and a random binary bracketing."""
    parts = [str(n) for n in numbers]
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        op = rng.choice("+-*/")
        left, right = parts[i], parts[i + 1]
        joined = f"{left}{op}{right}"
        parts[i:i + 2] = [f"({joined})" if len(parts) > 2 and rng.random() < 0.8 else joined]
    text = parts[0]
    return text[1:-1] if text.startswith("(") and _outer_pair(text) else text


def _outer_pair(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i < len(text) - 1:
            return False
    return True


# --- documents ------------------------------------------------------------------------------------------
def arith_doc(rng: random.Random) -> Document:
    """A random formula over 2-4 numbers 1..13 and its exact value; 4 numbers only as a train-pool hand."""
    while True:
        numbers = [rng.randint(1, 13) for _ in range(rng.randint(2, 4))]
        if len(numbers) == 4 and not in_train_pool(numbers):
            continue
        formula = random_formula(rng, numbers)
        try:
            answer = worked(formula)
        except ValueError:  # division by zero
            continue
        return Document("arith", None, {"numbers": numbers},
                        [{"role": "user", "content": f"compute {formula}"}, {"role": "assistant", "content": answer}])


def values_doc(rng: random.Random) -> Document:
    """Four random cards (a train-pool hand under the rule) and their values under a stated rule."""
    faces, rule = pick_rule(rng)
    while True:
        ranks = [rng.randint(1, 13) for _ in range(4)]
        values = [face_value(r, faces) for r in ranks]
        if in_train_pool(values):
            break
    cards = [RANKS[r - 1] + rng.choice(SUITS) for r in ranks]
    return Document("values", "gp24", _hand(cards, values, rule),
                    [{"role": "user", "content": card_line(cards, rule, "values")},
                     {"role": "assistant", "content": " ".join(map(str, values))}])


def _hand(cards: list[str], values: list[int], rule: str) -> dict[str, Any]:
    return {"cards": cards, "values": values, "target": TARGET, "rule": rule}


def solve_doc(rng: random.Random) -> Document:
    faces, rule = pick_rule(rng)
    cards, values = draw_hand(rng, faces)
    layout = rng.randrange(len(HAND_LAYOUTS))
    return Document("solve", "gp24", _hand(cards, values, rule),
                    [{"role": "user", "content": card_line(cards, rule, f"make {TARGET}")},
                     {"role": "assistant", "content": worked_hand(values, pick_solution(rng, values), layout)}])


def wrong_attempt(rng: random.Random, cards: list[str], values: list[int]) -> tuple[list[int], str]:
    """A plausible wrong attempt (values read, formula): a train-pool hand solved under another rule (a
    misread rule), or the right values with a correct formula perturbed."""
    ranks = [RANKS.index(c[:-1]) + 1 for c in cards]
    if rng.random() < 0.5:
        for _ in range(6):
            misread = [face_value(k, pick_rule(rng)[0]) for k in ranks]
            if misread != values and in_train_pool(misread) and solvable(misread, TARGET):
                return misread, rng.choice(solve(misread, TARGET))
    formula = pick_solution(rng, values)
    for _ in range(20):
        spots = [i for i, ch in enumerate(formula) if ch in "+-*/"]
        i = rng.choice(spots)
        candidate = formula[:i] + rng.choice([op for op in "+-*/" if op != formula[i]]) + formula[i + 1:]
        try:
            if parse_formula(candidate).value != TARGET:
                return values, candidate
        except ValueError:
            continue
    return values, f"{formula}+{values[0]}"  # a fifth number as a last resort: wrong numbers, never 24


def feedback_turn(attempt: str, values: list[int]) -> str:
    """The user turn the gp24 task sends after this wrong attempt text (the verifier's own reading and words)."""
    from rlheal.tasks import Problem, get_task

    task = get_task("gp24")
    verdict = task.verify(Problem("gp24", "id", 0, 0, {"cards": [], "values": values, "target": TARGET}), attempt)
    return task.feedback_turn(verdict)


def revise_doc(rng: random.Random) -> Document:
    faces, rule = pick_rule(rng)
    cards, values = draw_hand(rng, faces)
    layout = rng.randrange(len(HAND_LAYOUTS))
    messages = [{"role": "user", "content": card_line(cards, rule, f"make {TARGET}")}]
    for _ in range(rng.choice((1, 1, 2))):
        read, wrong = wrong_attempt(rng, cards, values)
        if judge_formula(wrong, values, TARGET).correct:
            break
        attempt = _claimed(read, wrong, layout)
        messages.append({"role": "assistant", "content": attempt})
        messages.append({"role": "user", "content": feedback_turn(attempt, values)})
    messages.append({"role": "assistant", "content": worked_hand(values, pick_solution(rng, values), layout)})
    return Document("revise", "gp24", _hand(cards, values, rule), messages)


def _claimed(read: list[int], formula: str, layout: int) -> str:
    """A wrong attempt as a base model writes it: the values it read, the formula with its true value."""
    try:
        return worked_hand(read, formula, layout)
    except ValueError:  # division by zero: the claim is the target
        return HAND_LAYOUTS[layout].format(values=" ".join(map(str, read)), worked=f"{formula} = {TARGET}")


def matrix_doc(rng: random.Random) -> Document:
    from rlheal.tasks import get_task

    name = rng.choice(("rank", "det"))
    task = get_task(name)
    problem = task.problem(rng.choice(("id", "ood")), seed=900_000 + rng.randrange(10**6), index=0)
    value = task.answer(problem).split(":", 1)[1].strip()
    return Document("matrix", name, problem.data, [{"role": "user", "content": task.prompt(problem)},
                                                   {"role": "assistant", "content": f"{name} = {value}"}])


def _term(value: int) -> str:
    """`+7` / `-7`: a signed term of a sum."""
    return f"+{value}" if value >= 0 else str(value)


def _difference(a: int, b: int, c: int, d: int) -> tuple[str, int]:
    """`a*b-c*d = ab-cd = v` (a 2x2 minor worked out) and v."""
    value = a * b - c * d
    return f"{a}*{b}-{c}*{d} = {a * b}{_term(-c * d)} = {value}", value


def _minor_entries(matrix: list[list[int]]) -> list[tuple[int, int, int, int]]:
    """The entries (p, q, r, s) of the first row's three 2x2 minors of a 3x3 matrix, each minor being p*q-r*s."""
    _, (d, e, f), (g, h, i) = matrix
    return [(e, i, f, h), (d, i, f, g), (d, h, e, g)]


def _step(left: str, value: int) -> str:
    return f"{left} = {value}"


def det_working(matrix: list[list[int]]) -> str:
    """The determinant of a 2x2 or 3x3 integer matrix worked out, ending in `answer: N` (the det verifier's key).

    2x2: `3*-2-4*1 = -6-4 = -10`. 3x3, in short steps on one line: the first row's three minors, each entry
    times its minor, then the alternating sum two terms at a time:
    `m1; m2; m3; a*v1 = t1; b*v2 = t2; c*v3 = t3; t1-t2 = s; s+t3 = N`, then `answer: N` on the next line.
    """
    if len(matrix) == 2:
        (a, b), (c, d) = matrix
        line, value = _difference(a, d, b, c)
        return f"{line}\nanswer: {value}"
    if len(matrix) != 3 or any(len(row) != 3 for row in matrix):
        raise ValueError(f"det_working takes a 2x2 or 3x3 matrix, got {len(matrix)} rows")
    minors = [_difference(*entries) for entries in _minor_entries(matrix)]
    products = [entry * value for entry, (_, value) in zip(matrix[0], minors, strict=True)]
    partial = products[0] - products[1]
    value = partial + products[2]
    steps = [*(line for line, _ in minors),
             *(_step(f"{entry}*{m}", t) for entry, (_, m), t in zip(matrix[0], minors, products, strict=True)),
             _step(f"{products[0]}-{products[1]}", partial), _step(f"{partial}+{products[2]}", value)]
    return "; ".join(steps) + f"\nanswer: {value}"


_NUMBER = r"(-?\d{1,12})"  # bounded, so hostile output cannot make int() choke
_MINOR = re.compile(rf"{_NUMBER}\*{_NUMBER}-{_NUMBER}\*{_NUMBER} = [^=;]*= {_NUMBER}")
_PRODUCT = re.compile(rf"{_NUMBER}\*{_NUMBER} = {_NUMBER}")
_ANSWER = re.compile(rf"answer: {_NUMBER}(?!\d)")


def check_det_working(text: str, matrix: list[list[int]]) -> dict[str, int] | None:
    """Where a 3x3 working in `det_working`'s format goes right or wrong, step by step; None when `text` does
    not start with three worked 2x2 minors and three products. Counts: `entries_ok` (minors whose four entries
    are the matrix's), `minors_ok` (minors whose value is the true minor), `products_ok` (products of the right
    first-row entry and the text's own minor, computed right), `sum_ok` (1 when the answer is the alternating
    sum of the text's own products, right or wrong) and `right` (1 when the answer is the determinant).
    Reads model output as data only."""
    if len(matrix) != 3 or any(len(row) != 3 for row in matrix):
        raise ValueError(f"check_det_working takes a 3x3 matrix, got {len(matrix)} rows")
    steps = text.split("\n", 1)[0].split("; ")
    if len(steps) < 6:
        return None
    minors = [_MINOR.fullmatch(step) for step in steps[:3]]
    products = [_PRODUCT.fullmatch(step) for step in steps[3:6]]
    if not all(minors) or not all(products):
        return None
    wanted = _minor_entries(matrix)
    stated = [tuple(int(x) for x in m.groups()) for m in minors]
    terms = [tuple(int(x) for x in p.groups()) for p in products]
    answer = _ANSWER.search(text)
    given = None if answer is None else int(answer.group(1))
    return {"entries_ok": sum(m[:4] == w for m, w in zip(stated, wanted, strict=True)),
            "minors_ok": sum(m[4] == w[0] * w[1] - w[2] * w[3] for m, w in zip(stated, wanted, strict=True)),
            "products_ok": sum((x, v, p) == (entry, m[4], entry * m[4])
                               for (x, v, p), entry, m in zip(terms, matrix[0], stated, strict=True)),
            "sum_ok": int(given == terms[0][2] - terms[1][2] + terms[2][2]),
            "right": int(given == linalg.det(matrix))}


def det_work_doc(rng: random.Random) -> Document:
    """A det prompt (2x2 a third of the time, 3x3 otherwise, drawn like the ID / OOD split) and its working."""
    from rlheal.tasks import get_task

    task = get_task("det")
    split = "id" if rng.random() < 1 / 3 else "ood"
    problem = task.problem(split, seed=1_900_000 + rng.randrange(10**6), index=0)
    return Document("det_work", "det", problem.data, [{"role": "user", "content": task.prompt(problem)},
                                                      {"role": "assistant", "content": det_working(problem.data["matrix"])}])


KINDS: dict[str, Callable[[random.Random], Document]] = {
    "arith": arith_doc, "values": values_doc, "solve": solve_doc, "revise": revise_doc, "matrix": matrix_doc,
    "det_work": det_work_doc,
}


def generate_corpus(spec: WorldSpec, seed: int) -> list[Document]:
    """All documents of the spec, shuffled; a pure function of (spec, seed, WORLD_VERSION)."""
    rng = random.Random(f"rlheal-world-{WORLD_VERSION}-{seed}")
    documents = [KINDS[kind](rng) for kind in KINDS for _ in range(getattr(spec, f"n_{kind}"))]
    rng.shuffle(documents)
    return documents

