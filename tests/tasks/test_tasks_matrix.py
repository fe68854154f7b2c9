"""Rank and determinant: exact ground truth against numpy, the split shapes and ranges, answers, verdicts."""

import random
from collections import Counter

import numpy as np
import pytest

from rlheal.tasks import get_task
from rlheal.tasks.base import CORRECT, ILLEGAL, UNPARSEABLE, WRONG_VALUE
from rlheal.tasks.linalg import det, rank


def _random_matrix(rng, rows, cols, bound):
    matrix = [[rng.randint(-bound, bound) for _ in range(cols)] for _ in range(rows)]
    if rows > 2 and rng.random() < 0.5:  # make some rank-deficient ones
        matrix[-1] = [a - b for a, b in zip(matrix[0], matrix[1], strict=True)]
    return matrix


def test_bareiss_matches_numpy_on_small_integer_matrices():
    rng = random.Random(0)
    for _ in range(2000):
        rows, cols = rng.randint(1, 6), rng.randint(1, 6)
        matrix = _random_matrix(rng, rows, cols, rng.randint(1, 6))
        assert rank(matrix) == np.linalg.matrix_rank(np.array(matrix, dtype=float))
        square = [row[: min(rows, cols)] for row in matrix[: min(rows, cols)]]
        assert det(square) == round(np.linalg.det(np.array(square, dtype=float)))


def test_hand_checked_cases():
    assert det([[1, 2], [3, 4]]) == -2
    assert det([[0, 1], [1, 0]]) == -1
    assert det([[2, 0, 0], [0, 3, 0], [0, 0, 4]]) == 24
    assert rank([[0, 0], [0, 0]]) == 0
    assert rank([[1, 2, 3], [2, 4, 6]]) == 1
    with pytest.raises(ValueError, match="square"):
        det([[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(("split", "shape", "bound"), [("id", (4, 5), 4), ("ood", (5, 4), 5)])
def test_rank_problems_have_the_split_shape_and_every_rank(split, shape, bound):
    task = get_task("rank")
    ranks = {}
    for pool in ("train", "eval"):
        ranks[pool] = Counter()
        for p in task.problems(split, seed=0, n=400, pool=pool):
            matrix = np.array(p.data["matrix"])
            assert matrix.shape == shape and np.abs(matrix).max() <= bound
            assert task.truth(p) == np.linalg.matrix_rank(matrix.astype(float))
            ranks[pool][task.truth(p)] += 1
    # the rank is drawn uniformly, then the matrix's pool decides: the one all-zero matrix of each shape is held
    # out, so rank 0 is never trained on; every other rank is in both pools in about equal shares
    assert set(ranks["train"]) == {1, 2, 3, 4} and set(ranks["eval"]) == {0, 1, 2, 3, 4}
    assert all(70 <= ranks["train"][r] <= 130 for r in range(1, 5))  # 100 expected each


@pytest.mark.parametrize(("split", "size", "bound"), [("id", 2, 4), ("ood", 3, 5)])
def test_det_problems_have_the_split_shape_and_are_non_singular(split, size, bound):
    task = get_task("det")
    problems = task.problems(split, seed=0, n=500)
    for p in problems:
        matrix = np.array(p.data["matrix"])
        assert matrix.shape == (size, size) and np.abs(matrix).max() <= bound
        assert task.truth(p) != 0 and task.truth(p) == round(np.linalg.det(matrix.astype(float)))
        if p.data["symmetric"]:
            assert (matrix == matrix.T).all()
    symmetric = sum(p.data["symmetric"] for p in problems)
    assert 200 <= symmetric <= 300


@pytest.mark.parametrize(
    ("profile", "text", "kind"),
    [
        ("compact", "answer: -2", CORRECT),
        ("compact", "Answer:  -2 \nbecause", CORRECT),
        ("compact", "answer: +3", WRONG_VALUE),
        ("compact", "answer: two", ILLEGAL),
        ("compact", "answer: -2.0", ILLEGAL),
        ("compact", "answer: －２", ILLEGAL),
        ("compact", "answer: " + "9" * 100, ILLEGAL),
        ("compact", "answer:", ILLEGAL),
        ("compact", "-2", UNPARSEABLE),
        ("paper", '{"answer": -2}', CORRECT),
        ("paper", '```json\n{"answer": "-2"}\n```', CORRECT),
        ("paper", '{"answer": 5}', WRONG_VALUE),
        ("paper", '{"answer": -2.5}', ILLEGAL),
        ("paper", '{"answer": true}', ILLEGAL),
        ("paper", '{"answer": [-2]}', ILLEGAL),
        ("paper", '{"result": -2}', UNPARSEABLE),
        ("paper", "answer: -2", UNPARSEABLE),
    ],
)
def test_integer_answers_are_read_per_profile(profile, text, kind):
    task = get_task("det", profile)
    problem = next(p for p in task.problems("id", 0, 200) if task.truth(p) == -2)
    verdict = task.verify(problem, text)
    assert verdict.kind == kind and verdict.correct == (kind == CORRECT)
    assert verdict.reward == {CORRECT: 5, WRONG_VALUE: -1, ILLEGAL: -3, UNPARSEABLE: -3}[kind]
    assert verdict.feedback and "\n" not in verdict.feedback


def test_wrong_answers_do_not_reveal_the_truth():
    task = get_task("rank")
    problem = task.problem("ood", 0, 0)
    wrong = (task.truth(problem) + 1) % 5
    verdict = task.verify(problem, f"answer: {wrong}")
    assert verdict.feedback == f"{wrong} is not the rank of this matrix"
