"""GeneralPoints (`gp24`): four playing cards, a formula with + - * / ( ) using each card's number once.

ID: each card uniform over A..K with a random suit, J/Q/K count 10 (option `id_max_rank` draws ID cards from
A..that rank only: 9 gives the ID hands without a card worth 10, the ones a model trained on ID fails most).
OOD: three cards uniform, one drawn from J/Q/K, shuffled; J/Q/K count 11/12/13. Hands with no solution are
redrawn. The rule is stated in the prompt.
`gp24-low` is the same game with an OOD rule inside the ID value range, J/Q/K = 1/2/3: its OOD hands need no
number above 10, so what separates OOD from ID is only reading the stated rule.
Rewards per attempt (the paper's §2): +5 correct, -1 right numbers but wrong value, -2 numbers not exactly the
hand's, -3 illegal formula or no answer found.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import ClassVar

from rlheal.tasks.arith import FormulaError, parse_formula, show_value
from rlheal.tasks.base import (
    CORRECT,
    ILLEGAL,
    UNPARSEABLE,
    WRONG_NUMBERS,
    WRONG_VALUE,
    Problem,
    Task,
    Verdict,
)
from rlheal.tasks.holdout import hand_key
from rlheal.tasks.reading import Miss, read_field
from rlheal.tasks.solver24 import solvable, solve

RANKS: tuple[str, ...] = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS: tuple[str, ...] = ("h", "d", "c", "s")
REWARDS: dict[str, float] = {CORRECT: 5.0, WRONG_VALUE: -1.0, WRONG_NUMBERS: -2.0, ILLEGAL: -3.0, UNPARSEABLE: -3.0}

OOD_FACES: tuple[int, int, int] = (11, 12, 13)


def compact_rule(split: str, ood_faces: tuple[int, int, int] = OOD_FACES) -> str:
    """The face-card rule as the compact prompt states it: `J,Q,K=10` or `J,Q,K=11,12,13`."""
    return "J,Q,K=10" if split == "id" else "J,Q,K=" + ",".join(map(str, ood_faces))


def paper_rule(split: str, ood_faces: tuple[int, int, int] = OOD_FACES) -> str:
    """The face-card rule as the paper's prompt states it."""
    if split == "id":
        return "Note that 'J', 'Q' and 'K' all count as '10'."
    j, q, k = ood_faces
    return f"Note that 'J', 'Q' and 'K' count as '{j}', '{q}' and '{k}' respectively."


def card_value(rank: int, split: str, ood_faces: tuple[int, int, int] = OOD_FACES) -> int:
    """The number a card of rank 1..13 (A..K) counts as under the split's face-card rule."""
    if rank <= 10:
        return rank
    return 10 if split == "id" else ood_faces[rank - 11]


def draw_ranks(rng, split: str, id_max_rank: int = 13) -> list[int]:
    """Four ranks 1..13: uniform over 1..id_max_rank for ID; for OOD three uniform and one face card, shuffled."""
    if split == "id":
        return [rng.randint(1, id_max_rank) for _ in range(4)]
    ranks = [rng.randint(1, 13) for _ in range(3)] + [rng.randint(11, 13)]
    rng.shuffle(ranks)
    return ranks


def judge_formula(formula: str, values: list[int], target: int, name_values: bool = True) -> Verdict:
    """The verdict on one formula for a hand with these card values (independent of the prompt profile).
    With `name_values` False, the feedback on wrong numbers does not say what the cards count as."""

    def verdict(kind: str, feedback: str) -> Verdict:
        return Verdict(kind == CORRECT, REWARDS[kind], kind, feedback, format_ok=True)

    try:
        parsed = parse_formula(formula)
    except FormulaError as error:
        return verdict(ILLEGAL, f"the formula is illegal: {error}")
    if Counter(parsed.numbers) != Counter(values):
        used = ", ".join(map(str, parsed.numbers[:12])) + (", ..." if len(parsed.numbers) > 12 else "")
        if not name_values:
            return verdict(WRONG_NUMBERS, f"the formula uses {used}, which are not the numbers the cards count as")
        return verdict(WRONG_NUMBERS, f"the formula uses {used} but the cards are {', '.join(map(str, values))}")
    claim = "" if parsed.claim is None or parsed.claim == parsed.value else f" (it claims {parsed.claim})"
    if parsed.value != target:
        return verdict(WRONG_VALUE, f"the formula equals {show_value(parsed.value)}, not {target}{claim}")
    return verdict(CORRECT, f"the formula equals {target}{claim}")


class GeneralPoints(Task):
    """The 24 game with an ID and an OOD face-card rule; options `target` (default 24) and `id_max_rank`
    (default 13: ID cards from A..K; lower it to draw ID hands from fewer ranks, e.g. for RL problems)."""

    name: ClassVar[str] = "gp24"
    summary: ClassVar[str] = "make 24 from four cards; ID counts J/Q/K as 10, OOD as 11/12/13 (the paper's GeneralPoints)"
    ood_faces: ClassVar[tuple[int, int, int]] = OOD_FACES
    feedback_names_values: ClassVar[bool] = True  # the wrong-numbers feedback states the card values
    default_max_attempts: ClassVar[int] = 5
    options: ClassVar[tuple[str, ...]] = ("target", "id_max_rank")

    def __init__(self, profile: str = "compact", target: int = 24, id_max_rank: int = 13) -> None:
        super().__init__(profile)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a whole number >= 0, got {target!r}")
        if isinstance(id_max_rank, bool) or not isinstance(id_max_rank, int) or not 1 <= id_max_rank <= 13:
            raise ValueError(f"id_max_rank must be a card rank 1..13 (1 = A, 13 = K), got {id_max_rank!r}")
        self.target = target
        self.id_max_rank = id_max_rank

    def draw(self, rng, split: str) -> dict | None:
        """A hand of the split (None when it has no solution: redrawn)."""
        ranks = draw_ranks(rng, split, self.id_max_rank)
        values = [card_value(r, split, self.ood_faces) for r in ranks]
        if not solvable(values, self.target):
            return None
        return {"cards": [RANKS[r - 1] + rng.choice(SUITS) for r in ranks], "values": values, "target": self.target}

    def holdout_key(self, data: dict) -> str:
        return hand_key(data["values"], data["target"])

    def no_problem_hint(self) -> str:
        return (f"target {self.target}, ID cards up to rank {self.id_max_rank}: use a target like 24 and id_max_rank "
                "of at least 3")

    def prompt(self, problem: Problem) -> str:
        cards, target, split = problem.data["cards"], problem.data["target"], problem.split
        if self.profile == "compact":
            return f"cards: {' '.join(cards)} | {compact_rule(split, self.ood_faces)} | make {target}"
        ranks = [card[:-1] for card in cards]
        return (
            "You are an expert player of the 24 points card game. You are given four playing cards. "
            "Write a formula that uses the number of each card exactly once, with the operators "
            f"'+', '-', '*', '/' and parentheses, and evaluates to {target}.\n"
            f"{paper_rule(split, self.ood_faces)}\n"
            f"Cards: {ranks}\n"
            "Answer with a JSON object of this form and nothing else:\n"
            '{"cards": [the four cards as listed], "number": [the four numbers the cards count as], '
            f'"formula": "a formula that equals {target}"}}'
        )

    def solve(self, problem: Problem) -> list[str]:
        """Every distinct formula for the problem's hand (see solver24 for what "distinct" means)."""
        return solve(problem.data["values"], problem.data["target"])

    def answer(self, problem: Problem) -> str:
        formula = self.solve(problem)[0]
        if self.profile == "compact":  # the paper's "number" field first, then the formula, on one line
            return f"numbers: {' '.join(map(str, problem.data['values']))} | formula: {formula}"
        ranks = [card[:-1] for card in problem.data["cards"]]
        return json.dumps({"cards": ranks, "number": problem.data["values"], "formula": formula})

    def verify(self, problem: Problem, text: str) -> Verdict:
        field = read_field(text, self.profile, "formula")
        if isinstance(field, Miss):
            return Verdict(False, REWARDS[UNPARSEABLE], UNPARSEABLE, field.reason, format_ok=False)
        if not isinstance(field, str):
            return Verdict(False, REWARDS[ILLEGAL], ILLEGAL, 'the "formula" field is not a string', format_ok=True)
        return judge_formula(field, problem.data["values"], problem.data["target"], self.feedback_names_values)


class GeneralPointsLowFaces(GeneralPoints):
    """`gp24-low`: GeneralPoints whose OOD rule keeps J/Q/K inside the ID value range (1/2/3)."""

    name: ClassVar[str] = "gp24-low"
    summary: ClassVar[str] = "gp24 whose OOD rule counts J/Q/K as 1/2/3: only reading the stated rule tells OOD from ID"
    ood_faces: ClassVar[tuple[int, int, int]] = (1, 2, 3)


class GeneralPointsLowFacesBlind(GeneralPointsLowFaces):
    """`gp24-low-blind`: `gp24-low` whose revision feedback never states the card values, so a later attempt
    can repair a misread rule only by reading it again (a diagnostic variant)."""

    name: ClassVar[str] = "gp24-low-blind"
    summary: ClassVar[str] = "gp24-low whose revision feedback never states the card values"
    feedback_names_values: ClassVar[bool] = False
