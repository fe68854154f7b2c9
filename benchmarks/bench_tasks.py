"""Speed of the task worlds: solvability table, solver, problem generation, verifier throughput.

Run: `python benchmarks/bench_tasks.py` (about half a minute on 2 CPU cores); prints a Markdown table
for docs/BENCHMARKS.md. Caches are cleared before each cold measurement.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable

from rlheal.tasks import SPLITS, TASK_NAMES, get_task, solver24


def _clear_caches() -> None:
    solver24.reachable.cache_clear()
    solver24._solvable_sorted.cache_clear()
    solver24._solve_sorted.cache_clear()


def _best_of(repeats: int, work: Callable[[], object], cold: bool = True) -> float:
    """The median wall time of `work` over `repeats` runs (caches cleared before each run if `cold`)."""
    times = []
    for _ in range(repeats):
        if cold:
            _clear_caches()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _throughput(task, problems, answers) -> float:
    start = time.perf_counter()
    for problem, answer in zip(problems, answers, strict=True):
        task.verify(problem, answer)
    return len(answers) / (time.perf_counter() - start)


def main() -> None:
    rows: list[tuple[str, str]] = []
    table_s = _best_of(5, solver24.solvability_table)
    rows.append(("solvability table, 1820 hands of 1..13 (cold)", f"{table_s:.3f} s"))
    rng = random.Random(0)
    hands = [[rng.randint(1, 13) for _ in range(4)] for _ in range(200)]
    solve_s = _best_of(3, lambda: [solver24.solve(h) for h in hands]) / len(hands)
    rows.append(("solve(): all distinct formulas of one hand (cold, mean of 200)", f"{solve_s * 1e3:.1f} ms"))

    for name in TASK_NAMES:
        task = get_task(name)
        for split in SPLITS:
            cold = _best_of(3, lambda task=task, split=split: task.problems(split, 0, 2000))
            warm = _best_of(3, lambda task=task, split=split: task.problems(split, 0, 2000), cold=False)
            rows.append((f"{name} {split}: 2000 problems (cold / warm caches)", f"{cold:.3f} s / {warm:.3f} s"))

    for name in TASK_NAMES:
        for profile in ("compact", "paper"):
            task = get_task(name, profile)
            problems = task.problems("ood", 0, 2000)
            correct = [task.answer(p) for p in problems]
            key, value = ("formula", "1+2+3+4") if name == "gp24" else ("answer", 7)
            wrong_text = f"{key}: {value}" if profile == "compact" else json.dumps({key: value})
            wrong = [wrong_text] * len(problems)
            hostile = ["(" * 100_000, "9" * 1_000_000, "{" * 10_000, "formula: " + "1*" * 300 + "1", "２４"] * 20
            rows.append((f"verify {name} {profile}: correct answers", f"{_throughput(task, problems, correct):,.0f} answers/s"))
            rows.append((f"verify {name} {profile}: wrong answers", f"{_throughput(task, problems, wrong):,.0f} answers/s"))
            rows.append((f"verify {name} {profile}: hostile answers (up to 1 MB)",
                         f"{_throughput(task, problems[:100], hostile):,.0f} answers/s"))

    print("| measurement | result |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
