"""GeneralPoints: hands per split, determinism, verdicts and rewards, both profiles, hostile answers."""

import json
import re
from collections import Counter

import pytest

from rlheal.tasks import get_task
from rlheal.tasks.base import CORRECT, ILLEGAL, UNPARSEABLE, WRONG_NUMBERS, WRONG_VALUE, Problem
from rlheal.tasks.gp24 import RANKS
from rlheal.tasks.solver24 import solvable

RANK_VALUE = {"A": 1, "J": 11, "Q": 12, "K": 13} | {str(n): n for n in range(2, 11)}


@pytest.fixture(scope="module")
def task():
    return get_task("gp24")


@pytest.mark.parametrize("split", ["id", "ood"])
def test_hands_follow_the_split_rule_and_are_solvable(task, split):
    problems = task.problems(split, seed=1, n=400)
    for p in problems:
        ranks = [card[:-1] for card in p.data["cards"]]
        assert all(card[-1] in "hdcs" for card in p.data["cards"])
        expected = [min(RANK_VALUE[r], 10) if split == "id" else RANK_VALUE[r] for r in ranks]
        assert p.data["values"] == expected
        assert solvable(p.data["values"]) and p.data["target"] == 24
        if split == "ood":
            assert any(r in "JQK" for r in ranks)
        else:
            assert max(p.data["values"]) <= 10
    ranks = Counter(card[:-1] for p in problems for card in p.data["cards"])
    assert set(ranks) == set(RANK_VALUE)  # every rank shows up
    if split == "ood":
        assert sum(ranks[r] for r in "JQK") > 400 + 3 * 400 * 3 / 13 * 0.8  # one forced face card + uniform ones


def test_problems_are_pure_functions_of_their_arguments(task):
    assert task.problem("ood", 0, 3) == get_task("gp24").problem("ood", 0, 3)
    assert task.problems("id", 5, 3, start=7) == [task.problem("id", 5, i) for i in (7, 8, 9)]
    hands = [tuple(p.data["cards"]) for p in task.problems("id", 0, 50)]
    assert len(set(hands)) >= 48
    assert task.problem("id", 0, 0) != task.problem("id", 1, 0)
    json.dumps(task.problem("ood", 0, 0).data)  # JSON-serialisable


def test_target_option():
    task = get_task("gp24", target=10)
    p = task.problem("id", 0, 0)
    assert p.data["target"] == 10 and "make 10" in task.prompt(p)
    assert task.verify(p, task.answer(p)).correct
    with pytest.raises(ValueError, match="target"):
        get_task("gp24", target=-1)
    with pytest.raises(ValueError, match="no id problem of gp24 in the train pool .*target 1000000"):
        get_task("gp24", target=10**6).problem("id", 0, 0)


def test_id_max_rank_option_draws_id_hands_from_fewer_ranks():
    low = get_task("gp24", id_max_rank=9)
    hands = low.problems("id", 0, 200)
    assert all(max(p.data["values"]) <= 9 and solvable(p.data["values"], 24) for p in hands)
    assert {card[:-1] for p in hands for card in p.data["cards"]} == set(RANKS[:9])
    assert all(low.verify(p, low.answer(p)).correct for p in hands[:20])
    default = get_task("gp24")
    assert get_task("gp24", id_max_rank=13).problems("id", 0, 30) == default.problems("id", 0, 30)
    assert low.problems("ood", 0, 30) == default.problems("ood", 0, 30)  # the option is about ID hands only
    for bad in (0, 14, True, "9", 9.0):
        with pytest.raises(ValueError, match="id_max_rank must be a card rank 1..13"):
            get_task("gp24", id_max_rank=bad)
    with pytest.raises(ValueError, match="no id problem of gp24 .* up to rank 2"):
        get_task("gp24", id_max_rank=2).problem("id", 0, 0)


def test_prompts_state_the_rule(task):
    assert "J,Q,K=10" in task.prompt(task.problem("id", 0, 0))
    assert "J,Q,K=11,12,13" in task.prompt(task.problem("ood", 0, 0))
    paper = get_task("gp24", "paper")
    assert "'11', '12' and '13'" in paper.prompt(paper.problem("ood", 0, 0))
    assert "count as '10'" in paper.prompt(paper.problem("id", 0, 0))


def _hand(ranks, split="id"):
    """A problem with these card ranks (built directly: the verifier reads only the data)."""
    values = [min(RANK_VALUE[r], 10) if split == "id" else RANK_VALUE[r] for r in ranks]
    return Problem("gp24", split, 0, 0, {"cards": [r + "s" for r in ranks], "values": values, "target": 24})


@pytest.mark.parametrize(
    ("answer", "kind", "reward", "feedback"),
    [
        ("formula: 8/(3-8/3)", CORRECT, 5, "equals 24"),
        ("formula: 8/(3-8/3) = 24", CORRECT, 5, "equals 24"),
        ("Formula : 8 ÷ (3 − 8 ÷ 3)", CORRECT, 5, "equals 24"),
        ("formula: 8/(3-8/3) = 23", CORRECT, 5, "it claims 23"),
        ("formula: 8+8+3+3", WRONG_VALUE, -1, "equals 22, not 24"),
        ("formula: 8/3+8/3", WRONG_VALUE, -1, "equals 16/3, not 24"),
        ("formula: 8/3+8/8", WRONG_NUMBERS, -2, "uses 8, 3, 8, 8"),
        ("formula: 8*3", WRONG_NUMBERS, -2, "the cards are"),
        ("formula: 8*3*1*1", WRONG_NUMBERS, -2, "uses 8, 3, 1, 1"),
        ("formula: 8/(3-3)+8", ILLEGAL, -3, "division by zero"),
        ("formula: 2^3*3*8", ILLEGAL, -3, "not an allowed operator"),
        ("formula: ８/(3-8/3)", ILLEGAL, -3, "non-ASCII digit"),
        ("formula:", ILLEGAL, -3, "empty"),
        ("the answer is 8/(3-8/3)", UNPARSEABLE, -3, "no formula found after 'formula:'"),
        ("", UNPARSEABLE, -3, "empty"),
    ],
)
def test_verdicts_and_rewards(task, answer, kind, reward, feedback):
    p = _hand(["3", "3", "8", "8"])
    v = task.verify(p, answer)
    assert (v.kind, v.reward, v.correct) == (kind, reward, kind == CORRECT)
    assert feedback in v.feedback and "\n" not in v.feedback
    assert v.format_ok == (kind != UNPARSEABLE)


def test_ood_values_are_judged_under_the_ood_rule(task):
    p = _hand(["A", "J", "Q", "K"], "ood")
    assert task.verify(p, "formula: 12*(13-11)*1").correct
    assert task.verify(p, "formula: 10*(10-10)+1").kind == WRONG_NUMBERS  # the ID rule's values


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ('{"cards": ["3", "3", "8", "8"], "number": [3, 3, 8, 8], "formula": "8/(3-8/3)"}', CORRECT),
        ('Sure!\n```json\n{"cards": ["3","3","8","8"], "formula": "8/(3-8/3)=24"}\n```\nDone.', CORRECT),
        ("{'cards': ['3', '3', '8', '8'], 'formula': '8/(3-8/3)'}", CORRECT),
        ('I think {x} then {"formula": "8/(3-8/3)"}', CORRECT),
        ('{"note": "a } inside a string", "formula": "8/(3-8/3)"}', CORRECT),
        ('{"formula": "8+8+3+3"}', WRONG_VALUE),
        ('{"formula": 24}', ILLEGAL),
        ('{"cards": ["3", "3", "8", "8"]}', UNPARSEABLE),
        ("formula: 8/(3-8/3)", UNPARSEABLE),
        ('{"formula": "8/(3-8/3)"', UNPARSEABLE),
    ],
)
def test_paper_profile_reads_the_first_json_object_with_a_formula(answer, kind):
    task = get_task("gp24", "paper")
    assert task.verify(_hand(["3", "3", "8", "8"]), answer).kind == kind


HOSTILE = [
    "(" * 100_000 + "3" + ")" * 100_000,
    "9" * 1_000_000,
    "1/0",
    "__import__('os').system('echo hi')",
    "２４",
    "",
    "{" * 100_000,
    '{"formula": "' + "(" * 5000 + '"}',
    "[" * 10_000,
    "formula: " + "1*" * 5000 + "1",
    "formula: " + "*".join(["999999"] * 80),
    "\x00\ud800\uffff",
]


@pytest.mark.parametrize("profile", ["compact", "paper"])
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_get_a_verdict_with_a_reason(profile, text):
    task = get_task("gp24", profile)
    for prefix in ("", "formula: ", '{"formula": "'):
        v = task.verify(task.problem("ood", 0, 0), prefix + text)
        assert v.kind in (UNPARSEABLE, ILLEGAL, WRONG_NUMBERS) and not v.correct
        assert v.feedback and "\n" not in v.feedback and len(v.feedback) < 300


@pytest.mark.parametrize("split", ["id", "ood"])
def test_compact_answer_states_the_card_values_then_a_formula(split):
    """Like the paper's "number" field: the values under the split's rule (K is 10 in ID, 13 in OOD)."""
    task = get_task("gp24")
    face = {"J": 11, "Q": 12, "K": 13}
    for p in task.problems(split, 3, 20):
        numbers, formula = re.fullmatch(r"numbers: ([0-9 ]+) \| formula: (\S+)", task.answer(p)).groups()
        ranks = [card[:-1] for card in p.data["cards"]]
        expected = [1 if r == "A" else (10 if split == "id" else face[r]) if r in face else int(r) for r in ranks]
        assert [int(n) for n in numbers.split()] == expected
        assert task.verify(p, f"formula: {formula}").correct


LOW_FACE_VALUE = {"J": 1, "Q": 2, "K": 3}


def test_gp24_low_ood_hands_count_faces_as_1_2_3_and_stay_in_the_id_value_range():
    low = get_task("gp24-low")
    for p in low.problems("ood", seed=2, n=300):
        ranks = [card[:-1] for card in p.data["cards"]]
        assert p.data["values"] == [LOW_FACE_VALUE.get(r, RANK_VALUE[r]) for r in ranks]
        assert any(r in "JQK" for r in ranks) and max(p.data["values"]) <= 10
        assert solvable(p.data["values"])
        assert "J,Q,K=1,2,3" in low.prompt(p)
        assert low.verify(p, low.answer(p)).correct
    for p in low.problems("id", seed=2, n=100):  # the ID split is gp24's rule
        assert p.data["values"] == [min(RANK_VALUE[c[:-1]], 10) for c in p.data["cards"]]
        assert "J,Q,K=10" in low.prompt(p)
    paper = get_task("gp24-low", "paper")
    assert "count as '1', '2' and '3' respectively" in paper.prompt(paper.problem("ood", 0, 0))


def test_gp24_low_judges_a_face_card_read_under_the_id_rule_as_wrong_numbers():
    low = get_task("gp24-low")
    p = Problem("gp24-low", "ood", 0, 0, {"cards": ["Kh", "6d", "Jc", "2h"], "values": [3, 6, 1, 2], "target": 24})
    assert low.verify(p, "formula: 3*(2+6*1)").correct
    assert low.verify(p, "formula: 10+10+6-2").kind == WRONG_NUMBERS  # K and J read as 10 (the ID rule)


def test_gp24_low_blind_judges_like_gp24_low_but_never_states_the_card_values():
    low, blind = get_task("gp24-low"), get_task("gp24-low-blind")
    data = {"cards": ["Kh", "6d", "Jc", "2h"], "values": [3, 6, 1, 2], "target": 24}
    answers = ["formula: 3*(2+6*1)", "formula: 10+10+6-2", "formula: 3+6+1+2", "formula: 3*(2+6", "nonsense"]
    for text in answers:
        a = low.verify(Problem("gp24-low", "ood", 0, 0, data), text)
        b = blind.verify(Problem("gp24-low-blind", "ood", 0, 0, data), text)
        assert (a.correct, a.reward, a.kind, a.format_ok) == (b.correct, b.reward, b.kind, b.format_ok)
        assert b.feedback == a.feedback or a.kind == WRONG_NUMBERS
    wrong = blind.verify(Problem("gp24-low-blind", "ood", 0, 0, data), "formula: 10+10+6-2")
    assert wrong.kind == WRONG_NUMBERS and "3, 6, 1, 2" not in wrong.feedback and "10, 10, 6, 2" in wrong.feedback
    assert "3, 6, 1, 2" in low.verify(Problem("gp24-low", "ood", 0, 0, data), "formula: 10+10+6-2").feedback
    p = blind.problem("ood", 0, 0)
    assert "J,Q,K=1,2,3" in blind.prompt(p) and blind.verify(p, blind.answer(p)).correct
