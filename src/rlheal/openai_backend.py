"""A rollout backend that plays through any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, ...).

Each chat of a round is one `/v1/chat/completions` request made with the `openai` client library (an optional
dependency: `pip install "rlheal[openai]"`), sent `concurrency` at a time; the server applies the model's chat
template and decodes. Completions are text only (no token ids), so this backend evaluates; RL needs a local
backend. The server's context is not known here: `fits` says yes to every chat, and a chat the server refuses
as too long is a RolloutError naming the server's answer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlheal.rollout import Generation, Messages, RolloutError

API_KEY_ENV = "OPENAI_API_KEY"  # read when set; local servers usually accept any key


class OpenAIBackend:
    """Completions of model `model` from the server at `base_url` (e.g. http://localhost:8000/v1).

    Greedy decoding is sent as temperature 0; chat i of a round is sent with seed `seed + i` (servers that
    honour seeds, such as vLLM, then sample reproducibly). `timeout` is per request, in seconds."""

    def __init__(self, base_url: str, model: str, *, concurrency: int = 16, timeout: float = 300.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise RolloutError('the OpenAI-compatible backend needs the openai package: pip install "rlheal[openai]"'
                               ) from exc
        self.base_url, self.model, self.concurrency = base_url, model, concurrency
        self.name = f"{model} at {base_url}"
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(API_KEY_ENV) or "none", timeout=timeout,
                             max_retries=2)

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        return [True] * len(batch)

    def generate(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> list[Generation]:
        settings = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        jobs = [(messages, {**settings, "seed": (seed + i) % 2**31}) for i, messages in enumerate(batch)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(jobs)))) as pool:
            return list(pool.map(lambda job: self._complete(*job), jobs))

    def _complete(self, messages: Messages, settings: dict[str, Any]) -> Generation:
        import openai

        try:
            response = self.client.chat.completions.create(model=self.model, messages=list(messages), n=1,
                                                           **settings)
        except openai.APIConnectionError as exc:
            raise RolloutError(f"cannot reach the server at {self.base_url} ({exc}): start it, or check --base-url"
                               ) from exc
        except openai.APIError as exc:
            raise RolloutError(f"the server at {self.base_url} refused a chat completion for {self.model}: {exc}. "
                               "Check --model; a chat the server finds too long needs a lower --max-new-tokens, "
                               "fewer attempts, or a longer context on the server") from exc
        if not response.choices:
            raise RolloutError(f"the server at {self.base_url} answered a chat completion without choices")
        return Generation(response.choices[0].message.content or "")
