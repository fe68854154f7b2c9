"""What each KV slot holds and what it must be fed next: pure bookkeeping, no tensors.

A slot runs one episode at a time. `cached` are the tokens whose keys and values sit in the slot (columns
0..len-1); `pending` are the tokens the next forward pass feeds it (a whole prompt, the part of the next
attempt's prompt that differs from what is cached, or the one token sampled last). When an attempt ends, the
next attempt's prompt keeps the longest prefix it shares with the cache, so only the new feedback turn is
prefilled; when the chat was re-tokenised differently, the cache is cut back to where the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Slot:
    """One KV slot: the episode it plays (None: free), the attempt's prompt and completion so far."""

    episode: int | None = None
    attempt: int = 0
    cached: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.episode is not None

    def begin(self, episode: int, prompt: list[int]) -> None:
        """Take a new episode: nothing of it is cached; its first prompt is pending."""
        self.episode, self.attempt, self.cached = episode, 0, []
        self._prompt(prompt)

    def next_attempt(self, prompt: list[int]) -> None:
        """Start the next attempt of the same episode from its whole chat `prompt` (which normally begins with
        every cached token): keep the shared prefix, feed the rest (at least one token, for the logits)."""
        keep = min(common_prefix(self.cached, prompt), len(prompt) - 1)
        self.attempt += 1
        self.cached = self.cached[:keep]
        self._prompt(prompt)

    def _prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise ValueError("an attempt needs a prompt of at least one token")
        self.prompt, self.completion = list(prompt), []
        self.pending = self.prompt[len(self.cached):]

    def fed(self) -> None:
        """The pending tokens went through the model: they are cached now."""
        self.cached += self.pending
        self.pending = []

    def sampled(self, token: int) -> None:
        """A new token of the attempt; it is fed next unless the attempt ends."""
        self.completion.append(token)
        self.pending = [token]

    def release(self) -> None:
        """The episode is over: the slot is free (its columns are overwritten by the next episode)."""
        self.episode, self.cached, self.pending = None, [], []
