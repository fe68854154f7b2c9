"""How much of a checkpoint's first-attempt success a critic on its own hidden states could explain.

    python benchmarks/critic_ceiling.py RUN/sft/step-000045 [--store RUN] [--split id] [--episodes 300]

Reads the checkpoint's stored greedy evaluation (which held-out problems it solves at the first attempt),
takes the last hidden layer at each prompt's last token (what PPO's value head sees) and fits a ridge
regression from it to the outcome, scored by 5-fold cross-validated explained variance (the best of a few
ridge penalties, so slightly optimistic). That is an upper
bound of sorts for a value head trained on one start's rollouts (it sees 300 labelled prompts at once, not a
few per update) and a lower bound for what a better critic could do with more than the hidden state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rlheal.chat_tokens import encode_chat
from rlheal.evaluate import EVALS, eval_problems
from rlheal.models.checkpoint import load_model
from rlheal.store import Store
from rlheal.tasks import get_task


def hidden_states(folder: Path, task_name: str, split: str, episodes: int) -> np.ndarray:
    model, tokenizer = load_model(folder, device="cpu")
    task = get_task(task_name)
    rows = []
    with torch.no_grad():
        for problem in eval_problems(task, split, seed=0, episodes=episodes):
            ids = encode_chat(tokenizer, task.new_episode(problem).messages())
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            rows.append(out.hidden_states[-1][0, -1].float().numpy())
    return np.stack(rows)


def cross_validated_ev(x: np.ndarray, y: np.ndarray, alpha: float, folds: int = 5, seed: int = 0) -> float:
    """1 - Var(y - ŷ) / Var(y), where ŷ of each fold comes from a ridge fit (with intercept) on the others."""
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.empty_like(y)
    for held in np.array_split(order, folds):
        fit = np.setdiff1d(order, held)
        mean_x, mean_y = x[fit].mean(0), y[fit].mean()
        a = x[fit] - mean_x
        w = np.linalg.solve(a.T @ a + alpha * np.eye(x.shape[1]), a.T @ (y[fit] - mean_y))
        predicted[held] = (x[held] - mean_x) @ w + mean_y
    return float(1.0 - np.var(y - predicted) / np.var(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--store", type=Path, help="run folder holding the evaluation (default: two levels up)")
    parser.add_argument("--task", default="det")
    parser.add_argument("--split", default="id")
    parser.add_argument("--episodes", type=int, default=300)
    args = parser.parse_args()
    store_folder = args.store or args.checkpoint.resolve().parent.parent
    with Store(store_folder, readonly=True) as store:
        rows = [r for r in store.rows(EVALS, task=args.task, split=args.split)
                if Path(r["checkpoint"]).resolve() == args.checkpoint.resolve()
                and r["eval_set"].startswith(f"heldout-seed0-n{args.episodes}-a1-")]
    if not rows:
        raise SystemExit(f"no first-attempt evaluation of {args.checkpoint} on {args.task}/{args.split} with "
                         f"{args.episodes} problems in {store_folder}: run rlheal eval first")
    solved = np.array([1.0 if s == 1 else 0.0 for s in rows[0]["solved_at"]])
    features = hidden_states(args.checkpoint, args.task, args.split, args.episodes)
    explained = max(cross_validated_ev(features, solved, alpha) for alpha in np.logspace(-3, 3, 7))
    print(f"{args.checkpoint} {args.task}/{args.split}: {int(solved.sum())}/{len(solved)} solved at the first attempt; "
          f"5-fold explained variance of a ridge critic on the last hidden state: {explained:.3f}")


if __name__ == "__main__":
    main()
