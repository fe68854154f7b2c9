"""Step time of each SFT method (`sft.method`) on the built-in det base, side by side in one process: how much the
rotation penalty, LoRA and σ-only training cost against plain full SFT.

    python benchmarks/bench_sft_methods.py [--steps 40] [--repeats 3] [--threads 1]

Each round runs every method for `--steps` SFT steps (batch 16, the default study's SFT settings, checkpoints only
at step 0 and the last) and divides the whole `run_sft` wall time by the steps (loading, the two saves and their
loss evaluations are the same work for every method); rounds alternate the methods so that a shared machine's
load falls on all of them alike. Prints one JSON line per (round, method) and a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

METHODS = {"full": {}, "rotation_penalty": {"penalty_weight": 1.0, "penalty_k": 0.2}, "lora": {"lora_rank": 8},
           "sigma_only": {}}


def run(method: str, settings: dict, steps: int, folder: Path) -> float:
    """Seconds per SFT step of `method` (whole `run_sft` wall time over the steps)."""
    from rlheal.config import StudyConfig
    from rlheal.store import Store
    from rlheal.train.sft import run_sft

    cfg = StudyConfig().sft.model_copy(update={"steps": steps, "schedule": [0, steps], "method": method, **settings})
    started = time.perf_counter()
    with Store(folder) as store:
        run_sft(cfg, folder, store, progress=False)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for method, settings in METHODS.items():
                per_step = run(method, settings, args.steps, Path(tmp) / f"{method}-{round_}")
                seconds[method].append(per_step)
                print(json.dumps({"round": round_, "method": method, "s_per_step": round(per_step, 4)}), flush=True)
    full = statistics.median(seconds["full"])
    print(json.dumps({m: {"median_s_per_step": round(statistics.median(v), 4),
                          "vs_full": round(statistics.median(v) / full, 3)} for m, v in seconds.items()}, indent=1))


if __name__ == "__main__":
    main()
