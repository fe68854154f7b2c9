"""Evaluation throughput: episodes per second through the real rollout path (HFBackend + play + verify).

The model is the built-in base when it is already cached (`--model builtin`, never built here), a checkpoint
folder (`--model runs/RUN/sft/step-000299`), else a randomly initialised Llama of the built-in shape (hidden
128, 4 layers, 4 heads, intermediate 512, the built-in character tokenizer, context 1024): `--model random`. A random model almost never emits its eos
token nor a correct answer, so each episode uses every attempt at full `max_new_tokens`: the worst case.

    python benchmarks/bench_eval.py --model random --task gp24 --split ood --episodes 32 --batch-sizes 1,8,32 \
        --threads 1
    python benchmarks/bench_eval.py --model runs/r7-full-s0/sft/step-000299 --episodes 100 --batch-sizes 100 \
        --max-new-tokens 56 --caches static,dynamic
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def random_builtin_shape(folder: Path) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from rlheal.models.builtin import ModelSpec, llama_config
    from rlheal.models.checkpoint import Manifest, save_model
    from rlheal.models.tokenizer import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(ModelSpec(), tokenizer))
    return save_model(model, tokenizer, folder, Manifest(stage="base", step=0, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="random, builtin, or a checkpoint folder")
    parser.add_argument("--task", default="gp24")
    parser.add_argument("--split", default="ood")
    parser.add_argument("--profile", default="compact")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--max-attempts", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--caches", default="auto", help="KV cache layouts to compare: auto, static, dynamic")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from rlheal.evaluate import eval_problems, summarize
    from rlheal.models.checkpoint import load_model
    from rlheal.rollout import Decoding, HFBackend, play
    from rlheal.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "builtin":
            from rlheal.models.builtin import base_folder

            folder = base_folder()
            if not folder.exists():
                raise SystemExit(f"no cached built-in base at {folder}: build it first (`rlheal base`)")
        elif args.model == "random":
            folder = random_builtin_shape(Path(tmp) / "random")
        else:
            folder = Path(args.model)
        model, tokenizer = load_model(folder)
        task = get_task(args.task, args.profile)
        problems = eval_problems(task, args.split, seed=0, episodes=args.episodes)
        decoding = Decoding(max_new_tokens=args.max_new_tokens)
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch threads "
              f"{torch.get_num_threads()}, model {args.model} ({sum(p.numel() for p in model.parameters())} "
              f"parameters), {args.task}/{args.split} {args.profile}, {args.episodes} episodes, greedy, "
              f"max_new_tokens {args.max_new_tokens}")
        runs = [(int(b), c) for b in args.batch_sizes.split(",") for c in args.caches.split(",")]
        for batch_size, cache in runs:
            backend = HFBackend(model, tokenizer, batch_size=batch_size, name=str(folder), cache=cache)
            started = time.perf_counter()
            played = play(task, problems, backend, max_attempts=args.max_attempts, decoding=decoding)
            seconds = time.perf_counter() - started
            metrics = summarize([pe.episode for pe in played])
            tokens = sum(len(g.completion_ids) for pe in played for g in pe.generations)
            print(json.dumps({
                "batch_size": batch_size, "cache": backend.cache, "seconds": round(seconds, 2),
                "episodes_per_s": round(len(played) / seconds, 3),
                "attempts_per_s": round(metrics["mean_attempts"] * len(played) / seconds, 2),
                "new_tokens_per_s": round(tokens / seconds, 1), "mean_attempts": metrics["mean_attempts"],
                "success_rate": metrics["success_rate"],
            }))


if __name__ == "__main__":
    main()
