"""The safe formula reader against Python's own parser (ast, evaluated with Fractions) and hostile input."""

import ast
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlheal.tasks.arith import MAX_BITS, MAX_DEPTH, MAX_FORMULA_CHARS, FormulaError, parse_formula

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def reference(text: str) -> tuple[Fraction, list[int]]:
    """Value and numbers of `text` read by Python's parser (ast, never eval), evaluated exactly."""
    numbers: list[int] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            return _OPS[type(node.op)](left, right)
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        numbers.append(node.value)
        return Fraction(node.value)

    return value(ast.parse(text, mode="eval").body), numbers


@st.composite
def formulas(draw, depth: int = 0) -> str:
    """Random formulas from the grammar expr := term (+|- term)*, term := factor (*|/ factor)*."""

    def factor() -> str:
        if depth < 2 and draw(st.booleans()):
            return "(" + draw(formulas(depth + 1)) + ")"
        return str(draw(st.integers(0, 99)))

    def chain(part, ops) -> str:
        text = part()
        for _ in range(draw(st.integers(0, 2))):
            space = draw(st.sampled_from(["", " "]))
            text += space + draw(st.sampled_from(ops)) + space + part()
        return text

    return chain(lambda: chain(factor, "*/"), "+-")


@given(formulas())
def test_value_and_numbers_match_pythons_parser(text):
    try:
        expected, numbers = reference(text)
    except ZeroDivisionError:
        with pytest.raises(FormulaError, match="division by zero"):
            parse_formula(text)
        return
    if max(abs(expected.numerator), expected.denominator).bit_length() > MAX_BITS or len(text) > MAX_FORMULA_CHARS:
        return  # the reader's size limits, tested below
    parsed = parse_formula(text)
    assert parsed.value == expected
    assert list(parsed.numbers) == numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [("8/(3-8/3)", Fraction(24)), ("2-3-4", Fraction(-5)), ("8/4/2", Fraction(1)), ("1+2*3", Fraction(7)),
     ("(1+2)*3", Fraction(9)), ("7 × 3 ÷ 2", Fraction(21, 2)), ("10 − 4", Fraction(6)), (" ( ( 5 ) ) ", Fraction(5))],
)
def test_hand_checked_values(text, value):
    assert parse_formula(text).value == value


def test_trailing_claim_is_read_but_not_judged():
    assert parse_formula("3*8 = 24").claim == 24
    assert parse_formula("3*8=23").claim == 23
    assert parse_formula("3*8").claim is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1/0", "division by zero"),
        ("4/(2-2)", "division by zero"),
        ("", "empty"),
        ("   ", "empty"),
        ("-3+27", "sign"),
        ("3*-8", "sign"),
        ("2.5*8+4", "whole numbers"),
        ("2**3", "power"),
        ("2^3", "not an allowed operator"),
        ("(1+2", "missing ')'"),
        ("1+2)", "unexpected ')'"),
        ("3 8", "unexpected '8'"),
        ("1+", "ends where"),
        ("__import__('os')", "unexpected character '_'"),
        ("２４", "non-ASCII digit"),
        ("1234567+1", "digits"),
        ("3*8=24=24", "more than one '='"),
        ("3*8=twenty", "after '='"),
        ("(" * 40 + "1" + ")" * 40, f"nested more than {MAX_DEPTH}"),
        ("(" * 100_000 + "1" + ")" * 100_000, "characters long"),
        ("9" * 1_000_000, "characters long"),
        ("*".join(["999999"] * 60), "bits"),
    ],
)
def test_illegal_formulas_give_one_line_reasons(text, reason):
    with pytest.raises(FormulaError) as caught:
        parse_formula(text)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_formula_error(text):
    try:
        parse_formula(text)
    except FormulaError:
        pass
