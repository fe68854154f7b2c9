"""CPU benchmark: the spectral sweep of N checkpoints against one reference, ours vs the naive way.

Writes a reference and N target checkpoints (safetensors, Llama tensor names, 7B shapes divided by --scale,
trained-weight-like spectra) to a temp folder, then times on the same files:
  naive - for each target, full float32 SVD of every reference and target matrix, recomputed (the paper);
  ours  - `run_spectrum` with a cold decomposition cache: the reference is decomposed once (gram64, float64),
          each target once, all k at once;
and reports the speed ratio and both ways' worst errors against float64 SVD (torch/LAPACK gesdd).

  python benchmarks/bench_spectral.py --targets 3 --scale 8 --layers 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from gpu_spectral import layer_shapes, naive_metrics, synthetic_pair  # noqa: E402

from rlheal.spectral import DecompositionCache, run_spectrum  # noqa: E402
from rlheal.spectral.weights import CheckpointWeights  # noqa: E402

FULL_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def write_checkpoints(root: Path, n_targets: int, scale: int, layers: int) -> tuple[Path, list[Path]]:
    shapes = layer_shapes(3584 // scale, 18944 // scale, 512 // scale)
    folders = [root / "ref", *(root / f"target-{i}" for i in range(n_targets))]
    tensors: list[dict[str, torch.Tensor]] = [{} for _ in folders]
    for layer in range(layers):
        for j, (mod, (m, n)) in enumerate(shapes):
            name = f"model.layers.{layer}.{FULL_NAMES[mod]}.weight"
            W_ref, _ = synthetic_pair(m, n, 1000 * layer + j, "cpu")
            tensors[0][name] = W_ref.float()
            for t in range(n_targets):  # drift grows along the "training run"
                _, W_t = synthetic_pair(m, n, 1000 * layer + j, "cpu", drift=0.01 * (t + 1))
                tensors[t + 1][name] = W_t.float()
    for folder, tens in zip(folders, tensors, strict=True):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        save_file(tens, folder / "model.safetensors", metadata={"format": "pt"})
    return folders[0], folders[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--k", default="0.05,0.2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [float(x) if "." in x else int(x) for x in args.k.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ref, targets = write_checkpoints(Path(tmp), args.targets, args.scale, args.layers)
        t0 = time.perf_counter()
        ours, _ = run_spectrum([(ref, t) for t in targets], ks, device="cpu",
                               cache=DecompositionCache(Path(tmp) / "cache"), progress=False)
        ours_s = time.perf_counter() - t0
        ref_w = CheckpointWeights(ref)
        names = [i.name for i in ref_w.select()]
        t0 = time.perf_counter()
        naive = []
        for target in targets:
            tgt_w = CheckpointWeights(target)
            for name in names:
                naive.extend(naive_metrics(ref_w.load(name), tgt_w.load(name), ks))
        naive_s = time.perf_counter() - t0
        exact, _ = run_spectrum([(ref, t) for t in targets], ks, method="svd64", device="cpu",
                                cache=DecompositionCache(Path(tmp) / "cache64"), progress=False)
    cols = ("top_left_max", "tail_right_max", "mean_abs_rel_sigma_drift")
    err = {f"{who}_{c}_err": float(f"{max(abs(e[c] - o[c]) for e, o in zip(exact, rows, strict=True)):.3g}")
           for who, rows in (("ours", ours), ("naive", naive)) for c in cols}
    print(json.dumps({"targets": args.targets, "matrices_per_checkpoint": len(names), "scale": args.scale,
                      "shapes": sorted({tuple(ref_w.tensors[n].shape) for n in names}), "ks": ks,
                      "threads": args.threads, "ours_s": round(ours_s, 2), "naive_s": round(naive_s, 2),
                      "speedup": round(naive_s / ours_s, 2), **err}, indent=1))


if __name__ == "__main__":
    main()
