"""The pretraining world of the built-in model: a seeded generator of chat documents (pure Python).

It gives the base model the abilities the study needs before SFT, written in another answer format than
the compact SFT answer (`numbers: ... | formula: ...` / `answer: ...`), so that, like a real base LLM, it can solve the
tasks but fails the SFT format. Document kinds (design and reasons in docs/BUILTIN_MODEL.md):

- `arith`: `compute (13-5)*(2+1)` -> `(13-5)*(2+1) = 24` (exact values, fractions as `7/2`);
- `values`: a gp24-style card line under a stated face-card rule -> the card values (`13 5 2 1`);
- `solve`: the gp24 compact prompt under a stated rule -> the card values read, then the worked formula, in
  one of several layouts (`13 5 2 1 -> (13-5)*(2+1) = 24`, `values 13 5 2 1, so ...`: the steps of the SFT
  answer `numbers: ... | formula: ...`, never in its layout);
- `revise`: the same prompt, a wrong attempt, the verifier's feedback turn, a corrected attempt;
- `matrix`: the rank/det compact prompts -> `rank = 3` / `det = -12`;
- `det_work` (none unless asked for): the det compact prompt, 2x2 or 3x3, -> the determinant worked out by
  cofactor expansion, then `answer: N` (`det_working`). Only the `builtin:det` recipe uses it, to give the base
  a 3x3 (OOD) ability that SFT's direct `answer: N` could erode (docs/RESULTS.md §19).

Rules: the ID rule (J,Q,K=10), the OOD rule (J,Q,K=11,12,13) and distractor rules, so the rule sentence
must be read. A typical wrong attempt in `revise` uses the values of another rule, and the feedback names
the right card values: correcting a misread rule is in-distribution for the base.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from rlheal.tasks import linalg
from rlheal.tasks.arith import parse_formula, show_value
from rlheal.tasks.gp24 import RANKS, SUITS, draw_ranks, judge_formula
from rlheal.tasks.solver24 import solvable, solve

WORLD_VERSION = "3"
TARGET = 24
Messages = list[dict[str, str]]

# rule sentence (as the compact gp24 prompt writes it) -> the value of a card of rank 1..13
RULES: dict[str, Callable[[int], int]] = {
    "J,Q,K=10": lambda r: min(r, 10),  # the ID rule
    "J,Q,K=11,12,13": lambda r: r,  # the OOD rule
    "J,Q,K=13,12,11": lambda r: 24 - r if r > 10 else r,
    "J,Q,K=1,2,3": lambda r: r - 10 if r > 10 else r,
    "J,Q,K=5": lambda r: 5 if r > 10 else r,
}
ID_RULE, OOD_RULE = "J,Q,K=10", "J,Q,K=11,12,13"
RULE_WEIGHTS = {ID_RULE: 0.35, OOD_RULE: 0.35, "J,Q,K=13,12,11": 0.1, "J,Q,K=1,2,3": 0.1, "J,Q,K=5": 0.1}


class WorldSpec(BaseModel):
    """How many documents of each kind the corpus holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_arith: int = Field(3000, ge=0)
    n_values: int = Field(2000, ge=0)
    n_solve: int = Field(7000, ge=0)
    n_revise: int = Field(2500, ge=0)
    n_matrix: int = Field(800, ge=0)
    n_det_work: int = Field(0, ge=0)

    @model_serializer(mode="wrap")
    def _omit_unused_det_work(self, handler: SerializerFunctionWrapHandler) -> dict:
        """Left out while 0, so the recipes built before `det_work` existed keep their hashes (and caches)."""
        data = handler(self)
        if not data.get("n_det_work"):
            data.pop("n_det_work", None)
        return data

    @classmethod
    def tiny(cls) -> WorldSpec:
        return cls(n_arith=6, n_values=6, n_solve=4, n_revise=4, n_matrix=2)


# --- pieces ---------------------------------------------------------------------------------------------
def card_line(cards: list[str], rule: str, ask: str) -> str:
    """A gp24 compact-profile line: `cards: Kh 5d 2c Ah | J,Q,K=10 | make 24` (ask = `make 24`, `values`)."""
    return f"cards: {' '.join(cards)} | {rule} | {ask}"


def worked(formula: str) -> str:
    """The pretraining answer format of a formula: the formula, then `=` and its exact value."""
    return f"{formula} = {show_value(parse_formula(formula).value)}"


# How a hand's answer is written: the card values read, then the worked formula, in one of several layouts,
# so that (like a real base LLM) the base knows the content apart from the layout. None is the SFT layout
# `numbers: ... | formula: ...` (no `formula:` or `answer:` key, which the verifiers read).
HAND_LAYOUTS: tuple[str, ...] = (
    "{values} -> {worked}",
    "values {values}, so {worked}",
    "numbers: {values} | solution: {worked}",
    "card values: {values}; {worked}",
    "[{values}] {worked}",
)


def worked_hand(values: list[int], formula: str, layout: int = 0) -> str:
    """The pretraining answer to a hand in `HAND_LAYOUTS[layout]`, e.g. `13 5 2 1 -> (13-5)*(2+1) = 24`."""
    return HAND_LAYOUTS[layout].format(values=" ".join(map(str, values)), worked=worked(formula))


def draw_hand(rng: random.Random, rule: str) -> tuple[list[str], list[int]]:
    """Four cards (rank + suit) solvable to 24 under `rule`; face cards are common as in the OOD split."""
    while True:
        ranks = draw_ranks(rng, rng.choice(("id", "ood")))
        values = [RULES[rule](r) for r in ranks]
        if solvable(values, TARGET):
            return [RANKS[r - 1] + rng.choice(SUITS) for r in ranks], values


def pick_rule(rng: random.Random) -> str:
    return rng.choices(list(RULE_WEIGHTS), weights=list(RULE_WEIGHTS.values()))[0]


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
def arith_doc(rng: random.Random) -> Messages:
    while True:
        formula = random_formula(rng, [rng.randint(1, 13) for _ in range(rng.randint(2, 4))])
        try:
            answer = worked(formula)
        except ValueError:  # division by zero
            continue
        return [{"role": "user", "content": f"compute {formula}"}, {"role": "assistant", "content": answer}]


def values_doc(rng: random.Random) -> Messages:
    rule = pick_rule(rng)
    ranks = [rng.randint(1, 13) for _ in range(4)]
    cards = [RANKS[r - 1] + rng.choice(SUITS) for r in ranks]
    return [{"role": "user", "content": card_line(cards, rule, "values")},
            {"role": "assistant", "content": " ".join(str(RULES[rule](r)) for r in ranks)}]


def solve_doc(rng: random.Random) -> Messages:
    rule = pick_rule(rng)
    cards, values = draw_hand(rng, rule)
    layout = rng.randrange(len(HAND_LAYOUTS))
    return [{"role": "user", "content": card_line(cards, rule, f"make {TARGET}")},
            {"role": "assistant", "content": worked_hand(values, pick_solution(rng, values), layout)}]


def wrong_attempt(rng: random.Random, rule: str, cards: list[str], values: list[int]) -> tuple[list[int], str]:
    """A plausible wrong attempt (values read, formula): a hand solved under another rule (a misread rule),
    or the right values with a correct formula perturbed."""
    ranks = [RANKS.index(c[:-1]) + 1 for c in cards]
    if rng.random() < 0.5:
        others = [r for r in RULES if r != rule and [RULES[r](k) for k in ranks] != values]
        rng.shuffle(others)
        for other in others:
            misread = [RULES[other](k) for k in ranks]
            if solvable(misread, TARGET):
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
    return values, formula.replace(str(values[0]), str(values[0] + 1), 1)  # wrong numbers as a last resort


def feedback_turn(formula: str, values: list[int]) -> str:
    """The user turn the gp24 task sends after this wrong formula (the verifier's own words)."""
    verdict = judge_formula(formula, values, TARGET)
    return f"You failed this trial because {verdict.feedback}. Try again."


def revise_doc(rng: random.Random) -> Messages:
    rule = pick_rule(rng)
    cards, values = draw_hand(rng, rule)
    layout = rng.randrange(len(HAND_LAYOUTS))
    messages = [{"role": "user", "content": card_line(cards, rule, f"make {TARGET}")}]
    for _ in range(rng.choice((1, 1, 2))):
        read, wrong = wrong_attempt(rng, rule, cards, values)
        if judge_formula(wrong, values, TARGET).correct:
            break
        messages.append({"role": "assistant", "content": _claimed(read, wrong, layout)})
        messages.append({"role": "user", "content": feedback_turn(wrong, values)})
    messages.append({"role": "assistant", "content": worked_hand(values, pick_solution(rng, values), layout)})
    return messages


def _claimed(read: list[int], formula: str, layout: int) -> str:
    """A wrong attempt as a base model writes it: the values it read, the formula with its true value."""
    try:
        return worked_hand(read, formula, layout)
    except ValueError:  # division by zero: the claim is the target
        return HAND_LAYOUTS[layout].format(values=" ".join(map(str, read)), worked=f"{formula} = {TARGET}")


def matrix_doc(rng: random.Random) -> Messages:
    from rlheal.tasks import get_task

    name = rng.choice(("rank", "det"))
    task = get_task(name)
    problem = task.problem(rng.choice(("id", "ood")), seed=900_000 + rng.randrange(10**6), index=0)
    value = task.answer(problem).split(":", 1)[1].strip()
    return [{"role": "user", "content": task.prompt(problem)}, {"role": "assistant", "content": f"{name} = {value}"}]


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


def det_working(matrix: list[list[int]]) -> str:
    """The determinant of a 2x2 or 3x3 integer matrix worked out, ending in `answer: N` (the det verifier's key).

    2x2: `3*-2-4*1 = -6-4 = -10`. 3x3: the three minors of the first row, then the cofactor sum,
    `m1; m2; m3; a*m1-b*m2+c*m3 = t1+t2+t3 = N`, one line, then `answer: N` on the next.
    """
    if len(matrix) == 2:
        (a, b), (c, d) = matrix
        line, value = _difference(a, d, b, c)
        return f"{line}\nanswer: {value}"
    if len(matrix) != 3 or any(len(row) != 3 for row in matrix):
        raise ValueError(f"det_working takes a 2x2 or 3x3 matrix, got {len(matrix)} rows")
    (a, b, c), *_ = matrix
    minors = [_difference(*entries) for entries in _minor_entries(matrix)]
    m1, m2, m3 = (value for _, value in minors)
    terms = [a * m1, -b * m2, c * m3]
    value = sum(terms)
    cofactors = f"{a}*{m1}-{b}*{m2}+{c}*{m3} = {terms[0]}{_term(terms[1])}{_term(terms[2])} = {value}"
    return "; ".join([*(line for line, _ in minors), cofactors]) + f"\nanswer: {value}"


_NUMBER = r"(?<!\d)(-?\d{1,12})(?!\d)"  # bounded, so hostile output cannot make int() choke
_MINOR = re.compile(rf"{_NUMBER}\*{_NUMBER}-{_NUMBER}\*{_NUMBER} = [^=;]*= {_NUMBER}")
_ANSWER = re.compile(rf"answer: {_NUMBER}")


def check_det_working(text: str, matrix: list[list[int]]) -> dict[str, int] | None:
    """Where a 3x3 working in `det_working`'s format goes right or wrong, step by step; None when `text` does
    not start with three worked 2x2 minors. Counts: `entries_ok` (minors whose four entries are the matrix's),
    `minors_ok` (minors whose value is the true minor), `sum_ok` (1 when the answer is the cofactor sum of the
    first row with the text's own minor values, right or wrong) and `right` (1 when the answer is the
    determinant). Reads model output as data only."""
    if len(matrix) != 3 or any(len(row) != 3 for row in matrix):
        raise ValueError(f"check_det_working takes a 3x3 matrix, got {len(matrix)} rows")
    found = _MINOR.findall(text.split("\n", 1)[0])[:3]
    if len(found) < 3:
        return None
    (a, b, c), *_ = matrix
    wanted = _minor_entries(matrix)
    stated = [tuple(int(x) for x in m) for m in found]
    values = [m[4] for m in stated]
    answer = _ANSWER.search(text)
    given = None if answer is None else int(answer.group(1))
    return {"entries_ok": sum(m[:4] == w for m, w in zip(stated, wanted, strict=True)),
            "minors_ok": sum(m[4] == w[0] * w[1] - w[2] * w[3] for m, w in zip(stated, wanted, strict=True)),
            "sum_ok": int(given == a * values[0] - b * values[1] + c * values[2]),
            "right": int(given == linalg.det(matrix))}


def det_work_doc(rng: random.Random) -> Messages:
    """A det prompt (2x2 a third of the time, 3x3 otherwise, drawn like the ID / OOD split) and its working."""
    from rlheal.tasks import get_task

    task = get_task("det")
    split = "id" if rng.random() < 1 / 3 else "ood"
    problem = task.problem(split, seed=1_900_000 + rng.randrange(10**6), index=0)
    return [{"role": "user", "content": task.prompt(problem)},
            {"role": "assistant", "content": det_working(problem.data["matrix"])}]


KINDS: dict[str, Callable[[random.Random], Messages]] = {
    "arith": arith_doc, "values": values_doc, "solve": solve_doc, "revise": revise_doc, "matrix": matrix_doc,
    "det_work": det_work_doc,  # last, so that corpora without it draw exactly as before it existed
}


def generate_corpus(spec: WorldSpec, seed: int) -> list[Messages]:
    """All documents of the spec, shuffled; a pure function of (spec, seed, WORLD_VERSION)."""
    rng = random.Random(f"rlheal-world-{WORLD_VERSION}-{seed}")
    documents = [KINDS[kind](rng) for kind in KINDS for _ in range(getattr(spec, f"n_{kind}"))]
    rng.shuffle(documents)
    return documents

