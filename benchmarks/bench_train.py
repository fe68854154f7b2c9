"""Benchmarks of the built-in model and SFT on this machine (results go to docs/BENCHMARKS.md).

    python benchmarks/bench_train.py pretrain          # build the default base in a fresh cache: wall time
    python benchmarks/bench_train.py sft --steps 20 [--gradient-checkpointing]  # SFT tokens/s on the built-in base
    python benchmarks/bench_train.py probe --n 100     # what the base can do, in its own answer format
    python benchmarks/bench_train.py failures --model RUN/sft/step-002000 --n 100 [--task gp24-low]  # why they fail
    python benchmarks/bench_train.py failures --model CKPT --n 300 --id-max-rank 9  # ID: hands without a 10 only
    python benchmarks/bench_train.py det-strategy --model CKPT [CKPT ...] --n 100  # det: worked out or direct?
    python benchmarks/bench_train.py det-steps --model CKPT [CKPT ...] --n 100     # det 3x3: which step fails?

`--threads N` sets torch's intra-op threads (default: torch's own choice). `probe` plays gp24 episodes
(5 attempts, revision feedback, greedy) on the eval problems, reading answers in the pretraining world's
format (`<formula> = <value>`) instead of the compact SFT format, to show the ability the base has before SFT.
`failures` counts the verifier's verdict kinds of greedy first attempts in the compact format (ID and OOD),
how often the answer's `numbers:` field states the card values under the prompt's rule, and how often it
states them under the ID rule instead (J/Q/K = 10: the paper's OOD failure, reading the wrong rule).
`det-strategy` sorts greedy first attempts on the det eval problems (ID 2x2, OOD 3x3) by how they are written:
`working` (a cofactor working as the `builtin:det` base writes it, then `answer:`), `direct` (`answer: N`
alone, the SFT answer) or `other`, with how many of each are right. `det-steps` checks the OOD (3x3) workings
step by step (`rlheal.models.world.check_det_working`): matrix entries copied into the three minors, the
minors' values, and the final cofactor sum from the working's own minors.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path


def bench_pretrain(args) -> dict:
    from rlheal.models.builtin import DEFAULT_RECIPE, builtin_base
    from rlheal.models.checkpoint import read_manifest

    cache = Path(args.cache or tempfile.mkdtemp(prefix="rlheal-bench-"))
    started = time.perf_counter()
    folder = builtin_base(DEFAULT_RECIPE, progress=not args.quiet, cache=cache)
    extra = read_manifest(folder).extra
    wall = time.perf_counter() - started
    return {"folder": str(folder), "wall_s": round(wall, 1), "trained_tokens": extra["trained_tokens"],
            "n_parameters": extra["n_parameters"], "final_loss": round(extra["final_loss"], 3),
            "tokens_per_s_overall": round(extra["trained_tokens"] / wall)}


def bench_sft(args) -> dict:
    from rlheal.models.checkpoint import load_model
    from rlheal.store import Store
    from rlheal.tasks import get_task
    from rlheal.train.sft import SFTConfig, answer_token_batch, resolve_model, run_sft, sft_examples

    cfg = SFTConfig(steps=args.steps, schedule=[args.steps], loss_eval_n=8, n_train=args.steps * 16,
                    gradient_checkpointing=args.gradient_checkpointing)
    _, tokenizer = load_model(resolve_model(cfg.model, progress=not args.quiet))
    examples = sft_examples([get_task(t) for t in cfg.tasks], cfg.n_train, cfg.train_seed)
    pairs = [(e["prompt"][0]["content"], e["completion"][0]["content"]) for e in examples]
    mean_tokens = sum(len(ids) for ids in answer_token_batch(tokenizer, pairs)[0]) / len(pairs)
    out = Path(tempfile.mkdtemp(prefix="rlheal-bench-sft-"))
    with Store(out) as store:
        run_sft(cfg, out, store, progress=not args.quiet)
    log = json.loads((out / "sft" / "train_log.json").read_text())
    tokens = cfg.steps * cfg.batch_size * mean_tokens
    return {"steps": cfg.steps, "batch_size": cfg.batch_size, "mean_tokens_per_example": round(mean_tokens, 1),
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "wall_s_incl_2_loss_evals_and_1_save": log["wall_s"], "tokens_per_s": round(tokens / log["wall_s"])}


def bench_probe(args) -> dict:
    from rlheal.evaluate import eval_problems
    from rlheal.models.checkpoint import load_model
    from rlheal.rollout import HFBackend, play
    from rlheal.tasks import get_task
    from rlheal.tasks.gp24 import GeneralPoints, judge_formula
    from rlheal.train.sft import resolve_model

    class WorkedFormat(GeneralPoints):
        """gp24 read in the pretraining world's layouts (`<values> -> <formula> = <value>`, ...)."""

        def verify(self, problem, text):
            text = re.split(r"->|, so|solution:|;|\]", text, maxsplit=1)[-1]
            formula = text.rsplit("=", 1)[0].strip() if "=" in text else text.strip()
            return judge_formula(formula, problem.data["values"], problem.data["target"])

    model, tokenizer = load_model(one_model(args) or resolve_model("builtin", progress=not args.quiet))
    backend = HFBackend(model, tokenizer, batch_size=32)
    compact, worked = get_task("gp24"), WorkedFormat()
    out = {}
    for split in ("id", "ood"):
        problems = eval_problems(compact, split, seed=0, episodes=args.n)
        started = time.perf_counter()
        episodes = play(worked, problems, backend)
        first = play(compact, problems, backend, max_attempts=1)
        out[split] = {
            "worked_format_success": sum(e.episode.solved for e in episodes) / len(episodes),
            "worked_format_first_attempt": sum(e.episode.verdicts[0].correct for e in episodes) / len(episodes),
            "compact_format_ok": sum(e.episode.verdicts[0].format_ok for e in first) / len(first),
            "wall_s": round(time.perf_counter() - started, 1),
            "example": episodes[0].episode.messages()[:4],
        }
    out["values_accuracy_by_rule"] = probe_values(backend, args.n)
    return out


def bench_failures(args) -> dict:
    from collections import Counter

    from rlheal.evaluate import eval_problems
    from rlheal.models.checkpoint import load_model
    from rlheal.rollout import HFBackend, play
    from rlheal.tasks import get_task
    from rlheal.tasks.gp24 import RANKS, card_value

    if not args.model:
        raise SystemExit("failures needs --model (an SFT or RL checkpoint folder)")
    model, tokenizer = load_model(one_model(args))
    backend = HFBackend(model, tokenizer, batch_size=args.n)
    task = get_task(args.task, id_max_rank=args.id_max_rank)
    out = {}
    for split in ("id", "ood"):
        problems = eval_problems(task, split, seed=0, episodes=args.n)
        first = play(task, problems, backend, max_attempts=1)
        matches = [re.search(r"numbers:\s*([\d ]+)\|", e.generations[0].text) for e in first]
        stated = [None if m is None else [int(v) for v in m.group(1).split()] for m in matches]
        id_rule = [[card_value(RANKS.index(c[:-1]) + 1, "id") for c in p.data["cards"]] for p in problems]
        out[split] = {"verdict_kinds": dict(Counter(e.episode.verdicts[0].kind for e in first)),
                      "values_stated_right": round(sum(v == p.data["values"] for v, p in
                                                       zip(stated, problems, strict=True)) / len(first), 3),
                      "values_stated_under_the_id_rule": round(sum(v == r != p.data["values"] for v, r, p in
                                                                   zip(stated, id_rule, problems, strict=True))
                                                               / len(first), 3),
                      "examples": [e.generations[0].text for e in first[:3]]}
    return out


def one_model(args) -> str | None:
    """The one --model folder of probe and failures (None when not given)."""
    if args.model and len(args.model) > 1:
        raise SystemExit(f"{args.what} takes one --model folder, got {len(args.model)}")
    return args.model[0] if args.model else None


def answer_strategy(text: str) -> str:
    """How a det answer is written: `working` (steps with ` = `, then `answer:`), `direct` or `other`."""
    if "answer:" in text and " = " in text:
        return "working"
    return "direct" if text.strip().startswith("answer:") else "other"


def det_first_attempts(args, splits: tuple[str, ...]):
    """(folder, split, problems, played episodes) of greedy first attempts on the det eval sets, each --model
    folder loaded once."""
    from rlheal.evaluate import eval_problems
    from rlheal.models.checkpoint import load_model
    from rlheal.rollout import Decoding, HFBackend, play
    from rlheal.tasks import get_task

    if not args.model:
        raise SystemExit(f"{args.what} needs --model (one or more checkpoint folders)")
    task = get_task("det")
    problems = {split: eval_problems(task, split, seed=0, episodes=args.n) for split in splits}
    for folder in args.model:
        model, tokenizer = load_model(folder)
        backend = HFBackend(model, tokenizer, batch_size=args.n)
        for split in splits:
            yield folder, split, problems[split], play(task, problems[split], backend, max_attempts=1,
                                                       decoding=Decoding(max_new_tokens=144))


def bench_det_strategy(args) -> dict:
    from collections import Counter

    out = {}
    for folder, split, _, played in det_first_attempts(args, ("id", "ood")):
        kinds = [answer_strategy(e.generations[0].text) for e in played]
        right = Counter(k for k, e in zip(kinds, played, strict=True) if e.episode.verdicts[0].correct)
        out[f"{folder} {split}"] = {k: f"{n} ({right[k]} right)" for k, n in sorted(Counter(kinds).items())}
    return out


def bench_det_steps(args) -> dict:
    from collections import Counter

    from rlheal.models.world import check_det_working

    out = {}
    for folder, _, problems, played in det_first_attempts(args, ("ood",)):
        counts, workings = Counter(), 0
        for problem, episode in zip(problems, played, strict=True):
            checked = check_det_working(episode.generations[0].text, problem.data["matrix"])
            if checked is not None:
                workings += 1
                counts.update(checked)
                counts["all_minors_ok"] += checked["minors_ok"] == 3
                counts["sum_ok_with_all_minors_ok"] += checked["minors_ok"] == 3 and checked["sum_ok"]
        out[folder] = {"episodes": len(played), "workings": workings,
                       "entries_ok": f"{counts['entries_ok']} of {3 * workings} minors",
                       "minors_ok": f"{counts['minors_ok']} of {3 * workings} minors",
                       "all_minors_ok": f"{counts['all_minors_ok']} of {workings} workings",
                       "sum_ok": f"{counts['sum_ok']} of {workings} workings",
                       "sum_ok_with_all_minors_ok": counts["sum_ok_with_all_minors_ok"], "right": counts["right"]}
    return out


def probe_values(backend, n: int) -> dict[str, float]:
    """Share of `cards: ... | <rule> | values` prompts answered with exactly the right card values, per rule."""
    import random

    from rlheal.models.world import RULES, values_doc

    rng = random.Random(12345)
    docs = [values_doc(rng) for _ in range(n * len(RULES))]
    texts = [g.text.strip() for g in backend.generate([d[:1] for d in docs], max_new_tokens=24, temperature=0.0,
                                                      seed=0)]
    rule_of = [d[0]["content"].split(" | ")[1] for d in docs]
    return {rule: round(sum(t == d[1]["content"] for t, d, r in zip(texts, docs, rule_of, strict=True) if r == rule)
                        / max(1, rule_of.count(rule)), 3) for rule in RULES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("pretrain", "sft", "probe", "failures", "det-strategy", "det-steps"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--cache", help="pretrain: cache folder (default: a fresh temporary one)")
    parser.add_argument("--model", nargs="+", help="probe, failures: a checkpoint folder (probe's default: the "
                                                   "built-in base); det-strategy, det-steps: one or more")
    parser.add_argument("--task", default="gp24", choices=("gp24", "gp24-low"), help="failures: the task")
    parser.add_argument("--id-max-rank", type=int, default=13,
                        help="failures: ID hands from cards A..this rank (9: the hands without a card worth 10)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="sft: recompute activations")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    benches = {"pretrain": bench_pretrain, "sft": bench_sft, "probe": bench_probe, "failures": bench_failures,
               "det-strategy": bench_det_strategy, "det-steps": bench_det_steps}
    result = benches[args.what](args)
    print(json.dumps({"threads": torch.get_num_threads(), **result}, indent=1))


if __name__ == "__main__":
    main()
