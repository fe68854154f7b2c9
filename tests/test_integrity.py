"""Damaged checkpoints are found, never used: missing tensors, truncated, altered or deleted weight files."""

from __future__ import annotations

import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from rlheal.models.checkpoint import MANIFEST, CheckpointError, find_damage, load_model, read_manifest

DROPPED = "model.layers.1.mlp.down_proj.weight"


def _drop_tensor(folder, name=DROPPED) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_checkpoint_missing_a_weight_tensor_is_not_loaded(tmp_path, tiny_checkpoint):
    from rlheal.evaluate import EVALS, evaluate
    from rlheal.store import Store

    holed = shutil.copytree(tiny_checkpoint, tmp_path / "holed")
    _drop_tensor(holed)
    with pytest.raises(CheckpointError, match=f"lacks 1 weight tensor.*{DROPPED}"):
        load_model(holed)
    with Store(tmp_path / "run") as store:
        with pytest.raises(CheckpointError, match="lacks 1 weight tensor"):
            evaluate(store, [holed], ["gp24"], ["id"], episodes=1, show_progress=False)
        assert store.rows(EVALS) == []


@pytest.mark.parametrize("holed_side", ["reference", "target"])
def test_spectrum_compares_every_matrix_or_names_the_missing_one(tmp_path, tiny_checkpoint, holed_side):
    from rlheal.spectral import WeightsError, run_spectrum

    holed = shutil.copytree(tiny_checkpoint, tmp_path / "holed")
    _drop_tensor(holed)
    pair = (holed, tiny_checkpoint) if holed_side == "reference" else (tiny_checkpoint, holed)
    with pytest.raises(WeightsError, match=DROPPED.replace(".", r"\.")):
        run_spectrum([pair], progress=False, device="cpu", cache=None)


@pytest.mark.parametrize("damage", ["truncated", "altered", "deleted", "shard added"])
def test_find_damage_compares_the_weight_files_with_their_manifest(tmp_path, tiny_checkpoint, damage):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    assert find_damage(folder) is None
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
        match = "has .* bytes, its manifest records"
    elif damage == "altered":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        match = "differs from the sha256 its manifest records"
    elif damage == "deleted":
        weights.unlink()
        match = "no .safetensors weights"
    else:
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-2.safetensors"}}')
        match = "lacks weight shards"
    assert re.search(match, find_damage(folder) or "")


def test_find_damage_of_a_checkpoint_saved_before_digests_checks_what_it_can(tmp_path, tiny_checkpoint):
    import json

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    data = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({k: v for k, v in data.items() if k != "weights"}))
    assert read_manifest(folder).weights == {} and find_damage(folder) is None
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "is damaged" in find_damage(folder)
