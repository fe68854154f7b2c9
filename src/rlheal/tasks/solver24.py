"""Exact solvers for the 24 game over any multiset of whole numbers and any target.

`solvable(values, target)` answers yes/no from cached sets of reachable values (fast, used to redraw
hands); `solve(values, target)` lists every distinct formula. Both use exact rational arithmetic and the four
operations with any parenthesisation, each number used exactly once, no sign in front of a number.

"Distinct" means distinct up to the trivial rewrites of commutativity and associativity: a formula is
brought to a canonical form by flattening + and - into a sum of signed terms and * and / into a product of
factors with exponent +1 or -1 (so a-(b-c) = a+c-b and a/(b/c) = a*c/b), then sorting the terms and the
factors. Distributivity is not applied: 10*10/4-4/4 and (10*10-4)/4 are two solutions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from itertools import combinations, combinations_with_replacement
from math import gcd

Rational = tuple[int, int]  # (numerator, denominator), reduced, denominator > 0: exact and hashable


def _q(numerator: int, denominator: int) -> Rational:
    g = gcd(numerator, denominator)
    if denominator < 0:
        g = -g
    return numerator // g, denominator // g


def _pairs(a: Rational, b: Rational) -> Iterable[Rational]:
    """Every value one operation can make from a and b (both orders of - and /)."""
    (an, ad), (bn, bd) = a, b
    yield _q(an * bd + bn * ad, ad * bd)
    yield _q(an * bd - bn * ad, ad * bd)
    yield _q(bn * ad - an * bd, ad * bd)
    yield _q(an * bn, ad * bd)
    if bn:
        yield _q(an * bd, ad * bn)
    if an:
        yield _q(bn * ad, bd * an)


@cache
def reachable(values: tuple[int, ...]) -> frozenset[Rational]:
    """All values (numerator, denominator) a formula over the sorted multiset `values` can take."""
    if len(values) == 1:
        return frozenset({(values[0], 1)})
    out: set[Rational] = set()
    for left, right in _splits(values):
        for a in reachable(left):
            for b in reachable(right):
                out.update(_pairs(a, b))
    return frozenset(out)


def _splits(values: tuple[int, ...]) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The ways to cut the sorted multiset into two non-empty sorted parts (unordered)."""
    n = len(values)
    out = set()
    for size in range(1, n // 2 + 1):
        for chosen in combinations(range(n), size):
            left = tuple(values[i] for i in chosen)
            right = tuple(values[i] for i in range(n) if i not in chosen)
            out.add(min((left, right), (right, left)))
    return out


def _meets(a: Rational, others: frozenset[Rational], t: int) -> bool:
    """True if a op b == t for some b in `others` and some operation in either order."""
    n, d = a
    if (t * d - n, d) in others or (n - t * d, d) in others or (n + t * d, d) in others:  # a+b, a-b, b-a
        return True
    if n == 0:  # 0*b is 0 (so is 0/b); b/0 is not allowed
        return t == 0
    if _q(t * d, n) in others:  # a*b
        return True
    if t and _q(n, d * t) in others:  # a/b (then b != 0 as a != 0)
        return True
    return _q(n * t, d) in others  # b/a


def solvable(values: Iterable[int], target: int = 24) -> bool:
    """True if some formula over `values` (each once) equals `target` exactly. Cached per multiset."""
    return _solvable_sorted(tuple(sorted(values)), target)


@cache
def _solvable_sorted(values: tuple[int, ...], target: int) -> bool:
    if len(values) == 1:
        return values[0] == target
    for left, right in _splits(values):
        small, large = sorted((reachable(left), reachable(right)), key=len)
        if any(_meets(a, large, target) for a in small):
            return True
    return False


def solvability_table(low: int = 1, high: int = 13, target: int = 24) -> dict[tuple[int, ...], bool]:
    """Solvability of every multiset of four values in low..high (1820 multisets for 1..13)."""
    return {hand: solvable(hand, target) for hand in combinations_with_replacement(range(low, high + 1), 4)}


# --- all distinct formulas ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Expr:
    """A formula in canonical form: a number, a sum (+ terms, - terms) or a product (* and / factors)."""

    kind: str  # "num", "sum" or "prod"
    plus: tuple[_Expr, ...]
    minus: tuple[_Expr, ...]
    text: str


def _order(e: _Expr) -> tuple[bool, int, str]:
    """Numbers first, larger first; then compound parts by text."""
    return (e.kind != "num", -int(e.text) if e.kind == "num" else 0, e.text)


def _sorted(items: Iterable[_Expr]) -> tuple[_Expr, ...]:
    return tuple(sorted(items, key=_order))


def _make(kind: str, plus: Iterable[_Expr], minus: Iterable[_Expr]) -> _Expr:
    plus, minus = _sorted(plus), _sorted(minus)
    if kind == "sum":
        text = "+".join(e.text for e in plus) + "".join("-" + e.text for e in minus)
    else:
        def wrap(e: _Expr) -> str:
            return f"({e.text})" if e.kind == "sum" else e.text

        text = "*".join(wrap(e) for e in plus) + "".join("/" + wrap(e) for e in minus)
    return _Expr(kind, plus, minus, text)


def _parts(e: _Expr, kind: str) -> tuple[tuple[_Expr, ...], tuple[_Expr, ...]]:
    return (e.plus, e.minus) if e.kind == kind else ((e,), ())


def _combine(x: _Expr, y: _Expr, op: str) -> _Expr:
    """The canonical form of `x op y` (flattening sums into sums and products into products)."""
    kind = "sum" if op in "+-" else "prod"
    (xp, xm), (yp, ym) = _parts(x, kind), _parts(y, kind)
    if op in "+*":
        return _make(kind, xp + yp, xm + ym)
    return _make(kind, xp + ym, xm + yp)


_Raw = int | tuple  # a formula as built by the search: a number or (op, left, right)


def _canonical(raw: _Raw) -> _Expr:
    if isinstance(raw, int):
        return _Expr("num", (), (), str(raw))
    op, left, right = raw
    return _combine(_canonical(left), _canonical(right), op)


def _moves(x: tuple[int, int, _Raw], y: tuple[int, int, _Raw]) -> Iterable[tuple[int, int, _Raw]]:
    """(numerator, denominator, formula) for every operation on x and y, both orders where it matters.

    Values are unreduced integer fractions (exact, and much faster than Fraction for four numbers).
    """
    (an, ad, ea), (bn, bd, eb) = x, y
    yield an * bd + bn * ad, ad * bd, ("+", ea, eb)
    yield an * bd - bn * ad, ad * bd, ("-", ea, eb)
    yield bn * ad - an * bd, ad * bd, ("-", eb, ea)
    yield an * bn, ad * bd, ("*", ea, eb)
    if bn:
        yield an * bd, ad * bn, ("/", ea, eb)
    if an:
        yield bn * ad, bd * an, ("/", eb, ea)


def _search(items: list[tuple[int, int, _Raw]], goal: int, found: set[str]) -> None:
    for i, j in combinations(range(len(items)), 2):
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for item in _moves(items[i], items[j]):
            if rest:
                _search([*rest, item], goal, found)
            elif item[0] == goal * item[1]:  # canonicalise only the solutions
                found.add(_canonical(item[2]).text)


@cache
def _solve_sorted(values: tuple[int, ...], target: int) -> tuple[str, ...]:
    if len(values) == 1:
        return (str(values[0]),) if values[0] == target else ()
    found: set[str] = set()
    _search([(v, 1, v) for v in values], target, found)
    return tuple(sorted(found, key=lambda s: (len(s), s)))


def solve(values: Iterable[int], target: int = 24) -> list[str]:
    """Every distinct formula (see the module docstring) over `values` equal to `target`, shortest first."""
    return list(_solve_sorted(tuple(sorted(values)), target))
