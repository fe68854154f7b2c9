"""Synthetic Llama/Qwen-shaped checkpoints for the spectral benchmarks (`bench_spectral.py`, `gpu_spectral.py`).

Each decoder matrix is a trained-weight-like W_ref = (Gaussian bulk + decaying rank-16 part)/sqrt(cols); the
i-th target adds (i+1)·drift·(dense + rank-4 update)/sqrt(cols), like a fine-tuning run drifting further. Folders
hold `config.json` (model_type llama) and one safetensors shard per decoder layer with an index, in `dtype`.
Matrices are made on `device` (a GPU makes a 7B checkpoint in seconds) and written one layer at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

FULL_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
QWEN25_7B = {"hidden": 3584, "intermediate": 18944, "kv": 512, "layers": 28}
LLAMA_768 = {"hidden": 768, "intermediate": 2048, "kv": 256, "layers": 4}


def layer_shapes(hidden: int, intermediate: int, kv: int) -> list[tuple[str, tuple[int, int]]]:
    """(module, (rows, cols)) of one decoder layer's seven matrices."""
    return [("q", (hidden, hidden)), ("k", (kv, hidden)), ("v", (kv, hidden)), ("o", (hidden, hidden)),
            ("gate", (intermediate, hidden)), ("up", (intermediate, hidden)), ("down", (hidden, intermediate))]


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device=gen.device, dtype=torch.float32)


def reference_matrix(m: int, n: int, seed: int, device: str | torch.device) -> torch.Tensor:
    """Gaussian bulk + rank-16 part with singular values decaying from ~3 to ~0.3 (float32)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    scale = torch.logspace(0.5, -0.5, 16, device=device)
    return (_randn(gen, m, n) + (_randn(gen, m, 16) * scale) @ _randn(gen, 16, n)) / math.sqrt(n)


def drift_update(m: int, n: int, seed: int, device: str | torch.device) -> torch.Tensor:
    """A dense plus a rank-4 update of unit scale (float32)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return (_randn(gen, m, n) + _randn(gen, m, 4) @ _randn(gen, 4, n)) / math.sqrt(n)


def write_checkpoints(root: Path, model: dict[str, int], n_targets: int, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", drift: float = 0.01) -> tuple[Path, list[Path]]:
    """Write `root/ref` and `root/target-{i}` (i < n_targets); returns (reference, targets)."""
    folders = [root / "ref", *(root / f"target-{i}" for i in range(n_targets))]
    shapes = layer_shapes(model["hidden"], model["intermediate"], model["kv"])
    config = {"model_type": "llama", "hidden_size": model["hidden"], "intermediate_size": model["intermediate"],
              "num_hidden_layers": model["layers"], "torch_dtype": str(dtype).removeprefix("torch.")}
    weight_maps: list[dict[str, str]] = [{} for _ in folders]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
    for layer in range(model["layers"]):
        shard = f"model-{layer:05d}.safetensors"
        tensors: list[dict[str, torch.Tensor]] = [{} for _ in folders]
        for j, (module, (m, n)) in enumerate(shapes):
            name = f"model.layers.{layer}.{FULL_NAMES[module]}.weight"
            W = reference_matrix(m, n, 1000 * layer + j, device)
            tensors[0][name] = W.to(dtype).cpu()
            for t in range(n_targets):
                update = drift_update(m, n, 10**6 * (t + 1) + 1000 * layer + j, device)
                tensors[t + 1][name] = (W + drift * (t + 1) * update).to(dtype).cpu()
        for folder, tens, weight_map in zip(folders, tensors, weight_maps, strict=True):
            save_file(tens, folder / shard, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tens, shard))
    for folder, weight_map in zip(folders, weight_maps, strict=True):
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folders[0], folders[1:]
