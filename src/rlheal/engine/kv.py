"""The engine's KV cache: one row ("slot") per episode, kept across the episode's attempts.

Slot s holds the keys and values of its episode's tokens at columns 0..n-1 (column = the token's position in the
chat), in preallocated buffers (slots, kv heads, capacity + 1, head dim) per layer; the last column is scratch,
where padding tokens write and which no query attends. A forward pass feeds some slots a chunk of new tokens
each (a prompt, a feedback turn, or the one token sampled last); `SlotCache.update` — the Hugging Face `Cache`
hook every attention layer calls — writes the chunk's keys and values at each slot's own columns and hands
attention the slots' first `width` columns, and a 4-D mask lets each new token see its own slot's columns up to
its position. Any causal LM whose attention layers call `cache.update` and take a prepared 4-D mask (Llama,
Qwen2, Mistral without sliding windows, ...) runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache


@dataclass(frozen=True)
class Chunk:
    """New tokens for one slot: `tokens` go to columns start, start + 1, ... of slot `slot`. A chunk without
    tokens is a placeholder row (an idle slot in an in-place pass): it writes only the scratch column."""

    slot: int
    start: int
    tokens: list[int]


@dataclass(frozen=True)
class Feed:
    """One forward pass's inputs, left padded so that every row's last token is at the last position."""

    input_ids: torch.Tensor  # (rows, T)
    positions: torch.Tensor  # (rows, T): each token's column; padding 0
    columns: torch.Tensor  # (rows, T): where each token's key and value are written; padding the scratch column
    slots: torch.Tensor | None  # (rows,) the slot of each row; None: rows are slots 0..rows-1
    width: int  # attention sees columns 0..width-1


def plan_feed(chunks: list[Chunk], *, n_slots: int, capacity: int, pad_id: int, device: Any,
              width_step: int = 1) -> Feed:
    """The `Feed` of `chunks` (at most one per slot). With one chunk per slot in slot order the cache is read
    in place; otherwise the rows' slots are gathered. `width` is the longest slot after the chunk, rounded up
    to a multiple of `width_step` (fewer distinct shapes) but never past `capacity`."""
    if not any(c.tokens for c in chunks):
        raise ValueError("a forward pass needs at least one chunk with tokens")
    longest = max(len(c.tokens) for c in chunks)
    ids, positions, columns = [], [], []
    for c in chunks:
        pad = longest - len(c.tokens)
        span = list(range(c.start, c.start + len(c.tokens)))
        ids.append([pad_id] * pad + c.tokens)
        positions.append([0] * pad + span)
        columns.append([capacity] * pad + span)
    end = max(c.start + len(c.tokens) for c in chunks)
    if end > capacity:
        raise ValueError(f"a chunk ends at column {end}, past the cache's capacity of {capacity}")
    width = min(capacity, -(-end // width_step) * width_step)
    in_order = [c.slot for c in chunks] == list(range(len(chunks))) and len(chunks) <= n_slots
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64, device=device)  # noqa: E731
    return Feed(as_tensor(ids), as_tensor(positions), as_tensor(columns),
                None if in_order else as_tensor([c.slot for c in chunks]), width)


def attention_mask(feed: Feed, dtype: torch.dtype | None) -> torch.Tensor:
    """(rows, 1, T, width): token t of a row sees columns 0..position. Boolean (True = attend) for SDPA; with a
    float `dtype`, additive (0 or the dtype's minimum) for eager attention."""
    cols = torch.arange(feed.width, device=feed.positions.device)
    allowed = cols[None, None, :] <= feed.positions[:, :, None]
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class SlotCache(Cache):
    """Per-slot KV buffers for every layer (see the module docstring); `feed` must be set before each forward."""

    def __init__(self, *, layers: int, slots: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: Any) -> None:
        super().__init__(layers=[])
        self.shape = (slots, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = [torch.empty(0) for _ in range(layers)]
        self.values: list[torch.Tensor] = [torch.empty(0) for _ in range(layers)]
        self.feed: Feed | None = None
        self._flat: torch.Tensor | None = None
        self.reserve(capacity)

    def reserve(self, capacity: int) -> None:
        """Grow every slot to at least `capacity` columns (plus scratch), keeping what the slots hold."""
        if capacity <= self.capacity:
            return
        slots, heads, dim = self.shape
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = torch.zeros(slots, heads, capacity + 1, dim, dtype=self.dtype, device=self.device)
                if self.capacity:
                    new[:, :, : self.capacity] = old[:, :, : self.capacity]
                store[i] = new
        self.capacity = capacity

    def start(self, feed: Feed) -> None:
        """Set the forward pass the next `update` calls belong to."""
        rows, tokens = feed.columns.shape
        slots_, heads, _ = self.shape
        slots = feed.slots if feed.slots is not None else torch.arange(rows, device=feed.columns.device)
        head = torch.arange(heads, device=feed.columns.device)
        self._flat = ((slots[:, None, None] * heads + head[None, :, None]) * (self.capacity + 1)
                      + feed.columns[:, None, :]).reshape(-1)
        self.feed = feed

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's keys and values (rows, kv heads, T, head dim) into their slots' columns; return the
        rows' keys and values over columns 0..width-1."""
        feed = self.feed
        out = []
        for store, states in ((self.keys, key_states), (self.values, value_states)):
            buffer = store[layer_idx]
            buffer.view(-1, buffer.shape[-1]).index_copy_(0, self._flat, states.reshape(-1, buffer.shape[-1]))
            if feed.slots is None:
                out.append(buffer[: key_states.shape[0], :, : feed.width])
            else:
                out.append(buffer[feed.slots, :, : feed.width])
        return out[0], out[1]

    def move(self, sources: list[int], targets: list[int]) -> None:
        """Copy slots `sources` to slots `targets` (compaction: keeps the active slots first)."""
        src = torch.tensor(sources, device=self.device)
        dst = torch.tensor(targets, device=self.device)
        for store in (self.keys, self.values):
            for buffer in store:
                buffer.index_copy_(0, dst, buffer.index_select(0, src))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """0: the engine passes every token's position itself, so models never derive positions from this."""
        return 0
