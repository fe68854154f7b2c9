"""The facts a report opens with: which model and config made the run, its seed, and the versions and machine
that computed it. A study's `RUN/study.json` says most of it; a store filled by `rlheal eval` alone is
described by its rows. Values are shown as text, never interpreted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_VERSIONS = ("rlheal", "torch", "transformers", "trl", "python")


def _study_record(run: Path) -> dict[str, Any]:
    """RUN/study.json as a dict, or {} when absent or not a study record."""
    try:
        record = json.loads((run / "study.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else {}


def run_facts(run: str | Path, evals: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(name, value) pairs: model, config, seed, versions, machine."""
    record = _study_record(Path(run))
    config = record.get("config", {})
    latest = max(evals, key=lambda r: str(r.get("created") or ""), default={})
    versions = record.get("versions") if isinstance(record.get("versions"), dict) else latest.get("versions") or {}
    facts = []
    if config:
        facts.append(("model", str(config.get("model"))))
        sft, ev = config.get("sft") or {}, config.get("eval") or {}
        facts.append(("config", f"fingerprint {record.get('fingerprint')} (RUN/study.json); tasks "
                                f"{', '.join(map(str, config.get('tasks') or []))}; SFT {sft.get('steps')} steps at lr "
                                f"{sft.get('lr')}; RL {(config.get('rl') or {}).get('algo')}; eval {ev.get('episodes')} "
                                f"held-out problems per split"))
        facts.append(("seed", str(config.get("seed"))))
    else:
        stages = sorted({str(r.get("stage")) for r in evals})
        facts.append(("model", f"checkpoints evaluated with rlheal eval (stages {', '.join(stages) or 'none'}); "
                               "no study.json"))
    if isinstance(versions, dict) and versions:
        facts.append(("versions", ", ".join(f"{name} {versions[name]}" for name in _VERSIONS if name in versions)))
        facts.append(("machine", f"{versions.get('cpu', 'unknown CPU')}, {versions.get('torch_threads', '?')} torch "
                                 "threads"))
    return facts
