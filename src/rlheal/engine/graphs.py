"""CUDA-graph decoding: the engine's in-place decode pass captured once per (rows, width) and replayed.

A decode pass feeds every slot in use one token; its shapes depend only on the number of slots in use and the
attention width (rounded up to `GRAPH_WIDTH_STEP`), so a graph captured for one pair replays every later pass
of the same pair with the new tokens, positions and columns copied into its static inputs. The graph writes
into the cache's buffers as they were at capture: when the cache reallocates them (it grew) every graph is
dropped and recaptured. A capture that fails switches graphs off for the engine, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rlheal.engine.kv import Feed, SlotCache

GRAPH_WIDTH_STEP = 256  # widths of captured passes are multiples of this (fewer graphs)

log = logging.getLogger(__name__)

Run = Callable[[Feed, SlotCache], Any]  # one forward pass: (feed, cache) -> last-position logits
Capture = Callable[[Run, Feed, SlotCache], Callable[[], Any]]  # -> a replay that runs `run` on the static feed


def cuda_capture(run: Run, feed: Feed, cache: SlotCache, pool: Any = None) -> Callable[[], Any]:
    """Capture `run(feed, cache)` in a CUDA graph (after two warm-up passes on a side stream, as PyTorch's
    guide does); returns the graph's replay, which leaves its output in the tensor the capture returned."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run(feed, cache)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run(feed, cache)

    def replay() -> Any:
        graph.replay()
        return out

    return replay


class DecodeGraphs:
    """The captured decode passes of one engine (see the module docstring). `capture` is how a pass is captured
    (`cuda_capture` on a GPU; tests pass an eager stand-in)."""

    def __init__(self, run: Run, capture: Capture | None = None) -> None:
        self.run = run
        self.capture = capture or self._cuda_capture
        self.enabled = True
        self._graphs: dict[tuple, tuple[Feed, Callable[[], Any]]] = {}
        self._buffers: tuple | None = None
        self._pool: Any = None

    def __call__(self, feed: Feed, cache: SlotCache) -> Any:
        """The logits of the in-place decode pass `feed` (slots 0..rows-1), replayed from its graph."""
        buffers = (id(cache), cache.capacity)
        if buffers != self._buffers:
            self._graphs.clear()
            self._buffers = buffers
        key = (feed.input_ids.shape[0], feed.width)
        if key not in self._graphs:
            static = replace(feed, input_ids=feed.input_ids.clone(), positions=feed.positions.clone(),
                             columns=feed.columns.clone())
            try:
                self._graphs[key] = (static, self.capture(self.run, static, cache))
            except Exception as exc:  # noqa: BLE001 - any capture failure: play on without graphs
                log.warning("CUDA-graph capture of the decode pass failed (%s); decoding without graphs", exc)
                self.enabled = False
                return self.run(feed, cache)
        static, replay = self._graphs[key]
        static.input_ids.copy_(feed.input_ids)
        static.positions.copy_(feed.positions)
        static.columns.copy_(feed.columns)
        return replay()

    def _cuda_capture(self, run: Run, feed: Feed, cache: SlotCache) -> Callable[[], Any]:
        import torch

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return cuda_capture(run, feed, cache, self._pool)
