"""Samples: every played episode as one JSON line (its chat, each verdict, where it came from), so that a
success rate of 0 % can be read answer by answer.

The files lie beside the results store, `RUN/samples/eval.jsonl` and `RUN/samples/rl.jsonl`, and only grow.
A line is written when its episodes are done; a killed run may repeat the lines of the episodes in flight
when it resumes (the last line of an episode wins). Model output is data: it is written as JSON strings and
never interpreted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SAMPLES_DIR = "samples"


def episode_record(played: Any, context: Mapping[str, Any]) -> dict[str, Any]:
    """One line's record of a played episode (`rollout.PlayedEpisode`): `context` (checkpoint, split, ...),
    then the problem, the whole chat, each attempt's verdict, the attempt that solved it (0: none) and why it
    stopped early, if it did."""
    episode = played.episode
    return {
        **context,
        "problem": episode.problem.key,
        "data": episode.problem.data,
        "messages": episode.messages(),
        "verdicts": [{"correct": v.correct, "reward": v.reward, "kind": v.kind, "format_ok": v.format_ok,
                      "feedback": v.feedback} for v in episode.verdicts],
        "solved_at": next((i + 1 for i, v in enumerate(episode.verdicts) if v.correct), 0),
        "stopped": played.stopped,
    }


class SampleLog:
    """Appends episode records to `RUN/samples/<kind>.jsonl` (`kind`: eval or rl)."""

    def __init__(self, run: str | Path, kind: str) -> None:
        self.path = Path(run) / SAMPLES_DIR / f"{kind}.jsonl"

    def write(self, played: Sequence[Any], context: Mapping[str, Any]) -> None:
        """One line per episode of `played`, each with `context`."""
        self.write_records(episode_record(pe, context) for pe in played)

    def write_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
