"""The 24 solvers against known counts, hand-checked hands, each other, and the safe formula reader."""

from collections import Counter
from itertools import combinations_with_replacement

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.tasks.arith import parse_formula
from rlheal.tasks.solver24 import solvability_table, solvable, solve

hands = st.lists(st.integers(1, 13), min_size=4, max_size=4)


def test_known_count_of_solvable_hands():
    table = solvability_table()
    assert len(table) == 1820
    assert sum(table.values()) == 1362  # the classic count for values 1..13


def test_known_count_for_values_one_to_ten():
    table = solvability_table(1, 10)
    assert (len(table), sum(table.values())) == (715, 566)  # the classic count for values 1..10


@pytest.mark.parametrize(
    ("hand", "only"),
    [((3, 3, 8, 8), "8/(3-8/3)"), ((1, 5, 5, 5), "5*(5-1/5)"), ((3, 3, 7, 7), "7*(3+3/7)")],
)
def test_hands_with_a_single_fractional_solution(hand, only):
    solutions = solve(hand)
    assert len(solutions) == 1
    assert parse_formula(solutions[0]).value == parse_formula(only).value == 24


@pytest.mark.parametrize("hand", [(1, 1, 1, 1), (1, 1, 1, 2), (1, 1, 2, 2), (13, 13, 13, 13), (1, 1, 5, 9)])
def test_known_unsolvable_hands(hand):
    assert not solvable(hand)
    assert solve(hand) == []


def test_distinct_means_up_to_commutativity_and_associativity():
    # Hand-checked: 24 from 1,2,3,4 is 4*6 (6 = 1+2+3, 1*2*3 or 2*3/1) or (1+3)*(2+4); reorderings and
    # regroupings such as (2+1+3)*4, 2*(3*4)*1 or 4*3*(2/1) are the same solution.
    assert set(solve([1, 2, 3, 4])) == {"4*3*2*1", "4*3*2/1", "4*(3+2+1)", "(3+1)*(4+2)"}


def test_other_targets():
    assert solvable([1, 1, 1, 1], target=4)
    assert solvable([1, 1, 1, 1], target=0)
    assert not solvable([1, 1, 1, 1], target=5)
    assert solve([2, 2, 2, 2], target=0) != []
    assert all(parse_formula(s).value == 10 for s in solve([1, 2, 3, 4], target=10))


@settings(max_examples=40, deadline=None)
@given(hands)
def test_every_solution_uses_the_hand_and_makes_24(hand):
    solutions = solve(hand)
    assert bool(solutions) == solvable(hand)  # two independent algorithms agree
    for formula in solutions:
        parsed = parse_formula(formula)
        assert parsed.value == 24
        assert Counter(parsed.numbers) == Counter(hand)


@settings(max_examples=40, deadline=None)
@given(hands, st.integers(0, 60))
def test_solvers_agree_for_any_target(hand, target):
    solutions = solve(hand, target)
    assert bool(solutions) == solvable(hand, target)
    assert all(parse_formula(s).value == target for s in solutions)


def test_solvable_does_not_depend_on_order():
    for hand in combinations_with_replacement(range(1, 14), 4):
        if hand[0] in (3, 8):
            assert solvable(hand) == solvable(tuple(reversed(hand)))
