"""Streaming weights from safetensors: names, filters, shards, dtypes and bad checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlheal.spectral.weights import (
    CheckpointWeights,
    WeightsError,
    check_compatible,
    parse_layers,
    parse_modules,
    parse_name,
)


def test_parse_name():
    assert parse_name("model.layers.3.self_attn.q_proj.weight") == (3, "q")
    assert parse_name("model.layers.12.mlp.down_proj.weight") == (12, "down")
    assert parse_name("model.embed_tokens.weight") == (None, "embed")
    assert parse_name("lm_head.weight") == (None, "head")
    assert parse_name("model.layers.0.input_layernorm.weight") == (0, "other")


def test_parse_selections():
    assert parse_layers("0-2,5") == {0, 1, 2, 5}
    assert parse_layers("") is None
    for bad in ("3-1", "a", "1-"):
        with pytest.raises(WeightsError, match="bad layer selection"):
            parse_layers(bad)
    assert parse_modules("q, v") == ("q", "v")
    with pytest.raises(WeightsError, match="unknown modules"):
        parse_modules("q,attn")


def test_listing_and_filters(ckpts):
    w = CheckpointWeights(ckpts["base"])
    assert len(w.tensors) == 2 * 7 + 2  # 7 decoder matrices per layer + embed + head
    assert w.tensors["model.layers.1.self_attn.k_proj.weight"].shape == (16, 32)  # short-wide
    chosen = w.select("k,down", {1})
    assert [(i.layer, i.module) for i in chosen] == [(1, "k"), (1, "down")]
    assert {i.module for i in w.select()} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert [i.module for i in w.select("embed,head", {0})] == ["embed", "head"]
    assert not w.tied_embeddings and CheckpointWeights(ckpts["tied"]).tied_embeddings


def test_sharded_and_bf16_read_the_same_weights(ckpts):
    single, sharded = CheckpointWeights(ckpts["sft"]), CheckpointWeights(ckpts["sharded"])
    assert len(sharded.files) > 1 and sharded.tensors.keys() == single.tensors.keys()
    for name in single.tensors:
        assert torch.equal(single.load(name), sharded.load(name))
    bf16 = CheckpointWeights(ckpts["bf16"])
    name = "model.layers.0.mlp.up_proj.weight"
    assert bf16.tensors[name].dtype == "BF16"
    got = bf16.load(name)
    assert got.dtype == torch.float64
    assert torch.equal(got, single.load(name, torch.float32).to(torch.bfloat16).double())


def test_fingerprint_changes_when_weights_are_rewritten(ckpts, tmp_path):
    copy = shutil.copytree(ckpts["base"], tmp_path / "copy")
    before = CheckpointWeights(copy).fingerprint()
    assert CheckpointWeights(copy).fingerprint() == before
    tensors = load_file(copy / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 2
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert CheckpointWeights(copy).fingerprint() != before


def test_non_finite_weights_are_named(ckpts, poked):
    bad = poked(ckpts["base"], "model.layers.1.self_attn.v_proj.weight", float("nan"))
    with pytest.raises(WeightsError, match=r"layers\.1\.self_attn\.v_proj.*1 non-finite"):
        CheckpointWeights(bad).load("model.layers.1.self_attn.v_proj.weight")


def test_incompatible_checkpoints_name_the_tensor(ckpts, tmp_path):
    other = shutil.copytree(ckpts["base"], tmp_path / "other")
    tensors = load_file(other / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :30].contiguous()
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    ref = CheckpointWeights(ckpts["base"])
    with pytest.raises(WeightsError, match=r"layers\.0\.mlp\.up_proj\.weight is missing.*layers\.1\.mlp\.up_proj"
                                           r"\.weight has shape \(48, 30\)"):
        check_compatible(ref, CheckpointWeights(other), ref.select())
