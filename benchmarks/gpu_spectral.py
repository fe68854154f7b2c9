"""Spectral diagnostic of one 7B-shaped checkpoint against a cached reference, on a GPU (or any --device).

Synthetic matrices with trained-weight-like spectra (Gaussian bulk + decaying low-rank part) in the
shapes of a Qwen2.5-7B decoder (hidden 3584, intermediate 18944, k/v 512, 28 layers = 196 matrices) are made
on the device; no checkpoint I/O is timed. It measures, per checkpoint:
  naive  - full float32 SVD of every reference and target matrix (the paper's way, the 111 s anchor);
  ours   - target decomposed by --method (reference decompositions precomputed, as the cache gives them),
           then σ drift, top/tail angles (both sides), projection distances and ΔW block energy at every k;
and the errors of σ drift and angles of both ways against float64 SVD on the first --check matrices.

  python benchmarks/gpu_spectral.py --device cuda                    # full 7B shapes (H100/H200)
  python benchmarks/gpu_spectral.py --device cpu --scale 8 --layers 1   # a quick correctness run
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from rlheal.spectral.linalg import angles_between_orthonormal, decompose, resolve_k
from rlheal.spectral.metrics import matrix_metrics


def layer_shapes(hidden: int, inter: int, kv: int) -> list[tuple[str, tuple[int, int]]]:
    return [("q", (hidden, hidden)), ("k", (kv, hidden)), ("v", (kv, hidden)), ("o", (hidden, hidden)),
            ("gate", (inter, hidden)), ("up", (inter, hidden)), ("down", (hidden, inter))]


def synthetic_pair(m: int, n: int, seed: int, device, drift: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_ref, W_target): Gaussian bulk + rank-16 decaying part; the target adds a small dense update and a
    low-rank one, like fine-tuning. float64 on `device`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, torch.float64)

    r = 16
    low = (randn(m, r) * torch.logspace(0.5, -0.5, r, device=device, dtype=torch.float64)) @ randn(r, n)
    W_ref = (randn(m, n) + low) / math.sqrt(n)
    W_t = W_ref + drift * randn(m, n) / math.sqrt(n) + drift * (randn(m, 4) @ randn(4, n)) / math.sqrt(n)
    return W_ref, W_t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_metrics(W_ref: torch.Tensor, W_t: torch.Tensor, ks) -> list[dict]:
    """The paper's way: full float32 SVD of both matrices, every time."""
    Ur, sr, Vrh = torch.linalg.svd(W_ref.float(), full_matrices=False)
    Ut, st, Vth = torch.linalg.svd(W_t.float(), full_matrices=False)
    out = []
    for k in ks:
        kk = resolve_k(k, sr.numel())
        out.append({
            "mean_abs_rel_sigma_drift": float(((st - sr) / sr).abs().double().mean()),
            "top_left_max": float(angles_between_orthonormal(Ur[:, :kk].double(), Ut[:, :kk].double()).max()),
            "tail_right_max": float(angles_between_orthonormal(Vrh[-kk:].mT.double(), Vth[-kk:].mT.double()).max()),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--method", default="gram64", choices=["gram64", "svd64", "svd32"])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--scale", type=int, default=1, help="divide the 7B shapes by this")
    parser.add_argument("--k", default="0.05,0.2,768")
    parser.add_argument("--check", type=int, default=7, help="matrices checked against float64 SVD")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    ks = [float(x) if "." in x else int(x) for x in args.k.split(",")]
    shapes = layer_shapes(3584 // args.scale, 18944 // args.scale, 512 // args.scale)
    todo = [(f"layers.{i}.{mod}", shape, 1000 * i + j) for i in range(args.layers)
            for j, (mod, shape) in enumerate(shapes)]
    totals = {"ours_s": 0.0, "naive_s": 0.0, "ref_precompute_s": 0.0}
    worst = {"ours_angle_err": 0.0, "naive_angle_err": 0.0, "ours_drift_err": 0.0, "naive_drift_err": 0.0}
    for idx, (name, (m, n), seed) in enumerate(todo):
        W_ref, W_t = synthetic_pair(m, n, seed, device)
        kmax = max(resolve_k(k, min(m, n), name) for k in ks)
        sync(device)
        t0 = time.perf_counter()
        dec_ref = decompose(W_ref, args.method, top=kmax, tail=kmax)  # what the cache holds
        sync(device)
        t1 = time.perf_counter()
        dec_t = decompose(W_t, args.method, top=kmax, tail=kmax)
        ours, _ = matrix_metrics(name, W_ref, dec_ref, W_t, dec_t, ks)
        sync(device)
        t2 = time.perf_counter()
        totals["ref_precompute_s"] += t1 - t0
        totals["ours_s"] += t2 - t1
        naive = None
        if not args.skip_naive:
            naive = naive_metrics(W_ref, W_t, ks)
            sync(device)
            totals["naive_s"] += time.perf_counter() - t2
        if idx < args.check:
            exact_ref, exact_t = decompose(W_ref, "svd64", kmax, kmax), decompose(W_t, "svd64", kmax, kmax)
            exact, _ = matrix_metrics(name, W_ref, exact_ref, W_t, exact_t, ks)
            for e, o in zip(exact, ours, strict=True):
                worst["ours_angle_err"] = max(worst["ours_angle_err"], abs(e["top_left_max"] - o["top_left_max"]),
                                              abs(e["tail_right_max"] - o["tail_right_max"]))
                worst["ours_drift_err"] = max(worst["ours_drift_err"], abs(e["mean_abs_rel_sigma_drift"]
                                                                           - o["mean_abs_rel_sigma_drift"]))
            for e, o in zip(exact, naive or [], strict=False):
                worst["naive_angle_err"] = max(worst["naive_angle_err"], abs(e["top_left_max"] - o["top_left_max"]),
                                               abs(e["tail_right_max"] - o["tail_right_max"]))
                worst["naive_drift_err"] = max(worst["naive_drift_err"], abs(e["mean_abs_rel_sigma_drift"]
                                                                             - o["mean_abs_rel_sigma_drift"]))
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "method": args.method, "matrices": len(todo), "scale": args.scale, "ks": ks,
              **{k: round(v, 3) for k, v in totals.items()},
              "speedup": round(totals["naive_s"] / totals["ours_s"], 2) if totals["naive_s"] else None,
              **{k: float(f"{v:.3g}") for k, v in worst.items()}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
