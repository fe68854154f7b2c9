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
from rlheal.tasks.holdout import hand_key, matrix_key, pool_of

SMALL = WorldSpec(n_arith=30, n_values=30, n_solve=25, n_revise=25, n_matrix=20)
FACE = {"J": 11, "Q": 12, "K": 13, "A": 1}


@pytest.fixture(scope="module")
def documents():
    return generate_corpus(SMALL, seed=3)


@pytest.fixture(scope="module")
def corpus(documents):
    return [d.messages for d in documents]


def rule_faces(rule: str) -> list[int]:
    """Independent reading of a rule sentence: `J,Q,K=a,b,c`, `J,Q,K=a` or `J=a,Q=b,K=c`."""
    if rule.startswith("J,Q,K="):
        faces = [int(x) for x in rule.split("=")[1].split(",")]
        return faces * 3 if len(faces) == 1 else faces
    named = dict(part.split("=") for part in rule.split(","))
    return [int(named[face]) for face in "JQK"]


def rule_values(cards: list[str], rule: str) -> list[int]:
    """The cards' values under the rule (A is always 1, 2..10 their number)."""
    faces = rule_faces(rule)
    out = []
    for card in cards:
        rank = card[:-1]
        out.append(faces["JQK".index(rank)] if rank in "JQK" else FACE.get(rank) or int(rank))
    return out


def parse_card_prompt(text: str) -> tuple[list[str], str, str]:
    match = re.fullmatch(r"cards: (.+) \| (J,Q,K=[0-9,]+|J=[0-9]+,Q=[0-9]+,K=[0-9]+) \| (make 24|values)", text)
    assert match, text
    return match.group(1).split(), match.group(2), match.group(3)


def worked_formula(text: str, values: list[int]) -> str:
    formula, value = text.rsplit(" = ", 1)
    parsed = parse_formula(formula)
    assert parsed.value == Fraction(value)  # the stated value is the exact value
    return formula


HAND = re.compile(r"(?:|values |card values: |\[)([0-9 ]+?)(?: ->|, so|;|\]) formula: (.+) = (\S+)")


def worked_hand(text: str) -> tuple[list[int], str]:
    """(values stated, formula) of a hand answer such as `13 5 2 1 -> formula: (13-5)*(2+1) = 24`."""
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


def test_kinds_are_counted_as_specified(documents):
    assert Counter(d.kind for d in documents) == {"arith": 30, "values": 30, "solve": 25, "revise": 25, "matrix": 20}
    for d in documents:
        first = d.messages[0]["content"]
        expected = {"arith": "compute", "values": "cards", "solve": "cards", "revise": "cards"}.get(d.kind)
        assert first.startswith(expected or ("rank", "det"))
        # a revise doc whose wrong attempt happens to be right degrades to one turn
        assert (len(d.messages) > 2) <= (d.kind == "revise")


def test_every_hand_and_matrix_is_a_training_problem(documents):
    for d in documents:
        if d.task == "gp24":
            assert pool_of(hand_key(d.problem["values"], 24)) == "train"
            assert rule_values(d.problem["cards"], d.problem["rule"]) == d.problem["values"]
        elif d.task in ("rank", "det"):
            assert pool_of(matrix_key(d.problem["matrix"])) == "train"
        elif len(d.problem["numbers"]) == 4:
            assert pool_of(hand_key(d.problem["numbers"], 24)) == "train"


def test_answers_hold_the_verifiers_key_never_the_sft_layout(documents):
    gp24 = get_task("gp24")
    for d in documents:
        for message in d.messages:
            assert not re.search(r"numbers: [0-9 ]+ \| formula:", message["content"])  # never the SFT layout
        if d.kind in ("solve", "revise"):
            problem = Problem("gp24", "id", 0, 0, d.problem)
            final = d.messages[-1]["content"]
            assert gp24.verify(problem, final).correct, final  # the base's own layout is scored as right


def test_card_lines_are_the_compact_task_prompts():
    task = get_task("gp24")
    for split, rule in (("id", "J,Q,K=10"), ("ood", "J,Q,K=11,12,13")):
        for i in range(5):
            p = task.problem(split, 7, i)
            assert card_line(p.data["cards"], rule, "make 24") == task.prompt(p)


def test_rules_are_many_and_stated_in_two_forms():
    documents = generate_corpus(WorldSpec(n_arith=0, n_values=300, n_solve=0, n_revise=0, n_matrix=0), seed=1)
    rules = Counter(parse_card_prompt(d.messages[0]["content"])[1] for d in documents)
    assert rules["J,Q,K=10"] > 50 and rules["J,Q,K=11,12,13"] > 50  # the ID and OOD rules, as the task states them
    assert len(rules) > 80  # and many others, read from the sentence
    assert any(r.startswith("J=") for r in rules) and any(r.startswith("J,Q,K=") and r.count(",") == 4 for r in rules)


def test_card_documents_follow_their_rule(corpus):
    layouts = Counter()
    for doc in corpus:
        if not doc[0]["content"].startswith("cards"):
            continue
        cards, rule, ask = parse_card_prompt(doc[0]["content"])
        values = rule_values(cards, rule)
        if ask == "values":
            assert doc[1]["content"] == " ".join(map(str, values))
            continue
        stated, final = worked_hand(doc[-1]["content"])
        assert stated == values  # the values are read first, under the stated rule
        layouts[doc[-1]["content"][:3]] += 1
        assert parse_formula(final).value == 24
        assert Counter(parse_formula(final).numbers) == Counter(values)
    assert {"val", "car", "["} <= {k.rstrip("0123456789 ") or k for k in layouts}  # several layouts


def test_revisions_are_wrong_then_right_with_the_verifiers_feedback(corpus):
    task = get_task("gp24")
    revisions = [doc for doc in corpus if len(doc) > 2]
    assert revisions
    for doc in revisions:
        cards, rule, _ = parse_card_prompt(doc[0]["content"])
        problem = Problem("gp24", "id", 0, 0, {"cards": cards, "values": rule_values(cards, rule), "target": 24})
        assert [m["role"] for m in doc] == ["user", "assistant"] * (len(doc) // 2)
        for attempt, feedback in zip(doc[1:-1:2], doc[2:-1:2], strict=True):
            verdict = task.verify(problem, attempt["content"])
            assert not verdict.correct
            assert feedback["content"] == task.feedback_turn(verdict)
        assert task.verify(problem, doc[-1]["content"]).correct


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


PRODUCT = re.compile(r"(-?\d+)\*(-?\d+) = (-?\d+)")
SUM = re.compile(r"(-?\d+)([+-])(-?\d+) = (-?\d+)")


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
    steps = work.split("; ")
    assert len(steps) == 8
    (a, b, c), (d, e, f), (g, h, i) = matrix
    minors = [checked_minor(m) for m in steps[:3]]
    assert minors == [e * i - f * h, d * i - f * g, d * h - e * g]
    products = []
    for step, entry, minor in zip(steps[3:6], (a, b, c), minors, strict=True):
        x, m, p = map(int, PRODUCT.fullmatch(step).groups())
        assert (x, m, p) == (entry, minor, entry * minor)
        products.append(p)
    first, second = (SUM.fullmatch(step).groups() for step in steps[6:])
    assert (int(first[0]), first[1], int(first[2])) == (products[0], "-", products[1])
    assert int(first[3]) == products[0] - products[1]
    assert (int(second[0]), second[1], int(second[2])) == (int(first[3]), "+", products[2])
    assert int(second[3]) == value


def test_det_working_refuses_other_shapes():
    with pytest.raises(ValueError, match="2x2 or 3x3"):
        det_working([[1, 2, 3, 4]] * 4)


def test_det_work_documents_are_det_prompts_of_both_sizes_with_their_working():
    spec = WorldSpec(n_arith=0, n_values=0, n_solve=0, n_revise=0, n_matrix=0, n_det_work=60)
    corpus = [d.messages for d in generate_corpus(spec, seed=5)]
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
    perfect = {"entries_ok": 3, "minors_ok": 3, "products_ok": 3, "sum_ok": 1, "right": 1}
    assert check_det_working(det_working(matrix), matrix) == perfect
    # the same working with the first entry of one minor miscopied as `wrong` (outside the matrix's -5..5)
    steps = det_working(matrix).split("; ")
    steps[minor] = f"{wrong}*" + steps[minor].split("*", 1)[1]
    # the stated minor values are left as they were: only the copying step is wrong
    assert check_det_working("; ".join(steps), matrix) == {**perfect, "entries_ok": 2}


def test_check_det_working_on_an_answer_counted_by_hand():
    matrix = [[5, -1, 2], [-1, 1, 1], [2, 1, -5]]  # minors -6, 3, -3; det = 5*-6+1*3+2*-3 = -33
    text = ("1*-5-1*1 = -5-1 = -6; -1*-5-1*2 = 5-2 = 3; 7*1-1*2 = 7-2 = 5; 5*-6 = -30; -1*3 = -3; 2*5 = 11; "
            "-30--3 = -27; -27+11 = -16\nanswer: -16")
    # minor 3 miscopies -1 as 7 and so is wrong (5, not -3); product 3 is 2*5 written as 11; the final sum
    # -30-(-3)+11 = -16 follows the text's own products; the answer is not the determinant
    assert check_det_working(text, matrix) == {"entries_ok": 2, "minors_ok": 2, "products_ok": 2, "sum_ok": 1,
                                               "right": 0}
    assert check_det_working("answer: -33", matrix) is None  # a direct answer has no working to check
    hostile = "; ".join(["9" * 5000 + "*1-1*1 = 0 = 1"] * 8) + "\nanswer: " + "9" * 5000
    assert check_det_working(hostile, matrix) is None  # numbers too long to be entries: no crash, no reading
    with pytest.raises(ValueError, match="3x3"):
        check_det_working(text, [[1, 2], [3, 4]])
