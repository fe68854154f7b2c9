"""Matrix rank (`rank`) and determinant (`det`): integer matrices, one integer answer, exact ground truth.

- rank: ID 4x5 entries in [-4, 4], OOD 5x4 entries in [-5, 5]; the rank is uniform in 0..4. The matrix is a
  product P·[I; C]·B: r independent rows B, the other rows integer combinations of them (coefficients in
  -1..1), rows shuffled; redrawn until every entry is in range and the exact rank is r. One attempt.
- det: ID 2x2 entries in [-4, 4], OOD 3x3 entries in [-5, 5]; half symmetric; non-zero determinant
  (redrawn). Up to 5 attempts.
Rewards per attempt: +5 correct, -1 a whole number that is wrong, -3 not a whole number or no answer found.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any, ClassVar

from rlheal.tasks import linalg
from rlheal.tasks.arith import show_char
from rlheal.tasks.base import (
    CORRECT,
    ILLEGAL,
    UNPARSEABLE,
    WRONG_VALUE,
    Problem,
    Task,
    Verdict,
)
from rlheal.tasks.holdout import matrix_key
from rlheal.tasks.reading import Miss, read_field

REWARDS: dict[str, float] = {CORRECT: 5.0, WRONG_VALUE: -1.0, ILLEGAL: -3.0, UNPARSEABLE: -3.0}
MAX_ANSWER_DIGITS = 12
_INTEGER = re.compile(r"[+-]?[0-9]+")

Matrix = list[list[int]]


def rank_matrix(rng: random.Random, rows: int, cols: int, bound: int) -> Matrix:
    """A rows x cols matrix with entries in [-bound, bound] and rank uniform in 0..min(rows, cols)."""
    target = rng.randint(0, min(rows, cols))
    if target == 0:
        return [[0] * cols for _ in range(rows)]
    while True:
        base = [[rng.randint(-bound, bound) for _ in range(cols)] for _ in range(target)]
        if linalg.rank(base) != target:
            continue
        dependent = [_combination(rng, base, bound) for _ in range(rows - target)]
        if any(row is None for row in dependent):
            continue
        matrix = base + dependent
        rng.shuffle(matrix)
        if linalg.rank(matrix) == target:
            return matrix


def _combination(rng: random.Random, base: Matrix, bound: int, tries: int = 200) -> list[int] | None:
    """A non-zero integer combination (coefficients -1..1) of the rows of `base` within range, or None."""
    for _ in range(tries):
        coefficients = [rng.randint(-1, 1) for _ in base]
        if not any(coefficients):
            continue
        row = [sum(c * b[j] for c, b in zip(coefficients, base, strict=True)) for j in range(len(base[0]))]
        if all(-bound <= x <= bound for x in row):
            return row
    return None


def det_matrix(rng: random.Random, size: int, bound: int) -> tuple[Matrix, bool]:
    """A size x size matrix with entries in [-bound, bound] and non-zero determinant; symmetric half the time."""
    symmetric = rng.random() < 0.5
    while True:
        matrix = [[rng.randint(-bound, bound) for _ in range(size)] for _ in range(size)]
        if symmetric:
            matrix = [[matrix[min(i, j)][max(i, j)] for j in range(size)] for i in range(size)]
        if linalg.det(matrix) != 0:
            return matrix, symmetric


def read_integer(field: Any) -> int | str:
    """The whole number in an answer field (a string, or a JSON integer), or a one-line reason it is not."""
    if isinstance(field, int) and not isinstance(field, bool):
        return field if len(str(abs(field))) <= MAX_ANSWER_DIGITS else "the answer has too many digits"
    if not isinstance(field, str):
        return f"the answer {json.dumps(field)[:40]} is not a whole number"
    text = field.strip()
    if len(text) > 4 * MAX_ANSWER_DIGITS:
        return f"the answer is {len(text)} characters long; write one whole number"
    if _INTEGER.fullmatch(text):
        return int(text) if len(text.lstrip("+-")) <= MAX_ANSWER_DIGITS else "the answer has too many digits"
    for ch in text:
        if ch.isdigit() and not ch.isascii():
            return f"non-ASCII digit {show_char(ch)}: write numbers with the digits 0-9"
    if not text:
        return "the answer is empty"
    shown = text if len(text) <= 30 else text[:30] + "..."
    return f"the answer {shown!r} is not a whole number"


class MatrixTask(Task):
    """A task whose answer is one integer computed exactly from an integer matrix."""

    noun: ClassVar[str]  # "rank" or "determinant"
    word: ClassVar[str]  # how the compact prompt names it
    options: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[Callable[[Matrix], int]]  # the ground truth, from the matrix

    def holdout_key(self, data: dict[str, Any]) -> str:
        return matrix_key(data["matrix"])

    def truth(self, problem: Problem) -> int:
        """The exact answer of `problem`."""
        return type(self).exact(problem.data["matrix"])

    def prompt(self, problem: Problem) -> str:
        matrix = problem.data["matrix"]
        if self.profile == "compact":
            return f"{self.word} of {json.dumps(matrix, separators=(',', ':'))}?"
        return (
            f"Compute the {self.noun} of the following {len(matrix)}x{len(matrix[0])} integer matrix, "
            "given as a list of rows.\n"
            f"Matrix: {json.dumps(matrix)}\n"
            "Answer with a JSON object of this form and nothing else:\n"
            f'{{"answer": N}} where N is the {self.noun}, a whole number.'
        )

    def answer(self, problem: Problem) -> str:
        value = self.truth(problem)
        return f"answer: {value}" if self.profile == "compact" else json.dumps({"answer": value})

    def verify(self, problem: Problem, text: str) -> Verdict:
        field = read_field(text, self.profile, "answer")
        if isinstance(field, Miss):
            return Verdict(False, REWARDS[UNPARSEABLE], UNPARSEABLE, field.reason, format_ok=False)
        value = read_integer(field)
        if isinstance(value, str):
            return Verdict(False, REWARDS[ILLEGAL], ILLEGAL, value, format_ok=True)
        if value != self.truth(problem):
            return Verdict(False, REWARDS[WRONG_VALUE], WRONG_VALUE, f"{value} is not the {self.noun} of this matrix", True)
        return Verdict(True, REWARDS[CORRECT], CORRECT, f"{value} is the {self.noun} of this matrix", True)


class MatrixRank(MatrixTask):
    name: ClassVar[str] = "rank"
    summary: ClassVar[str] = "the rank of an integer matrix; ID 4x5, OOD 5x4"
    default_max_attempts: ClassVar[int] = 1
    noun: ClassVar[str] = "rank"
    word: ClassVar[str] = "rank"
    exact = staticmethod(linalg.rank)
    shapes: ClassVar[dict[str, tuple[int, int, int]]] = {"id": (4, 5, 4), "ood": (5, 4, 5)}

    def draw(self, rng: random.Random, split: str) -> dict[str, Any]:
        rows, cols, bound = self.shapes[split]
        return {"matrix": rank_matrix(rng, rows, cols, bound)}


class Determinant(MatrixTask):
    name: ClassVar[str] = "det"
    summary: ClassVar[str] = "the determinant of an integer matrix; ID 2x2, OOD 3x3 (the built-in study's task)"
    default_max_attempts: ClassVar[int] = 5
    noun: ClassVar[str] = "determinant"
    word: ClassVar[str] = "det"
    exact = staticmethod(linalg.det)
    shapes: ClassVar[dict[str, tuple[int, int]]] = {"id": (2, 4), "ood": (3, 5)}

    def draw(self, rng: random.Random, split: str) -> dict[str, Any]:
        size, bound = self.shapes[split]
        matrix, symmetric = det_matrix(rng, size, bound)
        return {"matrix": matrix, "symmetric": symmetric}
