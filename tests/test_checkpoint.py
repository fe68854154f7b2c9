"""Checkpoint folders: discovery, manifests, whole-folder checks with clear errors, atomic save + load."""

import json

import pytest

from rlheal.models.checkpoint import (
    CheckpointError,
    Manifest,
    check_checkpoint,
    find_checkpoints,
    load_model,
    read_manifest,
    save_model,
    weights_sha256,
    write_manifest,
)


def test_external_folders_get_their_step_from_the_name(tmp_path):
    for name, step in (("checkpoint-120", 120), ("global_step_7", 7), ("step-000040", 40), ("final", 0)):
        folder = tmp_path / name
        folder.mkdir()
        m = read_manifest(folder)
        assert (m.stage, m.step) == ("external", step)


def test_manifest_round_trip_and_label(tmp_path):
    write_manifest(tmp_path, Manifest(stage="edit", step=3, parent="/p", extra={"name": "edit-vectors-top0.2"}))
    m = read_manifest(tmp_path)
    assert (m.stage, m.step, m.parent, m.label) == ("edit", 3, "/p", "edit-vectors-top0.2")
    assert Manifest(stage="sft", step=40).label == "sft-40"
    (tmp_path / "rlheal_manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid rlheal manifest"):
        read_manifest(tmp_path)


def test_incomplete_folders_are_named_with_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(CheckpointError, match="corrupt"):
        check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="convert them to safetensors"):
        check_checkpoint(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        check_checkpoint(tmp_path)


def test_find_checkpoints_orders_by_step(tmp_path, make_tiny_checkpoint):
    for step in (100, 20, 3):
        make_tiny_checkpoint(tmp_path / f"checkpoint-{step}", step=step, stage="external")
    (tmp_path / "not-a-checkpoint").mkdir()
    found = find_checkpoints([tmp_path])
    assert [p.name for p in found] == ["checkpoint-3", "checkpoint-20", "checkpoint-100"]
    assert find_checkpoints([found[0]]) == [found[0]]
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        find_checkpoints([tmp_path / "not-a-checkpoint"])


def test_save_is_atomic_and_loads_back(tmp_path, tiny_checkpoint):
    import torch

    model, tokenizer = load_model(tiny_checkpoint)
    out = save_model(model, tokenizer, tmp_path / "copy", Manifest(stage="sft", step=5, seed=1))
    again, _ = load_model(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert read_manifest(out).step == 5
    with pytest.raises(FileExistsError):
        save_model(model, tokenizer, out, Manifest(stage="sft", step=6))
    assert read_manifest(out).step == 5  # the refused save left the folder alone


def test_weights_sha256_is_the_files_sha256_and_tracks_every_weight(tmp_path, make_tiny_checkpoint):
    import hashlib
    import shutil

    from safetensors.numpy import load_file, save_file

    one = make_tiny_checkpoint(tmp_path / "one", seed=0)
    same = make_tiny_checkpoint(tmp_path / "same", seed=0)
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    assert weights_sha256(one) == hashlib.sha256((one / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(one) == weights_sha256(same) != weights_sha256(other)

    nudged = tmp_path / "nudged"
    shutil.copytree(one, nudged)
    tensors = load_file(nudged / "model.safetensors")
    name = sorted(tensors)[-1]
    tensors[name].flat[0] = tensors[name].flat[0] + 1e-6
    save_file(tensors, nudged / "model.safetensors", metadata={"format": "pt"})
    assert weights_sha256(nudged) != weights_sha256(one)

    shards = tmp_path / "shards"
    shutil.copytree(one, shards)
    (shards / "model.safetensors").rename(shards / "model-00002.safetensors")
    (shards / "model-00001.safetensors").write_bytes(b"first shard")
    expected = hashlib.sha256(b"first shard" + (one / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(shards) == expected  # shards are read in name order
    with pytest.raises(CheckpointError, match="does not exist"):
        weights_sha256(tmp_path / "missing")


@pytest.mark.parametrize("change,match", [
    ({"step": "abc"}, "step is str 'abc', not int"),
    ({"step": True}, "step is bool"),
    ({"stage": "../../X"}, "stage '../../X' is not a plain name"),
    ({"extra": {"name": "../../X"}}, r"extra.name '../../X' is not a plain name"),
    ({"extra": {"name": "[/bold]"}}, "not a plain name"),
    ({"weights": {"../model.safetensors": {"sha256": "0" * 64, "bytes": 1}}}, "not a relative path inside"),
    ({"parent": 7}, "parent is int"),
])
def test_manifest_fields_of_the_wrong_kind_are_refused(tmp_path, change, match):
    write_manifest(tmp_path, Manifest(stage="rl", step=1, extra={"name": "sft-8+ppo-1"}))
    data = json.loads((tmp_path / "rlheal_manifest.json").read_text())
    (tmp_path / "rlheal_manifest.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CheckpointError, match=match):
        read_manifest(tmp_path)


def test_a_manifest_records_the_digest_of_every_weight_file(tmp_path, tiny_checkpoint):
    import hashlib

    weights = read_manifest(tiny_checkpoint).weights
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    assert weights == {"model.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}


def test_rl_from_a_start_whose_manifest_names_a_place_outside_the_run_is_refused(tmp_path, make_tiny_checkpoint):
    from rlheal.train.sweep import SweepError, run_sweep

    start = make_tiny_checkpoint(tmp_path / "run" / "sft" / "step-000040", step=40)
    data = json.loads((start / "rlheal_manifest.json").read_text())
    data["extra"]["name"] = "../../escaped"
    (start / "rlheal_manifest.json").write_text(json.dumps(data))
    with pytest.raises(SweepError, match="not a plain name"):
        run_sweep(tmp_path / "run" / "sft", tmp_path / "run", steps=[40], overrides={"updates": 1},
                  show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["sft"]
