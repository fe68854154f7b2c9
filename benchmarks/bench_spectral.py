"""CPU benchmark: `rlheal spectrum` over N target checkpoints against a reference vs the naive way, as processes.

Writes a reference and N targets (default: Llama shape, hidden 768, intermediate 2048, k/v 256 × 768, 4 layers,
float32; `spectral_checkpoints.py`), then in each of --repeats rounds (the order rotates) times, each as its
own process with --threads threads:
  naive  - `python bench_spectral.py naive REF TARGET...`: for every target and matrix, float32 SVDs of the
           reference and the target, recomputed, then every metric column of the `spectral` table in float64
           from them with the textbook formulas (principal angles from `svdvals` of AᵀB and of the tall
           residual B − A AᵀB, as rlheal computed them before);
  ours   - `python -m rlheal spectrum --device cpu --out rows.csv` (no disk cache);
  before - with --before-src DIR: the same command from another source tree (e.g. an earlier commit unpacked
           with `git archive`), with a cold decomposition cache in a temporary folder;
and reports each way's wall and CPU (user + sys) seconds, the ratios, and its worst errors against float64
SVD (`run_spectrum` with method svd64, in this process, untimed).

  python benchmarks/bench_spectral.py --targets 3 --repeats 3 --threads 1 [--before-src /tmp/before/src]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from spectral_checkpoints import LLAMA_768, write_checkpoints  # noqa: E402

from rlheal.spectral import run_spectrum  # noqa: E402
from rlheal.spectral.metrics import METRIC_COLUMNS, k_label  # noqa: E402
from rlheal.spectral.weights import CheckpointWeights  # noqa: E402

NAIVE_COLUMNS = [c for c in METRIC_COLUMNS if c != "angle_error_bound"]


def _textbook_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Knyazev–Argentati with SVDs: cosines from svdvals(AᵀB), sines from svdvals(B − A AᵀB) (ascending)."""
    cross = A.mT @ B
    cosines = torch.linalg.svdvals(cross).clamp(-1.0, 1.0)
    sines = torch.linalg.svdvals(B - A @ cross).clamp(-1.0, 1.0).flip(0)
    return torch.sort(torch.where(cosines**2 >= 0.5, torch.arcsin(sines), torch.arccos(cosines))).values


def naive_rows(W_ref: torch.Tensor, W_t: torch.Tensor, ks: list[int | float]) -> list[dict[str, float]]:
    """Every metric of one matrix from float32 SVDs of both matrices (the paper's way), in float64."""
    Ur, sr, Vrh = (x.double() for x in torch.linalg.svd(W_ref.float(), full_matrices=False))
    Ut, st, Vth = (x.double() for x in torch.linalg.svd(W_t.float(), full_matrices=False))
    Vr, Vt = Vrh.mT, Vth.mT
    delta = W_t.double() - W_ref.double()
    total = float((delta**2).sum())
    drift = ((st - sr) / sr).abs()
    rows = []
    for k in ks:
        kk = min(max(1, round(k * sr.numel())) if isinstance(k, float) else k, sr.numel())
        row = {"k_label": k_label(k), "mean_abs_rel_sigma_drift": float(drift.mean()),
               "max_abs_rel_sigma_drift": float(drift.max()),
               "delta_rel_norm": math.sqrt(total) / float(torch.linalg.matrix_norm(W_ref.double()))}
        sets = {"top_left": (Ur[:, :kk], Ut[:, :kk]), "top_right": (Vr[:, :kk], Vt[:, :kk]),
                "tail_left": (Ur[:, -kk:], Ut[:, -kk:]), "tail_right": (Vr[:, -kk:], Vt[:, -kk:])}
        for label, (A, B) in sets.items():
            theta = _textbook_angles(A, B)
            row |= {f"{label}_max": float(theta.max()), f"{label}_mean": float(theta.mean()),
                    f"{label}_proj": math.sqrt(2.0) * float(torch.linalg.vector_norm(torch.sin(theta)))}
        C = Ur[:, :kk].mT @ delta @ Vr[:, :kk]
        diag = float((C.diagonal() ** 2).sum())
        row["diag_share"] = diag / total if total else 0.0
        row["offdiag_share"] = max(float((C**2).sum()) - diag, 0.0) / total if total else 0.0
        rows.append(row)
    return rows


def naive_main(argv: list[str]) -> None:
    """`naive REF TARGET... --k 0.05,0.2 --out FILE.csv`: the naive way as a whole process."""
    parser = argparse.ArgumentParser(prog="bench_spectral.py naive")
    parser.add_argument("ref")
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--k", default="0.2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    ks = [float(x) if "." in x else int(x) for x in args.k.split(",")]
    ref = CheckpointWeights(args.ref)
    out = []
    for target_path in args.targets:
        target = CheckpointWeights(target_path)
        for info in ref.select():
            for row in naive_rows(ref.read(info.name), target.read(info.name), ks):
                out.append({"target": str(target.folder), "tensor": info.name, **row})
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)


def _read_rows(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """Metric rows by (target, tensor, k label), angles in radians (`rlheal spectrum --out` writes them in
    degrees, as `<column>_deg`)."""

    def value(row: dict[str, str], column: str) -> float:
        return float(row[column]) if column in row else math.radians(float(row[f"{column}_deg"]))

    with open(path) as fh:
        return {(r["target"], r["tensor"], r["k_label"]): {c: value(r, c) for c in NAIVE_COLUMNS}
                for r in csv.DictReader(fh)}


def _worst_errors(rows: dict, exact: dict) -> dict[str, float]:
    angle_cols = [c for c in NAIVE_COLUMNS if c.endswith(("_max", "_mean")) and "sigma" not in c]
    groups = {"angle": angle_cols, "drift": ["mean_abs_rel_sigma_drift", "max_abs_rel_sigma_drift"],
              "proj": [c for c in NAIVE_COLUMNS if c.endswith("_proj")], "share": ["diag_share", "offdiag_share"]}
    assert rows.keys() == exact.keys(), "the ways produced different row sets"
    return {g: float(f"{max(abs(rows[key][c] - exact[key][c]) for key in exact for c in cols):.2g}")
            for g, cols in groups.items()}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "naive":
        naive_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--layers", type=int, default=LLAMA_768["layers"])
    parser.add_argument("--hidden", type=int, default=LLAMA_768["hidden"])
    parser.add_argument("--k", default="0.05,0.2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before-src", type=Path, help="a source tree (its src/) whose rlheal is timed as 'before'")
    args = parser.parse_args()
    scale = args.hidden / LLAMA_768["hidden"]
    model = {"hidden": args.hidden, "intermediate": round(LLAMA_768["intermediate"] * scale),
             "kv": round(LLAMA_768["kv"] * scale), "layers": args.layers}
    env = {k: v for k, v in os.environ.items() if k != "RLHEAL_SPECTRAL_CACHE"}
    env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ref, targets = write_checkpoints(tmp / "ckpts", model, args.targets)
        paths = [str(ref), *map(str, targets)]
        commands = {
            "naive": ([sys.executable, __file__, "naive", *paths, "--k", args.k, "--out", str(tmp / "naive.csv")],
                      env),
            "ours": ([sys.executable, "-m", "rlheal", "spectrum", "--ref", *paths, "--k", args.k, "--device", "cpu",
                      "--out", str(tmp / "ours.csv")], env),
        }
        if args.before_src:
            commands["before"] = ([sys.executable, "-m", "rlheal", "spectrum", "--ref", *paths, "--k", args.k,
                                   "--device", "cpu", "--out", str(tmp / "before.csv")],
                                  env | {"PYTHONPATH": str(args.before_src.resolve())})
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu_times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for round_ in range(args.repeats):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                argv, run_env = commands[name]
                if name == "before":
                    run_env = run_env | {"RLHEAL_SPECTRAL_CACHE": str(tmp / f"cache-before-{round_}")}
                start, used = time.perf_counter(), _children_cpu_seconds()
                subprocess.run(argv, env=run_env, check=True, capture_output=True)
                times[name].append(round(time.perf_counter() - start, 2))
                cpu_times[name].append(round(_children_cpu_seconds() - used, 2))
        torch.set_num_threads(args.threads)
        ks = [float(x) if "." in x else int(x) for x in args.k.split(",")]
        exact_rows, _ = run_spectrum([(ref, t) for t in targets], ks, method="svd64", device="cpu", progress=False)
        exact = {(r["target"], r["tensor"], r["k_label"]): r for r in exact_rows}
        errors = {name: _worst_errors(_read_rows(tmp / f"{name}.csv"), exact) for name in commands}
    def ratios(kind: dict[str, list[float]], other: str) -> list[float]:
        return [round(a / b, 2) for a, b in zip(kind[other], kind["ours"], strict=True)]

    print(json.dumps({
        "model": model, "targets": args.targets, "ks": ks, "threads": args.threads, "repeats": args.repeats,
        "wall_s": times, "cpu_s": cpu_times,
        "median_wall_s": {name: statistics.median(t) for name, t in times.items()},
        **{f"wall_{other}_over_ours": ratios(times, other) for other in commands if other != "ours"},
        **{f"cpu_{other}_over_ours": ratios(cpu_times, other) for other in commands if other != "ours"},
        "worst_abs_error_vs_svd64": errors,
    }))


if __name__ == "__main__":
    main()
