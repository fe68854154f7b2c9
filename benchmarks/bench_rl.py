"""PPO throughput: updates per second and episodes per second through the whole update (rollout with the
revision protocol, scoring by policy and frozen start, GAE, 4 epochs of minibatches, no checkpoint saves).

The model is a randomly initialised Llama of the built-in shape (`bench_eval.random_builtin_shape`: hidden 128,
4 layers, character tokenizer). A random model never solves a problem and rarely emits eos, so each episode
uses every attempt at full `max_new_tokens`: the worst case for the rollout and the scoring. Its rewards would
all be equal (no learning signal, so no optimiser step); the benchmark adds 0.1 × (len(text) mod 3) to each
reward so that every update runs its 4 epochs of minibatches.

    python benchmarks/bench_rl.py --task gp24 --episodes 8 --max-attempts 2 --max-new-tokens 32 --updates 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from bench_eval import random_builtin_shape


def with_signal(task):
    """`task` with 0.1 × (len(text) mod 3) added to every reward, so that a random model's batch has spread."""
    from dataclasses import replace

    class WithSignal(type(task)):
        def verify(self, problem, text):
            verdict = super().verify(problem, text)
            return replace(verdict, reward=verdict.reward + 0.1 * (len(text) % 3))

    return WithSignal(task.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="gp24")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per update")
    parser.add_argument("--max-attempts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--minibatch-size", type=int, default=16)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from rlheal.tasks import get_task
    from rlheal.train.ppo import PPOConfig, train_ppo

    if args.threads:
        torch.set_num_threads(args.threads)
    config = PPOConfig(task=args.task, episodes_per_update=args.episodes, max_attempts=args.max_attempts,
                       max_new_tokens=args.max_new_tokens, minibatch_size=args.minibatch_size,
                       updates=args.updates, save_every=10**6, temperature=1.0)
    task = with_signal(get_task(args.task))
    with tempfile.TemporaryDirectory() as tmp:
        start = random_builtin_shape(Path(tmp) / "base")
        began = time.perf_counter()
        result = train_ppo(start, Path(tmp) / "rl", config, task=task, show_progress=False)
        total = time.perf_counter() - began
    update_seconds = [r["seconds"] for r in result.rows]
    report = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "config": {k: getattr(config, k) for k in ("task", "episodes_per_update", "max_attempts", "max_new_tokens",
                                                    "minibatch_size", "epochs", "updates")},
        "steps_per_update": [r["n_steps"] for r in result.rows],
        "no_signal": [r["no_signal"] for r in result.rows],
        "seconds_per_update": [round(s, 2) for s in update_seconds],
        "updates_per_s": round(len(update_seconds) / sum(update_seconds), 4),
        "episodes_per_s": round(config.episodes_per_update * len(update_seconds) / sum(update_seconds), 3),
        "wall_s_with_setup_and_last_save": round(total, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
