"""Exact rank and determinant of small integer matrices by fraction-free (Bareiss) elimination."""

from __future__ import annotations

from collections.abc import Sequence


def _eliminate(matrix: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Bareiss elimination with row pivoting: (rank, last pivot, sign of the row permutation).

    Every entry stays an integer (each is a minor of the input), so the divisions are exact.
    For a square matrix of full rank the last pivot times the sign is the determinant.
    """
    rows = [list(row) for row in matrix]
    n_rows = len(rows)
    n_cols = len(rows[0]) if rows else 0
    rank, previous, sign = 0, 1, 1
    for col in range(n_cols):
        pivot = next((r for r in range(rank, n_rows) if rows[r][col] != 0), None)
        if pivot is None:
            continue
        if pivot != rank:
            rows[rank], rows[pivot] = rows[pivot], rows[rank]
            sign = -sign
        top = rows[rank]
        for r in range(rank + 1, n_rows):
            lead = rows[r][col]
            rows[r] = [(top[col] * rows[r][c] - lead * top[c]) // previous for c in range(n_cols)]
        previous = top[col]
        rank += 1
        if rank == n_rows:
            break
    return rank, previous, sign


def rank(matrix: Sequence[Sequence[int]]) -> int:
    """The exact rank of an integer matrix (a list of equal-length rows)."""
    return _eliminate(matrix)[0]


def det(matrix: Sequence[Sequence[int]]) -> int:
    """The exact determinant of a square integer matrix."""
    size = len(matrix)
    if any(len(row) != size for row in matrix):
        raise ValueError(f"det needs a square matrix, got {size} rows of lengths {[len(r) for r in matrix]}")
    if size == 0:
        return 1
    found, last_pivot, sign = _eliminate(matrix)
    return sign * last_pivot if found == size else 0
