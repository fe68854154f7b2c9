"""GPU benchmark: the spectral diagnostic and an SVD edit of a whole Qwen2.5-7B-shaped checkpoint, from its files.

Writes a reference and a target checkpoint into --workdir (random trained-like weights, bf16 safetensors, one
shard per layer; 28 layers × 7 matrices = 196, about 13 GB each at full size; `spectral_checkpoints.py`),
then times on --device, each over the whole checkpoint:
  sweep    - `run_spectrum` of the target against the reference: reads, both decompositions, every metric;
  marginal - the same with a second target (a hard-linked copy of the first); its extra time over `sweep` is
             one target against a reference already decomposed and kept on the device (cached);
  check    - the first --check-layers layers again with method svd64 (float64 SVD): the worst differences of
             the angle and σ-drift columns of `sweep` from it;
  edit     - `edit_checkpoint` in vectors mode (top 0.2, tail 0.1 of every decoder matrix), written to disk.
Prints one JSON object (also to --out). Parts run in the order given by --parts.

  python benchmarks/gpu_spectral.py --device cuda --out gpu_spectral.json   # full size: ~40 GB of disk
  python benchmarks/gpu_spectral.py --device cpu --scale 32 --layers 2      # a dry run in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from spectral_checkpoints import QWEN25_7B, write_checkpoints  # noqa: E402

from rlheal.spectral import edit_checkpoint, run_spectrum  # noqa: E402

PARTS = ("sweep", "marginal", "check", "edit")


def _timed(sync_device: torch.device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), wall seconds), `sync_device` synchronised before and after."""
    if sync_device.type == "cuda":
        torch.cuda.synchronize(sync_device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if sync_device.type == "cuda":
        torch.cuda.synchronize(sync_device)
    return result, round(time.perf_counter() - start, 2)


def _hardlinked_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        os.link(path, dst / path.name)
    return dst


def _worst_differences(rows: list[dict], exact: list[dict]) -> dict[str, float]:
    key = ("target", "tensor", "k_label")
    exact_by_key = {tuple(r[c] for c in key): r for r in exact}
    angle_cols = [f"{s}_{stat}" for s in ("top_left", "top_right", "tail_left", "tail_right") for stat in ("max", "mean")]
    worst = {"angle_rad": 0.0, "mean_abs_rel_sigma_drift": 0.0}
    for row in rows:
        other = exact_by_key.get(tuple(row[c] for c in key))
        if other is None:
            continue
        worst["angle_rad"] = max(worst["angle_rad"], *(abs(row[c] - other[c]) for c in angle_cols))
        worst["mean_abs_rel_sigma_drift"] = max(worst["mean_abs_rel_sigma_drift"],
                                               abs(row["mean_abs_rel_sigma_drift"] - other["mean_abs_rel_sigma_drift"]))
    return {k: float(f"{v:.3g}") for k, v in worst.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=QWEN25_7B["layers"])
    parser.add_argument("--scale", type=int, default=1, help="divide the 7B widths by this (dry runs)")
    parser.add_argument("--k", default="0.2", help="subspace sizes, as for `rlheal spectrum --k`")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--check-layers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    ks = [float(x) if "." in x else int(x) for x in args.k.split(",")]
    model = {"hidden": QWEN25_7B["hidden"] // args.scale, "intermediate": QWEN25_7B["intermediate"] // args.scale,
             "kv": QWEN25_7B["kv"] // args.scale, "layers": args.layers}
    result: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__, "model": model, "ks": ks, "dtype": "bfloat16", "seconds": {}}
    seconds = result["seconds"]
    root = Path(tempfile.mkdtemp(prefix="gpu-spectral-", dir=args.workdir))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still removes the ~40 GB below
    try:
        (ref, (target,)), seconds["write_checkpoints"] = _timed(
            device, write_checkpoints, root, model, 1, torch.bfloat16, device)
        warm = torch.eye(64, dtype=torch.float64, device=device)
        torch.linalg.eigh(warm @ warm)  # create the solver handles outside the timings
        sweep_rows = None
        print(json.dumps({"done": "write_checkpoints", "seconds": seconds}), flush=True)
        for part in parts:
            if part == "sweep":
                (sweep_rows, _), seconds["sweep"] = _timed(
                    device, run_spectrum, [(ref, target)], ks, device=str(device), progress=False)
                result["matrices"] = len(sweep_rows) // len(ks)
            elif part == "marginal":
                second = _hardlinked_copy(target, root / "target-copy")
                _, seconds["two_targets"] = _timed(
                    device, run_spectrum, [(ref, target), (ref, second)], ks, device=str(device), progress=False)
                if "sweep" in seconds:
                    seconds["one_target_cached_reference"] = round(seconds["two_targets"] - seconds["sweep"], 2)
            elif part == "check":
                layers = set(range(args.check_layers))
                (exact, _), seconds["check_svd64"] = _timed(
                    device, run_spectrum, [(ref, target)], ks, layers=layers, method="svd64", device=str(device),
                    progress=False)
                rows = sweep_rows or run_spectrum([(ref, target)], ks, layers=layers, device=str(device),
                                                  progress=False)[0]
                result["worst_difference_from_svd64"] = _worst_differences(rows, exact)
            elif part == "edit":
                _, seconds["edit_vectors_top0.2_tail0.1"] = _timed(
                    device, edit_checkpoint, ref, target, root / "edited", "vectors", top=0.2, tail=0.1,
                    device=str(device), progress=False)
            print(json.dumps({"done": part, "seconds": seconds}), flush=True)
        if device.type == "cuda":
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
