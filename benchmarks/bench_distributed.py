"""Wall time of SFT and PPO on the built-in tiny model: one process against two CPU processes (accelerate launch,
gloo) on the same global batch. Prints one JSON line per (stage, processes).

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py [--sft-steps 20] [--ppo-updates 3]

Each run is a fresh process (model load and process-group start included), as a user would launch it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(stage: str, out: str, processes: int, size: int) -> None:
    """One run of `stage` into `out` (called on every process)."""
    from rlheal.distributed import ensure_process_group
    from rlheal.store import Store

    ensure_process_group()
    with Store(out) as store:
        if stage == "sft":
            from rlheal.train.sft import SFTConfig, run_sft

            cfg = SFTConfig(model="builtin:tiny", tasks=["gp24"], n_train=256, steps=size, batch_size=8 // processes,
                            warmup_steps=1, schedule=[0, size], loss_eval_n=8, max_length=128)
            run_sft(cfg, out, store, progress=False)
        else:
            from rlheal.train.ppo import PPOConfig, train_ppo
            from rlheal.train.sft import resolve_model

            cfg = PPOConfig(task="gp24", updates=size, episodes_per_update=16, minibatch_size=8, epochs=1,
                            max_new_tokens=24, rollout_batch_size=8, value_warmup=0, temperature=1.0)
            train_ppo(resolve_model("builtin:tiny", progress=False), Path(out) / "rl", cfg, store=store,
                      show_progress=False)


def timed(stage: str, processes: int, size: int) -> float:
    from rlheal.distributed import free_port

    with tempfile.TemporaryDirectory() as out:
        args = [__file__, "--worker", stage, "--out", out, "--processes", str(processes), "--size", str(size)]
        if processes > 1:
            port = free_port()
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--main_process_port", str(port),
                       "--mixed_precision", "no", "--dynamo_backend", "no", *args]
        else:
            command = [sys.executable, *args]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{stage} on {processes} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--ppo-updates", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--out")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--size", type=int)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.processes, args.size)
        return
    timed("sft", 1, 1)  # builds the tiny base into the cache once, outside the timings
    for stage, size in (("sft", args.sft_steps), ("ppo", args.ppo_updates)):
        for processes in (1, 2):
            print(json.dumps({"stage": stage, "size": size, "processes": processes,
                              "wall_s": round(timed(stage, processes, size), 1)}), flush=True)


if __name__ == "__main__":
    main()
