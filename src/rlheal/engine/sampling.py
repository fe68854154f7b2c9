"""Choosing the next token of each row: greedy, or sampled with noise keyed by (seed, episode, attempt, position).

Sampling uses the Gumbel-max trick: the token is argmax(logits / T + g) over the tokens top-p keeps, where g is
Gumbel noise made by hashing the row's key and the token id (`uniform_noise`). That draws exactly from
softmax(logits / T) restricted to the nucleus, and a token depends only on its logits and its key, never on
which other rows share the batch, the batch size or the order rows were scheduled in. Pure tensor functions;
integer arithmetic stays below 2**63, so CPU and CUDA hash alike.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # the multiplier of a well-mixing 32-bit integer hash (x ^= x >> 16; x *= M; twice)
_GOLDEN = 0x9E3779B1  # 2**32 / golden ratio: spreads consecutive integers before hashing
NOISE_ELEMENTS = 1 << 24  # rows x vocab hashed at a time (bounds the int64 temporaries: 128 MiB each)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of each element of an int64 tensor holding values in [0, 2**32)."""
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    return x ^ (x >> 16)


def row_keys(seed: int, episodes: torch.Tensor, attempts: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from the decoding seed (any non-negative int below 2**64) and each row's episode,
    attempt and token position (int64 tensors of equal shape)."""
    halves = torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32], dtype=torch.int64, device=episodes.device)
    key = hash32(hash32(halves[:1]) ^ halves[1:]).expand_as(episodes)
    for part in (episodes, attempts, positions):
        key = hash32(key ^ hash32(part & _MASK32))
    return key


def uniform_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab) float32 uniforms in (0, 1), 23 bits each, a pure function of (key, token id)."""
    ids = hash32((torch.arange(vocab, device=keys.device, dtype=torch.int64) * _GOLDEN) & _MASK32)
    bits = hash32(keys[:, None] ^ ids[None, :]) >> 9
    return (bits.to(torch.float32) + 0.5) / float(1 << 23)


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where nucleus sampling keeps a token: transformers' TopPLogitsWarper (the smallest set of the most
    likely tokens whose probability exceeds `top_p`; ties at the edge resolved by its sort; at least one)."""
    if top_p >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool)
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p)
    drop[..., -1:] = False
    return ~drop.scatter(-1, order, drop)


def choose_tokens(logits: torch.Tensor, *, temperature: float, top_p: float = 1.0,
                  keys: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row of `logits` (rows, vocab): argmax when `temperature` is 0 (first index on
    ties, as torch.argmax), else a draw from softmax(logits / temperature) within the top-p nucleus, driven
    by `keys` (`row_keys`)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if keys is None:
        raise ValueError("sampling needs one key per row (row_keys)")
    scores = logits.float() / temperature
    scores = scores.masked_fill(~top_p_mask(scores, top_p), float("-inf"))
    step = max(1, NOISE_ELEMENTS // scores.shape[-1])
    tokens = []
    for start in range(0, len(scores), step):
        noise = uniform_noise(keys[start:start + step], scores.shape[-1])
        tokens.append((scores[start:start + step] - torch.log(-torch.log(noise))).argmax(dim=-1))
    return torch.cat(tokens)
