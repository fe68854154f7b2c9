"""The episode engine: plays whole episodes of the revision protocol on a Hugging Face causal LM, one KV slot per
episode kept across its attempts, with continuous batching.

`play_episodes` keeps up to `batch_size` episodes in flight. Each step feeds every busy slot its pending tokens and
samples one token per slot: slots with a prompt or a feedback turn to prefill go through one forward pass
(gathered), slots that are decoding through another (in place). When an attempt ends (an eos token or
`max_new_tokens`), the referee judges it at once and answers with the episode's next chat or with None; the
next chat is tokenised with `chat_tokens.encode_chat` exactly as `HFBackend` does (text never forges a control
token), and only its part beyond the cached prefix is fed. A finished episode's slot takes the next waiting
episode; when no episode waits and at most half of the slots are busy, the busy ones move to the front so the
batch shrinks with them.

Greedy decoding gives the tokens `HFBackend` gives (same prompts, same eos handling, argmax); sampled decoding
draws token t of attempt a of episode i with noise keyed by (seed, i, a, t) (`engine.sampling`), so it is
reproducible and independent of the batch size and of the schedule.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rlheal.chat_tokens import encode_chat
from rlheal.engine.slots import Slot
from rlheal.models.hf import kv_shape
from rlheal.rollout import Decoding, Generation, Messages, Referee, RolloutError, pad_and_stop_ids

ATTENTIONS = ("sdpa", "eager")  # attention implementations that take the engine's prepared 4-D mask
CAPACITY_STEP = 64  # slot capacity grows in steps of this many columns
PREFILL_TOKENS = 16384  # rows x longest chunk per prefill forward pass
PREFILL_SHARE = 8  # prefill waits until a 1/PREFILL_SHARE of the busy slots need it (or none decodes)


class EngineBackend:
    """The episode engine on `model` (a causal LM in eval mode) with its `tokenizer` (which needs a chat
    template). `batch_size`: episodes in flight, one KV slot each. `cuda_graphs`: on a GPU, replay the decode
    passes from CUDA graphs (`engine.graphs`; off by default until measured on one).

    Raises RolloutError for a model the engine cannot drive (attention other than sdpa/eager, sliding-window or
    non-attention layers) or a tokenizer without chat template; `play_episodes` and `generate` raise it when a
    first prompt plus `max_new_tokens` exceeds the model's context (`max_position_embeddings`)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64, name: str = "the model",
                 cuda_graphs: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not getattr(tokenizer, "chat_template", None):
            raise RolloutError(f"the tokenizer of {name} has no chat template: use a chat/instruct model, or "
                               "set `tokenizer.chat_template` (a Jinja string) and save it with the checkpoint")
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if attention not in ATTENTIONS:
            raise RolloutError(f"{name} uses {attention} attention; the episode engine needs sdpa or eager: load "
                               "it with attn_implementation='sdpa', or evaluate with --backend hf")
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise RolloutError(f"{name} has {', '.join(sorted(layer_types))} layers; the episode engine drives "
                               "full-attention layers only: evaluate with --backend hf")
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.context = getattr(config, "max_position_embeddings", None)
        self.pad_id, stop_ids = pad_and_stop_ids(model, tokenizer)
        self.eos_ids = frozenset(stop_ids)
        self.mask_dtype = None if attention == "sdpa" else model.dtype
        self.kv_shape = kv_shape(config)
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.last_logits_only = "logits_to_keep" in parameters
        self.cache = None
        self.fed_tokens = 0  # tokens fed through the model so far (prompts, feedback turns, sampled tokens)
        self.graphs = None
        if cuda_graphs and self.model.device.type == "cuda":
            from rlheal.engine.graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self.run_feed)

    # --- the chat-level protocol (rollout.Backend) -----------------------------------------------------------
    def encode_prompts(self, batch: Sequence[Messages]) -> list[list[int]]:
        """Token ids of each chat as `HFBackend.encode_prompts` gives them."""
        return [encode_chat(self.tokenizer, m) for m in batch]

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        return [self._fits(len(ids), max_new_tokens) for ids in self.encode_prompts(batch)]

    def generate(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> list[Generation]:
        """One completion per chat (single-attempt episodes): rollout.Backend's `generate`."""
        out: list[Generation | None] = [None] * len(batch)

        def keep(index: int, generation: Generation) -> None:
            out[index] = generation

        decoding = Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        self.play_episodes(batch, _Collector(keep), decoding)
        return out  # type: ignore[return-value] - every chat gets its completion

    # --- the episode-level protocol (rollout.EpisodeBackend) ---------------------------------------------------
    def play_episodes(self, chats: Sequence[Messages], referee: Referee, decoding: Decoding) -> None:
        """Play episode i from `chats[i]` until the referee ends it (see the module docstring)."""
        import torch

        if not chats:
            return
        prompts = self.encode_prompts(chats)
        longest = max(len(p) for p in prompts)
        if not self._fits(longest, decoding.max_new_tokens):
            raise RolloutError(
                f"{self.name} has a context of {self.context} tokens, but a chat of this rollout needs "
                f"{longest} prompt tokens + max_new_tokens={decoding.max_new_tokens}: lower max_new_tokens, use the "
                "compact prompt profile, or use a model with a longer context")
        with torch.inference_mode():
            _Run(self, prompts, referee, decoding).play()

    # --- internals -------------------------------------------------------------------------------------------
    def _fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        return self.context is None or prompt_tokens + max_new_tokens <= self.context

    def slot_cache(self, slots: int, capacity: int):
        """The KV cache, reused across calls while it has enough slots (grown to `capacity` columns)."""
        from rlheal.engine.kv import SlotCache

        if self.cache is None or self.cache.shape[0] < slots:
            layers, heads, dim = self.kv_shape
            self.cache = SlotCache(layers=layers, slots=slots, kv_heads=heads, head_dim=dim, capacity=capacity,
                                   dtype=self.model.dtype, device=self.model.device)
        self.cache.reserve(capacity)
        return self.cache

    def forward(self, chunks: list, cache: Any, *, in_place: bool = False) -> Any:
        """The last position's logits (rows, vocab) of one forward pass over `chunks` (`kv.Chunk`); an in-place
        decode pass replays its CUDA graph when graphs are on."""
        from rlheal.engine.graphs import GRAPH_WIDTH_STEP
        from rlheal.engine.kv import plan_feed

        graphed = in_place and self.graphs is not None and self.graphs.enabled
        feed = plan_feed(chunks, n_slots=cache.shape[0], capacity=cache.capacity, pad_id=self.pad_id,
                         device=self.model.device, width_step=GRAPH_WIDTH_STEP if graphed else 1)
        return self.graphs(feed, cache) if graphed else self.run_feed(feed, cache)

    def run_feed(self, feed: Any, cache: Any) -> Any:
        """The last position's logits of the model's forward pass over `feed` (`kv.Feed`) with `cache`."""
        from rlheal.engine.kv import attention_mask

        cache.start(feed)
        kwargs = {self.cache_argument: cache, "logits_to_keep": 1} if self.last_logits_only else \
            {self.cache_argument: cache}
        out = self.model(input_ids=feed.input_ids, position_ids=feed.positions, use_cache=True,
                         attention_mask=attention_mask(feed, self.mask_dtype), **kwargs)
        return out.logits[:, -1]


class _Collector:
    """A referee that keeps each episode's one attempt and ends it."""

    def __init__(self, keep: Callable[[int, Generation], None]) -> None:
        self.keep = keep

    def judge(self, index: int, generation: Generation) -> Messages | None:
        self.keep(index, generation)
        return None

    def out_of_context(self, index: int) -> None:
        """Never called: `judge` ends every episode after its one attempt."""


class _Run:
    """One `play_episodes` call: the waiting episodes, the slots, and the loop that keeps them busy."""

    def __init__(self, engine: EngineBackend, prompts: list[list[int]], referee: Referee,
                 decoding: Decoding) -> None:
        self.engine, self.referee, self.decoding = engine, referee, decoding
        # longest prompts first: longer chats tend to take longer answers, and short ones then fill the tail
        self.waiting = deque(sorted(enumerate(prompts), key=lambda item: -len(item[1])))
        self.n_used = min(engine.batch_size, len(prompts))
        longest = max(len(p) for p in prompts) + decoding.max_new_tokens
        self.cache = engine.slot_cache(self.n_used, _round_up(longest, CAPACITY_STEP, engine.context))
        self.slots = [Slot() for _ in range(self.n_used)]

    def play(self) -> None:
        while True:
            self._admit()
            busy = [i for i, s in enumerate(self.slots) if s.busy]
            if not busy:
                return
            prefill = [i for i in busy if len(self.slots[i].pending) > 1]
            decode = [i for i in busy if len(self.slots[i].pending) == 1]
            if len(prefill) >= max(1, len(busy) // PREFILL_SHARE) or not decode:
                for group in _groups(prefill, lambda i: len(self.slots[i].pending), PREFILL_TOKENS):
                    self._step(group, in_place=False)
            if decode:
                self._step(decode, in_place=True)
            self._compact()

    def _admit(self) -> None:
        for slot in self.slots:
            if not slot.busy and self.waiting:
                episode, prompt = self.waiting.popleft()
                slot.begin(episode, prompt)

    def _step(self, rows: list[int], *, in_place: bool) -> None:
        """One forward pass feeding `rows` their pending tokens, then one new token for each."""
        import torch

        from rlheal.engine.kv import Chunk
        from rlheal.engine.sampling import choose_tokens, row_keys

        chunk = {i: Chunk(i, len(self.slots[i].cached), self.slots[i].pending) for i in rows}
        chunks = [chunk.get(i, Chunk(i, 0, [])) for i in range(self.n_used)] if in_place else list(chunk.values())
        logits = self.engine.forward(chunks, self.cache, in_place=in_place)
        self.engine.fed_tokens += sum(len(self.slots[i].pending) for i in rows)
        if in_place:
            logits = logits[torch.tensor(rows, device=logits.device)]
        keys = None
        if not self.decoding.greedy:
            as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64, device=logits.device)  # noqa: E731
            keys = row_keys(self.decoding.seed, as_tensor([self.decoding.episode_offset + self.slots[i].episode
                                                           for i in rows]),
                            as_tensor([self.slots[i].attempt for i in rows]),
                            as_tensor([len(self.slots[i].completion) for i in rows]))
        tokens = choose_tokens(logits, temperature=self.decoding.temperature, top_p=self.decoding.top_p,
                               keys=keys).tolist()
        for i, token in zip(rows, tokens, strict=True):
            slot = self.slots[i]
            slot.fed()
            slot.sampled(token)
            if token in self.engine.eos_ids or len(slot.completion) >= self.decoding.max_new_tokens:
                self._end_attempt(slot)

    def _end_attempt(self, slot: Slot) -> None:
        engine = self.engine
        text = engine.tokenizer.decode(slot.completion, skip_special_tokens=True)
        nxt = self.referee.judge(slot.episode, Generation(text, list(slot.prompt), list(slot.completion)))
        if nxt is None:
            slot.release()
            return
        prompt = encode_chat(engine.tokenizer, nxt)
        if not engine._fits(len(prompt), self.decoding.max_new_tokens):
            self.referee.out_of_context(slot.episode)
            slot.release()
            return
        self.cache.reserve(_round_up(len(prompt) + self.decoding.max_new_tokens, CAPACITY_STEP, engine.context))
        slot.next_attempt(prompt)

    def _compact(self) -> None:
        """With no episode waiting and at most half the slots busy, move the busy slots to the front."""
        busy = [i for i, s in enumerate(self.slots) if s.busy]
        if self.waiting or len(busy) > self.n_used // 2:
            return
        free = [i for i in range(len(busy)) if not self.slots[i].busy]
        movers = [i for i in busy if i >= len(busy)]
        if movers:
            self.cache.move(movers, free)
            for source, target in zip(movers, free, strict=True):
                self.slots[target], self.slots[source] = self.slots[source], self.slots[target]
        self.n_used = len(busy)
        self.slots = self.slots[: self.n_used]


def _groups(rows: list[int], size: Callable[[int], int], budget: int) -> list[list[int]]:
    """`rows` sorted by `size` and cut into groups whose rows x largest size stays within `budget` (a row
    larger than the budget goes alone)."""
    groups: list[list[int]] = []
    for i in sorted(rows, key=size):
        if groups and (len(groups[-1]) + 1) * size(i) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _round_up(n: int, step: int, limit: int | None) -> int:
    rounded = -(-n // step) * step
    return rounded if limit is None else min(rounded, limit)

