import json
import re
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.models.world import WorldSpec, card_line, check_det_working, det_working, generate_corpus
from rlheal.tasks import Problem, get_task
from rlheal.tasks.arith import parse_formula

SMALL = WorldSpec(n_arith=30, n_values=30, n_solve=25, n_revise=25, n_matrix=20)
FACE = {"J": 11, "Q": 12, "K": 13, "A": 1}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SMALL, seed=3)


def rule_values(cards: list[str], rule: str) -> list[int]:
    """Independent reading of a rule sentence `J,Q,K=a,b,c` or `J,Q,K=a` (A is always 1 here)."""
    faces = [int(x) for x in rule.split("=")[1].split(",")]
    faces = faces * 3 if len(faces) == 1 else faces
    out = []
    for card in cards:
        rank = card[:-1]
        out.append(faces["JQK".index(rank)] if rank in "JQK" else FACE.get(rank) or int(rank))
    return out


def parse_card_prompt(text: str) -> tuple[list[str], str, str]:
    match = re.fullmatch(r"cards: (.+) \| (J,Q,K=[0-9,]+) \| (make 24|values)", text)
    assert match, text
    return match.group(1).split(), match.group(2), match.group(3)


def worked_formula(text: str, values: list[int]) -> str:
    formula, value = text.rsplit(" = ", 1)
    parsed = parse_formula(formula)
    assert parsed.value == Fraction(value)  # the stated value is the exact value
    return formula


HAND = re.compile(r"(?:|values |numbers: |card values: |\[)([0-9 ]+?)(?: ->|, so| \| solution:|;|\]) (.+) = (\S+)")


def worked_hand(text: str) -> tuple[list[int], str]:
    """(values stated, formula) of a hand answer such as `13 5 2 1 -> (13-5)*(2+1) = 24`."""
    match = HAND.fullmatch(text)
    assert match, text
    formula = match.group(2)
    assert parse_formula(formula).value == Fraction(match.group(3))  # the stated value is the exact value
    return [int(v) for v in match.group(1).split()], formula


def test_same_seed_same_corpus_other_seed_other_corpus():
    spec = WorldSpec.tiny()
    assert generate_corpus(spec, 0) == generate_corpus(spec, 0)
    assert generate_corpus(spec, 0) != generate_corpus(spec, 1)
    assert len(generate_corpus(spec, 0)) == 22


def test_kinds_are_counted_as_specified(corpus):
    kinds = Counter()
    for doc in corpus:
        first = doc[0]["content"]
        if first.startswith("compute"):
            kinds["arith"] += 1
        elif first.endswith("values"):
            kinds["values"] += 1
        elif first.startswith("cards"):
            kinds["revise" if len(doc) > 2 else "solve"] += 1
        else:
            kinds["matrix"] += 1
    # a revise doc whose wrong attempt happens to be right degrades to one turn; allow that
    assert kinds["arith"] == 30 and kinds["values"] == 30 and kinds["matrix"] == 20
    assert kinds["solve"] + kinds["revise"] == 50 and kinds["revise"] >= 18


def test_the_sft_answer_format_never_appears(corpus):
    tasks = {name: get_task(name) for name in ("gp24", "rank", "det")}
    probes = {name: task.problem("id", 0, 0) for name, task in tasks.items()}
    for doc in corpus:
        for message in doc:
            text = message["content"]
            assert not re.search(r"(formula|answer)\s*:", text, flags=re.IGNORECASE), text
            if message["role"] == "assistant":
                for name, task in tasks.items():
                    assert not task.verify(probes[name], text).format_ok, (name, text)


def test_card_lines_are_the_compact_task_prompts():
    task = get_task("gp24")
    for split, rule in (("id", "J,Q,K=10"), ("ood", "J,Q,K=11,12,13")):
        for i in range(5):
            p = task.problem(split, 7, i)
            assert card_line(p.data["cards"], rule, "make 24") == task.prompt(p)


def test_card_documents_follow_their_rule(corpus):
    rules, layouts = Counter(), Counter()
    for doc in corpus:
        if not doc[0]["content"].startswith("cards"):
            continue
        cards, rule, ask = parse_card_prompt(doc[0]["content"])
        rules[rule] += 1
        values = rule_values(cards, rule)
        if ask == "values":
            assert doc[1]["content"] == " ".join(map(str, values))
            continue
        stated, final = worked_hand(doc[-1]["content"])
        assert stated == values  # the values are read first, under the stated rule
        layouts[doc[-1]["content"][:3]] += 1
        assert parse_formula(final).value == 24
        assert Counter(parse_formula(final).numbers) == Counter(values)
    assert {"J,Q,K=10", "J,Q,K=11,12,13"} <= set(rules) and len(rules) >= 4
    assert {"val", "num", "car", "[", } <= {k.rstrip("0123456789 ") or k for k in layouts}  # several layouts


def test_revisions_are_wrong_then_right_with_the_verifiers_feedback(corpus):
    task = get_task("gp24")
    revisions = [doc for doc in corpus if len(doc) > 2]
    assert revisions
    for doc in revisions:
        cards, rule, _ = parse_card_prompt(doc[0]["content"])
        problem = Problem("gp24", "id", 0, 0, {"cards": cards, "values": rule_values(cards, rule), "target": 24})
        assert [m["role"] for m in doc] == ["user", "assistant"] * (len(doc) // 2)
        for attempt, feedback in zip(doc[1:-1:2], doc[2:-1:2], strict=True):
            formula = worked_hand(attempt["content"])[1]
            verdict = task.verify(problem, f"formula: {formula}")
            assert not verdict.correct
            assert feedback["content"] == task.feedback_turn(verdict)
        assert task.verify(problem, "formula: " + worked_hand(doc[-1]["content"])[1]).correct


def test_matrix_facts_are_exact(corpus):
    docs = [doc for doc in corpus if doc[0]["content"].startswith(("rank", "det"))]
    assert docs
    for doc in docs:
        word, matrix = re.fullmatch(r"(rank|det) of (\[.*\])\?", doc[0]["content"]).groups()
        m = np.array(json.loads(matrix), dtype=float)
        expected = np.linalg.matrix_rank(m) if word == "rank" else round(np.linalg.det(m))
        assert doc[1]["content"] == f"{word} = {expected}"


def test_arithmetic_is_exact(corpus):
    for doc in corpus:
        if doc[0]["content"].startswith("compute"):
            formula = doc[0]["content"].removeprefix("compute ")
            assert doc[1]["content"].startswith(formula + " = ")
            worked_formula(doc[1]["content"], [])


WORKED_MINOR = re.compile(r"(-?\d+)\*(-?\d+)-(-?\d+)\*(-?\d+) = (-?\d+)([+-]\d+) = (-?\d+)")


def checked_minor(text: str) -> int:
    """The value of a worked 2x2 minor `a*b-c*d = p+q = v`, after checking every step's arithmetic."""
    match = WORKED_MINOR.fullmatch(text)
    assert match, text
    a, b, c, d, p, q, v = map(int, match.groups())
    assert (p, q, v) == (a * b, -c * d, a * b - c * d)
    return v


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 3).flatmap(lambda n: st.lists(st.lists(st.integers(-5, 5), min_size=n, max_size=n),
                                                    min_size=n, max_size=n)))
def test_det_working_states_true_steps_and_numpy_determinant(matrix):
    work, answer = det_working(matrix).split("\n")
    value = int(answer.removeprefix("answer: "))
    assert value == round(np.linalg.det(np.array(matrix, dtype=float)))
    if len(matrix) == 2:
        assert checked_minor(work) == value
        return
    *minors, cofactors = work.split("; ")
    (a, b, c), (d, e, f), (g, h, i) = matrix
    assert [checked_minor(m) for m in minors] == [e * i - f * h, d * i - f * g, d * h - e * g]
    match = re.fullmatch(r"(-?\d+)\*(-?\d+)-(-?\d+)\*(-?\d+)\+(-?\d+)\*(-?\d+) = (-?\d+)([+-]\d+)([+-]\d+) = (-?\d+)",
                         cofactors)
    assert match, cofactors
    x = list(map(int, match.groups()))
    assert x[:6:2] == [a, b, c] and x[6] == x[0] * x[1] and x[7] == -x[2] * x[3] and x[8] == x[4] * x[5]
    assert x[9] == sum(x[6:9]) == value


def test_det_working_refuses_other_shapes():
    with pytest.raises(ValueError, match="2x2 or 3x3"):
        det_working([[1, 2, 3, 4]] * 4)


def test_det_work_documents_are_det_prompts_of_both_sizes_with_their_working():
    spec = WorldSpec(n_arith=0, n_values=0, n_solve=0, n_revise=0, n_matrix=0, n_det_work=60)
    corpus = generate_corpus(spec, seed=5)
    det = get_task("det")
    sizes = Counter()
    for prompt, reply in corpus:
        matrix = json.loads(prompt["content"].removeprefix("det of ").removesuffix("?"))
        assert prompt["content"] == det.prompt(Problem("det", "id", 0, 0, {"matrix": matrix, "symmetric": False}))
        assert reply["content"] == det_working(matrix) and np.linalg.det(np.array(matrix, dtype=float)) != 0
        sizes[len(matrix)] += 1
    assert len(corpus) == 60 and sizes[2] >= 8 and sizes[3] >= 25


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 5), min_size=3, max_size=3), min_size=3, max_size=3),
       st.integers(0, 2), st.integers(6, 9))
def test_check_det_working_passes_true_workings_and_finds_a_miscopied_entry(matrix, minor, wrong):
    assert check_det_working(det_working(matrix), matrix) == {"entries_ok": 3, "minors_ok": 3, "sum_ok": 1,
                                                              "right": 1}
    # the same working with the first entry of one minor miscopied as `wrong` (outside the matrix's -5..5)
    lines = det_working(matrix).split("; ")
    lines[minor] = f"{wrong}*" + lines[minor].split("*", 1)[1]
    # the stated minor values are left as they were: only the copying step is wrong
    assert check_det_working("; ".join(lines), matrix) == {"entries_ok": 2, "minors_ok": 3, "sum_ok": 1,
                                                           "right": 1}


def test_check_det_working_on_a_model_answer_counted_by_hand():
    # seed 2's RL checkpoint on an OOD problem (docs/RESULTS.md §22): minors 1 and 3 miscopy an entry
    matrix = [[5, -1, 2], [-1, 1, 1], [2, 1, -5]]
    text = "7*-5-1*1 = -25+1 = -20; -1*-5-1*2 = 5-2 = 3; -1*1-0*2 = -1+0 = -1; 5*-20--1*3+2*-1 = 100+3+2 = 157\nanswer: 157"
    assert check_det_working(text, matrix) == {"entries_ok": 1, "minors_ok": 1, "sum_ok": 0, "right": 0}
    assert check_det_working("answer: -33", matrix) is None  # a direct answer has no working to check
    hostile = "; ".join(["9" * 5000 + "*1-1*1 = 0 = 1"] * 3) + "\nanswer: " + "9" * 5000
    assert check_det_working(hostile, matrix) is None  # numbers too long to be entries: no crash, no reading
    with pytest.raises(ValueError, match="3x3"):
        check_det_working(text, [[1, 2], [3, 4]])
