"""A small, safe reader of arithmetic formulas: whole numbers, + - * /, parentheses, exact Fractions.

Never `eval`. Every input is bounded before any work is done, so hostile text costs microseconds:
at most `MAX_FORMULA_CHARS` characters, number literals of at most `MAX_DIGITS` ASCII digits,
parentheses nested at most `MAX_DEPTH` deep, and every intermediate value's numerator and denominator
at most `MAX_BITS` bits. `×`, `÷` and the minus sign `−` (U+2212) are read as `*`, `/` and `-`.
A sign in front of a number (`-3`, `+3`) is not allowed: each number is used as written.
An optional trailing `= N` (N a whole number) is read as the formula's claimed value.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from fractions import Fraction

MAX_FORMULA_CHARS = 512
MAX_DIGITS = 6
MAX_DEPTH = 32
MAX_BITS = 256

_ALIASES = {"×": "*", "÷": "/", "−": "-"}
_OPERATORS = frozenset("+-*/()")


class FormulaError(ValueError):
    """The text is not a legal formula; the message is one line saying why."""


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its exact value, the numbers it uses (in order), and the claimed `= N`, if any."""

    value: Fraction
    numbers: tuple[int, ...]
    claim: int | None


def show_char(ch: str) -> str:
    """A one-line, readable name for a character (used in error messages)."""
    if ch.isprintable() and ch.isascii():
        return repr(ch)
    return f"{ch!r} (U+{ord(ch):04X})"


def _tokens(text: str) -> list[tuple[str, int]]:
    """Split `text` into (token, position) pairs: number literals and operator characters."""
    tokens: list[tuple[str, int]] = []
    depth = 0
    i = 0
    while i < len(text):
        ch = _ALIASES.get(text[i], text[i])
        if ch in "0123456789":
            j = i
            while j < len(text) and text[j] in "0123456789":
                j += 1
            if j - i > MAX_DIGITS:
                raise FormulaError(f"the number at position {i} has {j - i} digits (at most {MAX_DIGITS})")
            if j < len(text) and text[j] in ".,":
                raise FormulaError(f"only whole numbers are allowed, found {text[i:j + 2]!r}")
            tokens.append((text[i:j], i))
            i = j
            continue
        if text.startswith("**", i):
            raise FormulaError("'**' (power) is not an allowed operator (use + - * / and parentheses)")
        if ch in "^%":
            raise FormulaError(f"{show_char(ch)} is not an allowed operator (use + - * / and parentheses)")
        if ch in _OPERATORS:
            depth += (ch == "(") - (ch == ")")
            if depth > MAX_DEPTH:
                raise FormulaError(f"parentheses are nested more than {MAX_DEPTH} deep")
            tokens.append((ch, i))
        elif ch.isdigit() or unicodedata.category(ch) == "Nd":
            raise FormulaError(f"non-ASCII digit {show_char(ch)}: write numbers with the digits 0-9")
        elif not ch.isspace():
            raise FormulaError(f"unexpected character {show_char(ch)} at position {i}")
        i += 1
    return tokens


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise FormulaError(f"an intermediate value grows beyond {MAX_BITS} bits")
    return value


class _Parser:
    """Recursive descent over the token list: expr := term (+|- term)*, term := factor (*|/ factor)*,
    factor := NUMBER | ( expr ). Depth is bounded by the tokenizer's parenthesis check."""

    def __init__(self, tokens: list[tuple[str, int]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def where(self) -> str:
        return f"position {self.tokens[self.pos][1]}" if self.pos < len(self.tokens) else "the end"

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos][0]
            self.pos += 1
            right = self.term()
            value = _check_size(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.tokens[self.pos][0]
            self.pos += 1
            right = self.factor()
            if op == "*":
                value = _check_size(value * right)
            elif right == 0:
                raise FormulaError("division by zero")
            else:
                value = _check_size(value / right)
        return value

    def factor(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise FormulaError("the formula ends where a number or '(' was expected")
        if token == "(":
            self.pos += 1
            value = self.expr()
            if self.peek() != ")":
                raise FormulaError(f"missing ')' at {self.where()}")
            self.pos += 1
            return value
        if token in ("+", "-"):
            raise FormulaError(f"a sign before a number is not allowed (at {self.where()}): use each number as is")
        if token[0].isdigit():
            self.pos += 1
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise FormulaError(f"unexpected {token!r} at {self.where()}")


def _claim(text: str) -> int:
    rhs = text.strip()
    if not (rhs.isascii() and rhs.isdigit() and len(rhs) <= MAX_DIGITS):
        shown = rhs if len(rhs) <= 20 else rhs[:20] + "..."
        raise FormulaError(f"after '=' expected a whole number, found {shown!r}")
    return int(rhs)


def parse_formula(text: str) -> Formula:
    """Parse and evaluate `text` exactly. Raises FormulaError (one-line reason) if it is not a legal formula."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is {len(text)} characters long (at most {MAX_FORMULA_CHARS})")
    lhs, *rest = text.split("=")
    if len(rest) > 1:
        raise FormulaError("the formula has more than one '='")
    claim = _claim(rest[0]) if rest else None
    tokens = _tokens(lhs)
    if not tokens:
        raise FormulaError("the formula is empty")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.pos < len(tokens):
        raise FormulaError(f"unexpected {tokens[parser.pos][0]!r} at {parser.where()}")
    return Formula(value=value, numbers=tuple(parser.numbers), claim=claim)


def show_value(value: Fraction) -> str:
    """`value` as a short string: '24', '45/2', or 'a 40-digit number' when it is long."""
    text = str(value)
    return text if len(text) <= 24 else f"a number of {len(text)} characters"
