"""Step time of each SFT method (`sft.method`) on the built-in det base, side by side in one process: how much the
rotation penalty, LoRA and σ-only training cost against plain full SFT.

    python benchmarks/bench_sft_methods.py [--steps 40] [--repeats 3] [--threads 1]

Each round runs every method for `--steps` SFT steps (batch 16, the default study's SFT settings, checkpoints only
at step 0 and the last) and divides the whole `run_sft` time by the steps (loading, the two saves and their
loss evaluations are the same work for every method), as wall time and as this process's CPU time (what a
shared machine's load changes least); odd rounds run the methods in reverse order. An untimed warm-up run comes
first. Prints one JSON line per (round, method) and a summary of medians.
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


def run(method: str, settings: dict, steps: int, folder: Path) -> tuple[float, float]:
    """(wall, CPU) seconds per SFT step of `method` (the whole `run_sft` over the steps)."""
    from rlheal.config import StudyConfig
    from rlheal.store import Store
    from rlheal.train.sft import run_sft

    cfg = StudyConfig().sft.model_copy(update={"steps": steps, "schedule": [0, steps], "method": method, **settings})
    started, cpu = time.perf_counter(), time.process_time()
    with Store(folder) as store:
        run_sft(cfg, folder, store, progress=False)
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        run("full", {}, 4, Path(tmp) / "warm-up")
        for round_ in range(args.repeats):
            order = list(METHODS.items())
            for method, settings in order if round_ % 2 == 0 else order[::-1]:
                w, c = run(method, settings, args.steps, Path(tmp) / f"{method}-{round_}")
                wall[method].append(w)
                cpu[method].append(c)
                print(json.dumps({"round": round_, "method": method, "wall_s_per_step": round(w, 4),
                                  "cpu_s_per_step": round(c, 4)}), flush=True)
    summary = {}
    for m in METHODS:
        summary[m] = {"median_wall_s_per_step": round(statistics.median(wall[m]), 4),
                      "median_cpu_s_per_step": round(statistics.median(cpu[m]), 4),
                      "cpu_vs_full": round(statistics.median(cpu[m]) / statistics.median(cpu["full"]), 3)}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
