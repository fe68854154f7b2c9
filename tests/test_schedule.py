import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlheal.train.schedule import ScheduleError, every_schedule, log_schedule, resolve_schedule


def test_log_schedule_hand_computed():
    # 100 ** ((i+1)/10) rounded: 1.58, 2.51, 3.98, 6.31, 10, 15.8, 25.1, 39.8, 63.1, 100
    assert log_schedule(100, 10) == [0, 2, 3, 4, 6, 10, 16, 25, 40, 63, 100]


def test_log_schedule_collisions_take_the_next_free_step():
    assert log_schedule(10, 10) == list(range(11))
    assert log_schedule(5, 10) == [0, 1, 2, 3, 4, 5]
    assert log_schedule(0, 3) == [0]


@given(st.integers(1, 100_000), st.integers(1, 60))
def test_log_schedule_properties(total, n):
    steps = log_schedule(total, n)
    assert steps[0] == 0 and steps[-1] == total
    assert len(steps) == min(n, total) + 1
    assert steps == sorted(set(steps))
    if n < total and n >= 4:  # dense early: the first half of the checkpoints sits in the first sqrt(total)
        assert steps[n // 2] <= math.ceil(math.sqrt(total)) + n


def test_every_and_lists():
    assert every_schedule(10, 4) == [0, 4, 8, 10]
    assert resolve_schedule("every:5", 10) == [0, 5, 10]
    assert resolve_schedule("log:3", 1000) == [0, 10, 100, 1000]
    assert resolve_schedule([20, 0, 5, 5], 20) == [0, 5, 20]


@pytest.mark.parametrize("spec", ["lin:3", "log", "log:x", "every:0", [0, 21], [-1], []])
def test_bad_specs_are_refused_with_a_reason(spec):
    with pytest.raises(ScheduleError):
        resolve_schedule(spec, 20)
