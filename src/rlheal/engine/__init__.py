"""The episode engine (`EngineBackend`): whole episodes on a causal LM, KV slots kept across attempts, and
`model_backend`, the one place that turns a loaded model into a rollout backend."""

from __future__ import annotations

import logging
from typing import Any

from rlheal.engine.backend import EngineBackend
from rlheal.rollout import Backend, EpisodeBackend, HFBackend, RolloutError

BACKENDS = ("engine", "hf")  # local rollout backends: the episode engine, or Hugging Face generate per round

log = logging.getLogger(__name__)


def model_backend(model: Any, tokenizer: Any, *, kind: str = "engine", batch_size: int = 16,
                  name: str = "the model") -> Backend | EpisodeBackend:
    """A rollout backend on a loaded model: "engine" (`EngineBackend`, `batch_size` episodes in flight; a model it cannot
    drive falls back to `HFBackend`, with a warning saying why) or "hf" (`HFBackend`, batches of `batch_size`)."""
    if kind not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if kind == "engine":
        try:
            return EngineBackend(model, tokenizer, batch_size=batch_size, name=name)
        except RolloutError as exc:
            if not getattr(tokenizer, "chat_template", None):
                raise
            log.warning("%s; playing with Hugging Face generate instead", exc)
    return HFBackend(model, tokenizer, batch_size=batch_size, name=name)


__all__ = ["BACKENDS", "EngineBackend", "model_backend"]
