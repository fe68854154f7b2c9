"""Tiny Llama checkpoints for the spectral tests (hidden 32, 2 layers; k/v are short-wide 16 × 32)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


def make_checkpoint(folder: Path, seed: int = 0, noise: float = 0.0, dtype=torch.float32,
                    shard: str | None = None, tie: bool = False) -> Path:
    """Save a tiny LlamaForCausalLM: weights from `seed`, plus `noise`·N(0,1) from seed+1000 when noise > 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=40, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if noise:
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen))
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    return folder


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "base": make_checkpoint(root / "base", seed=0),
        "sft": make_checkpoint(root / "sft", seed=0, noise=0.01),
        "rl": make_checkpoint(root / "rl", seed=0, noise=0.02),
        "sharded": make_checkpoint(root / "sharded", seed=0, noise=0.01, shard="20KB"),
        "bf16": make_checkpoint(root / "bf16", seed=0, noise=0.01, dtype=torch.bfloat16),
        "tied": make_checkpoint(root / "tied", seed=0, tie=True),
    }


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets its own decomposition cache folder (what the CLI uses through RLHEAL_SPECTRAL_CACHE)."""
    monkeypatch.setenv("RLHEAL_SPECTRAL_CACHE", str(tmp_path / "spectral-cache"))
    return tmp_path / "spectral-cache"


@pytest.fixture
def poked(tmp_path):
    """poked(checkpoint, tensor, value, index): a copy of a single-file checkpoint with one weight replaced."""

    def make(source: Path, tensor: str, value: float, index: tuple[int, int] = (0, 0)) -> Path:
        copy = shutil.copytree(source, tmp_path / f"{source.name}-poked")
        tensors = load_file(copy / "model.safetensors")
        tensors[tensor][index] = value
        save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
        return copy

    return make
