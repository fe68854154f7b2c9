"""Evaluation throughput: episodes per second through the real rollout path (`play` + verify), today's
`HFBackend` (Hugging Face `generate` per round) against the episode engine, side by side in one process.

`--model`: a checkpoint folder, a folder of checkpoints (e.g. `RUN/sft`: every `step-*` in it, in step
order), `builtin` (the shipped default base) or `random` (a randomly initialised Llama of the built-in shape:
it almost never emits eos nor a correct answer, so every episode uses every attempt at full
`max_new_tokens`, the worst case). For every repeat, checkpoint, split and batch size, each backend plays the
same eval set (the order of the backends rotates from one to the next, so both see the same load), and the
script checks that they played the same tokens and give the same `evals` row (`evaluate.summarize`). Wall
seconds and the process's CPU seconds are both reported: on a shared machine CPU seconds are the steadier.

    python benchmarks/bench_eval.py --model runs/RUN/sft --task det --splits id,ood --episodes 300 \
        --max-attempts 1 --max-new-tokens 176 --batch-sizes 100 --repeats 3 --threads 1
    python benchmarks/bench_eval.py --model random --task gp24 --split ood --episodes 32 --batch-sizes 8,32 \
        --backends hf --caches static,dynamic --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
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


def model_folders(name: str, tmp: Path) -> list[Path]:
    """The checkpoint folders `--model` names (see the module docstring)."""
    from rlheal.models.checkpoint import read_manifest

    if name == "random":
        return [random_builtin_shape(tmp / "random")]
    if name == "builtin":
        from rlheal.models.builtin import DEFAULT_RECIPE, builtin_base

        return [builtin_base(DEFAULT_RECIPE)]
    folder = Path(name)
    if (folder / "config.json").exists():
        return [folder]
    found = [p for p in folder.glob("step-*") if (p / "config.json").exists()]
    return sorted(found, key=lambda p: read_manifest(p).step)


def backends(model, tokenizer, names: list[str], batch_size: int, caches: list[str]) -> list[tuple[str, object]]:
    from rlheal.engine import EngineBackend
    from rlheal.rollout import HFBackend

    out: list[tuple[str, object]] = []
    for name in names:
        if name == "hf":
            out += [(f"hf-{c}", HFBackend(model, tokenizer, batch_size=batch_size, cache=c)) for c in caches]
        elif name == "engine":
            out.append(("engine", EngineBackend(model, tokenizer, batch_size=batch_size)))
        else:
            raise SystemExit(f"unknown backend {name!r}: hf or engine")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="random, builtin, a checkpoint folder or a folder of them")
    parser.add_argument("--task", default="gp24")
    parser.add_argument("--splits", "--split", default="ood", help="comma-separated splits")
    parser.add_argument("--profile", default="compact")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--max-attempts", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--backends", default="hf,engine", help="hf and/or engine")
    parser.add_argument("--caches", default="auto", help="HFBackend's KV cache layouts: auto, static, dynamic")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from rlheal.evaluate import eval_problems, summarize
    from rlheal.models.checkpoint import load_model
    from rlheal.rollout import Decoding, play
    from rlheal.tasks import get_task

    task = get_task(args.task, args.profile)
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    splits = args.splits.split(",")
    totals: dict[str, dict[str, float]] = {}
    same_rows = same_tokens = combinations = 0
    turn = 0
    with tempfile.TemporaryDirectory() as tmp:
        folders = model_folders(args.model, Path(tmp))
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch threads "
              f"{torch.get_num_threads()}, {len(folders)} checkpoint(s) of {args.model}, {args.task} "
              f"{'/'.join(splits)} {args.profile}, {args.episodes} episodes, greedy, max_new_tokens "
              f"{args.max_new_tokens}, max_attempts {args.max_attempts}, {args.repeats} repeat(s)", flush=True)
        for repeat in range(args.repeats):
            for folder in folders:
                model, tokenizer = load_model(folder)
                for split in splits:
                    problems = eval_problems(task, split, seed=0, episodes=args.episodes)
                    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                        ways = backends(model, tokenizer, args.backends.split(","), batch_size,
                                        args.caches.split(","))
                        turn += 1
                        ways = ways[turn % len(ways):] + ways[:turn % len(ways)]
                        results = {}
                        for name, backend in ways:
                            wall, cpu = time.perf_counter(), time.process_time()
                            played = play(task, problems, backend, max_attempts=args.max_attempts,
                                          decoding=decoding)
                            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                            tokens = [g.completion_ids for pe in played for g in pe.generations]
                            fed = getattr(backend, "fed_tokens", None)
                            results[name] = (summarize([pe.episode for pe in played]),
                                             hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16])
                            total = totals.setdefault(name, {"episodes": 0, "wall_s": 0.0, "cpu_s": 0.0})
                            total["episodes"] += len(played)
                            total["wall_s"] += wall
                            total["cpu_s"] += cpu
                            print(json.dumps({
                                "repeat": repeat, "checkpoint": folder.name, "split": split,
                                "batch_size": batch_size, "backend": name, "wall_s": round(wall, 2),
                                "cpu_s": round(cpu, 2), "episodes_per_s": round(len(played) / wall, 2),
                                "new_tokens": sum(len(t) for t in tokens),
                                "prompt_tokens": sum(len(g.prompt_ids) for pe in played for g in pe.generations),
                                "engine_fed_tokens": fed,
                                "success_rate": results[name][0]["success_rate"],
                                "mean_attempts": results[name][0]["mean_attempts"], "tokens": results[name][1]}),
                                flush=True)
                        rows, hashes = zip(*results.values(), strict=True)
                        combinations += 1
                        same_rows += all(r == rows[0] for r in rows)
                        same_tokens += len(set(hashes)) == 1
    summary = {name: {**t, "episodes_per_s": round(t["episodes"] / t["wall_s"], 2),
                      "episodes_per_cpu_s": round(t["episodes"] / t["cpu_s"], 2)} for name, t in totals.items()}
    print(json.dumps({"summary": summary, "combinations": combinations, "identical_rows": same_rows,
                      "identical_tokens": same_tokens}))


if __name__ == "__main__":
    main()
