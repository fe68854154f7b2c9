"""Held-out problems: every problem belongs to one pool, `train` or `eval`, by a hash of what makes it that problem.

- gp24 (and its variants): the multiset of card values and the target (`hand:24:2,11,12,13`): the hand's
  solutions depend on nothing else, so two hands with the same values are one problem whatever their cards,
  suits, order or stated rule.
- rank, det: the matrix (`matrix:[[1,2],[3,4]]`).

A key is in the eval pool when the first 8 bytes of its SHA-256, read as a fraction of 2^64, fall below
`EVAL_SHARE`. Evaluation sets draw only from the eval pool; everything that trains a model (pretraining
corpora, SFT sets, RL problems) draws only from the train pool. A key's pool depends on the key alone, never
on the split, seed or index that drew it, so a hand or matrix is in the same pool wherever it appears.
Pure Python.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

POOLS: tuple[str, ...] = ("train", "eval")
TRAIN, EVAL = POOLS
EVAL_SHARE = 0.25  # share of all problem keys held out for evaluation


def hand_key(values: Iterable[int], target: int) -> str:
    """The held-out key of a gp24 hand: its target and its sorted card values, `hand:24:2,11,12,13`."""
    return f"hand:{target}:" + ",".join(str(v) for v in sorted(values))


def matrix_key(matrix: Sequence[Sequence[int]]) -> str:
    """The held-out key of an integer matrix, `matrix:[[1,2],[3,4]]`."""
    return "matrix:" + json.dumps([list(row) for row in matrix], separators=(",", ":"))


def pool_of(key: str) -> str:
    """`eval` for the keys held out for evaluation, `train` for all others."""
    digest = hashlib.sha256(key.encode()).digest()
    return EVAL if int.from_bytes(digest[:8], "big") < EVAL_SHARE * 2**64 else TRAIN


def check_pool(pool: str) -> str:
    """Return `pool` if it is a known pool, else raise ValueError listing the valid ones."""
    if pool not in POOLS:
        raise ValueError(f"unknown problem pool {pool!r}; valid: {', '.join(POOLS)}")
    return pool
