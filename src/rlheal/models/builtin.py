"""The built-in base model: a small Llama that rlheal pretrains itself on the pretraining world.

A recipe (model shape, world spec, pretraining hyperparameters, seed) fully determines how a base is built: on
CPU with seeded torch and a deterministic data order. The det and gp24 bases ship with rlheal as package
data (`models/bases/base-<recipe hash>/`), their weights pinned by sha256, so every machine starts from the same
bits; other recipes (tiny) are built on first use and stored at `$RLHEAL_CACHE/base-<recipe hash>/` (default cache
`~/.cache/rlheal`). Either is an ordinary Hugging Face checkpoint folder with an rlheal manifest (stage "base"). The folder is written atomically, so a killed build leaves
nothing behind and the next call rebuilds it. Pretraining is not resumable: the default recipe takes a few
minutes (see docs/BENCHMARKS.md), so a killed build simply starts again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from rlheal.models.checkpoint import (
    CheckpointError,
    Manifest,
    check_checkpoint,
    read_manifest,
    save_model,
    weights_sha256,
)
from rlheal.models.pretrain import PRETRAIN_THREADS, PretrainSpec, pack_documents, pretrain
from rlheal.models.tokenizer import TOKENIZER_SPEC, char_tokenizer
from rlheal.models.world import WORLD_VERSION, WorldSpec, generate_corpus
from rlheal.provenance import stable_hash

CACHE_ENV = "RLHEAL_CACHE"


class ModelSpec(BaseModel):
    """The Llama shape of the built-in model (vocabulary and special ids come from the tokenizer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(1024, ge=16)


class BuiltinRecipe(BaseModel):
    """Everything that determines the built-in base model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec = ModelSpec()
    world: WorldSpec = WorldSpec()
    train: PretrainSpec = PretrainSpec()
    seed: int = 0

    def hash(self) -> str:
        """The cache key: the recipe plus the tokenizer spec and the world generator's version."""
        return stable_hash({"recipe": self.model_dump(), "tokenizer": TOKENIZER_SPEC, "world": WORLD_VERSION})


TINY_RECIPE = BuiltinRecipe(
    model=ModelSpec(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=128),
    world=WorldSpec.tiny(),
    train=PretrainSpec(steps=4, batch_size=2, seq_len=64, warmup_steps=1),
)
# The default study's base: arithmetic, the rank/det direct answers and 16000 determinants worked out step by
# step (2x2 and, twice as often, 3x3), so the base computes held-out 3x3 (OOD) determinants before SFT's direct
# `answer: N` on 2x2 can erode the procedure. No 24-game documents.
DET_RECIPE = BuiltinRecipe(
    world=WorldSpec(n_values=0, n_solve=0, n_revise=0, n_det_work=16000),
    train=PretrainSpec(steps=3000),
)
# A gp24 base: card values under random stated rules, hands solved and revised (train-pool hands only).
GP24_RECIPE = BuiltinRecipe(
    world=WorldSpec(n_values=4000, n_solve=14000, n_revise=5000),
    train=PretrainSpec(steps=3000),
)
RECIPES = {"builtin:det": DET_RECIPE, "builtin:gp24": GP24_RECIPE, "builtin:tiny": TINY_RECIPE}
DEFAULT_MODEL = "builtin:det"
DEFAULT_RECIPE = RECIPES[DEFAULT_MODEL]


# The bases rlheal ships, one folder per recipe hash, and the sha256 of their weights: every machine starts the
# built-in study from these bits, whatever its CPU kind (a rebuild there may differ in the last bits).
SHIPPED = Path(__file__).parent / "bases"
SHIPPED_SHA256 = {DET_RECIPE.hash(): "e65c8f3e562bf02ee90f6d07eaa2bb8b0ea2efbfc53292c0b6ef8d2c9206f544",
                  GP24_RECIPE.hash(): "c2e0a3c82c0dd6a253f2e584ad5163fe3a32d06a953a28a92f6d053e4c8ad0bc"}


def matches_shipped(recipe: BuiltinRecipe, folder: Path) -> bool | None:
    """Whether `folder` holds the shipped weights of `recipe` bit for bit; None when rlheal ships none."""
    pinned = SHIPPED_SHA256.get(recipe.hash())
    return None if pinned is None else weights_sha256(folder) == pinned


def cache_root() -> Path:
    """`$RLHEAL_CACHE`, or `~/.cache/rlheal`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlheal").expanduser()


def base_folder(recipe: BuiltinRecipe = DEFAULT_RECIPE, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"base-{recipe.hash()}"


def llama_config(spec: ModelSpec, tokenizer):
    """The `LlamaConfig` of the built-in model (tied embeddings, fp32)."""
    from transformers import LlamaConfig

    if spec.hidden_size % spec.num_attention_heads:
        raise ValueError(f"hidden_size {spec.hidden_size} is not a multiple of num_attention_heads "
                         f"{spec.num_attention_heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_base(recipe: BuiltinRecipe, folder: Path, progress: bool = True) -> Path:
    """Pretrain the recipe's model from scratch and save it to `folder` atomically (replacing it)."""
    import torch
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = char_tokenizer(model_max_length=recipe.model.max_position_embeddings)
    documents = generate_corpus(recipe.world, seed=recipe.seed)
    blocks = pack_documents([d.messages for d in documents], tokenizer, recipe.train.seq_len)
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(llama_config(recipe.model, tokenizer))
    losses = pretrain(model, blocks, recipe.train, seed=recipe.seed, progress=progress)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    extra = {
        "recipe": recipe.model_dump(),
        "world_version": WORLD_VERSION,
        "n_documents": len(documents),
        "corpus_tokens": len(blocks) * recipe.train.seq_len,
        "trained_tokens": recipe.train.steps * recipe.train.batch_size * recipe.train.seq_len,
        "first_loss": losses[0],
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "wall_s": round(time.perf_counter() - started, 1),
        "torch_threads": PRETRAIN_THREADS,
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    manifest = Manifest(stage="base", step=recipe.train.steps, seed=recipe.seed, config_hash=recipe.hash(),
                        extra=extra)
    return save_model(model, tokenizer, folder, manifest, overwrite=True)


def shipped_base(recipe: BuiltinRecipe) -> Path | None:
    """The base rlheal ships for `recipe`, after checking its weights against their pinned sha256; None when
    rlheal ships none for this recipe. Raises CheckpointError for a missing or altered shipped base."""
    pinned = SHIPPED_SHA256.get(recipe.hash())
    if pinned is None:
        return None
    folder = SHIPPED / f"base-{recipe.hash()}"
    if not folder.is_dir():
        raise CheckpointError(f"rlheal ships the base of recipe {recipe.hash()}, but {folder} is missing: reinstall "
                              "rlheal (pip install --force-reinstall rlheal)")
    found = weights_sha256(folder)
    if found != pinned:
        raise CheckpointError(f"the shipped base {folder} has weights sha256 {found[:12]}…, not the pinned "
                              f"{pinned[:12]}…: reinstall rlheal (pip install --force-reinstall rlheal)")
    return folder


def builtin_base(recipe: BuiltinRecipe = DEFAULT_RECIPE, progress: bool = True, cache: Path | None = None,
                 rebuild: bool = False) -> Path:
    """The base folder of `recipe`: the one rlheal ships (pinned by sha256) when there is one, else the cached
    one, pretrained first if it is missing. `rebuild` pretrains it again into the cache and returns that
    folder (`matches_shipped` tells whether its bits are the shipped ones)."""
    if not rebuild and (shipped := shipped_base(recipe)) is not None:
        return shipped
    folder = base_folder(recipe, cache)
    if folder.exists() and not rebuild:
        try:
            check_checkpoint(folder)
            manifest = read_manifest(folder)
        except CheckpointError as exc:
            raise CheckpointError(f"the cached built-in base is damaged: {exc}. Rebuild it with "
                                  f"`rlheal base --rebuild` (or delete {folder})") from exc
        if manifest.config_hash != recipe.hash():
            raise CheckpointError(f"{folder} holds a base with recipe hash {manifest.config_hash}, not "
                                  f"{recipe.hash()}; rebuild it with `rlheal base --rebuild`")
        return folder
    return build_base(recipe, folder, progress=progress)
