"""PPO throughput: seconds per whole update (rollout with the revision protocol, scoring by the policy and the
frozen start, GAE, 4 epochs of minibatches; no checkpoint saves), this source tree against another one.

`--start`: an SFT checkpoint (e.g. `RUN/sft/step-000013` of the default study), or `random` (a randomly
initialised Llama of the built-in shape, `bench_eval.random_builtin_shape`: it never solves a problem and
rarely emits eos, so every episode uses every attempt at full `max_new_tokens`; its rewards would all be equal,
so 0.1 × (len(text) mod 3) is added to each reward to keep every update's 4 epochs running). The PPO settings
are the default study's (`configs/default.yaml`, rl.ppo) unless given. With `--before-src DIR` (the `src/` of
an earlier version, e.g. unpacked with `git archive`), each repeat runs the same updates in two fresh
processes, one per source tree, in alternating order, and reports `rl_updates.seconds` of each update and the
process's CPU seconds.

    python benchmarks/bench_rl.py --start runs/RUN/sft/step-000013 --task det --updates 2 --repeats 3 \
        --threads 1 --before-src /tmp/before/src
    python benchmarks/bench_rl.py --task gp24 --episodes 8 --max-attempts 2 --max-new-tokens 32 --updates 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval import random_builtin_shape

HERE = Path(__file__).resolve().parent


def with_signal(task):
    """`task` with 0.1 × (len(text) mod 3) added to every reward, so that a random model's batch has spread."""
    from dataclasses import replace

    class WithSignal(type(task)):
        def verify(self, problem, text):
            verdict = super().verify(problem, text)
            return replace(verdict, reward=verdict.reward + 0.1 * (len(text) % 3))

    return WithSignal(task.profile)


def run_updates(args: argparse.Namespace) -> dict:
    """Train `args.updates` PPO updates in this process; the numbers of each."""
    import torch

    import rlheal
    from rlheal.config import load_config
    from rlheal.tasks import get_task
    from rlheal.train.ppo import PPOConfig, train_ppo

    if args.threads:
        torch.set_num_threads(args.threads)
    study = load_config(None).rl.ppo.model_dump()
    overrides = {"task": args.task, "updates": args.updates, "save_every": 10**6}
    for key in ("episodes_per_update", "max_attempts", "max_new_tokens", "minibatch_size", "temperature"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = PPOConfig(**{**study, **overrides})
    task = get_task(args.task)
    began = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        start = random_builtin_shape(Path(tmp) / "base") if args.start == "random" else Path(args.start)
        if args.start == "random":
            task = with_signal(task)
        result = train_ppo(start, Path(tmp) / "rl", config, task=task, show_progress=False)
    return {"seconds_per_update": [round(r["seconds"], 2) for r in result.rows],
            "steps_per_update": [r["n_steps"] for r in result.rows],
            "no_signal": [r["no_signal"] for r in result.rows], "cpu_s": round(time.process_time() - began, 1),
            "rlheal": str(Path(rlheal.__file__).parent),
            "config": {k: getattr(config, k) for k in ("task", "episodes_per_update", "max_attempts", "max_new_tokens",
                                                       "minibatch_size", "epochs", "temperature", "value_warmup")}}


def in_process(src: Path, argv: list[str]) -> dict:
    """`run_updates` in a fresh process importing rlheal from `src`."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--one"], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the run with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default="random", help="an SFT checkpoint folder, or random")
    parser.add_argument("--task", default="gp24")
    parser.add_argument("--episodes", dest="episodes_per_update", type=int, default=None, help="episodes per update")
    parser.add_argument("--max-attempts", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--minibatch-size", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--before-src", type=Path, default=None, help="the src/ of another version to compare")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_updates(args)))
        return

    argv = [a for a in sys.argv[1:] if a != "--one"]
    if "--before-src" in argv:
        i = argv.index("--before-src")
        del argv[i:i + 2]
    trees = [("ours", HERE.parent / "src")] + ([("before", args.before_src.resolve())] if args.before_src else [])
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, start {args.start}, "
          f"{args.updates} update(s) x {args.repeats} repeat(s)", flush=True)
    for repeat in range(args.repeats):
        order = trees if repeat % 2 == 0 else trees[::-1]
        for name, src in order:
            result = in_process(src, argv)
            per_update = result["seconds_per_update"]
            print(json.dumps({"repeat": repeat, "tree": name, **result,
                              "mean_s_per_update": round(sum(per_update) / len(per_update), 2)}), flush=True)


if __name__ == "__main__":
    main()
