"""Run folders are relocatable: lineage in manifests is relative inside a run, and no hash holds a path."""

from __future__ import annotations

import json
import shutil

import pytest

from rlheal.models.checkpoint import MANIFEST, Manifest, read_manifest, write_manifest
from rlheal.rollout import Decoding
from rlheal.store import Store
from rlheal.train.sft import SFTConfig, config_hash


def test_a_parent_inside_the_run_folder_follows_the_folder_when_it_moves(tmp_path, make_tiny_checkpoint):
    run = tmp_path / "run"
    Store(run).close()  # a run folder is one holding a results store
    start = make_tiny_checkpoint(run / "sft" / "step-000008", step=8)
    rl = run / "rl" / "sft-8-ppo" / "step-000001"
    write_manifest(rl, Manifest(stage="rl", step=1, parent=str(start)))
    outside = make_tiny_checkpoint(tmp_path / "models" / "base", stage="base")
    write_manifest(start, Manifest(stage="sft", step=8, parent=str(outside)))
    assert json.loads((rl / MANIFEST).read_text())["parent"] == "../../../sft/step-000008"

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    assert read_manifest(moved / "rl" / "sft-8-ppo" / "step-000001").parent == str(moved / "sft" / "step-000008")
    assert read_manifest(moved / "sft" / "step-000008").parent == str(outside)  # outside the run: as given


def test_a_checkpoint_outside_any_run_folder_keeps_an_absolute_parent(tmp_path):
    write_manifest(tmp_path / "edit", Manifest(stage="edit", step=3, parent=str(tmp_path / "target")))
    assert json.loads((tmp_path / "edit" / MANIFEST).read_text())["parent"] == str(tmp_path / "target")


def test_the_sft_hash_names_the_start_by_what_it_is_not_where_it_lies(tmp_path, make_tiny_checkpoint):
    base = make_tiny_checkpoint(tmp_path / "cache-a" / "base-1234", stage="base")
    write_manifest(base, Manifest(stage="base", step=10, config_hash="recipe-1234"))
    other_cache = tmp_path / "home" / "someone" / ".cache" / "base-1234"
    shutil.copytree(base, other_cache)
    cfg = SFTConfig(steps=4)
    hashes = {config_hash(cfg.model_copy(update={"model": str(b)}), b) for b in (base, other_cache)}
    assert len(hashes) == 1

    external = make_tiny_checkpoint(tmp_path / "qwen", stage="base")
    (external / MANIFEST).unlink()  # another tool's checkpoint: identified by its weights
    moved = shutil.copytree(external, tmp_path / "models" / "qwen")
    hashes = {config_hash(cfg.model_copy(update={"model": str(b)}), b) for b in (external, moved)}
    assert len(hashes) == 1
    other_weights = make_tiny_checkpoint(tmp_path / "other", stage="base", seed=1)
    (other_weights / MANIFEST).unlink()
    assert config_hash(cfg, other_weights) not in hashes


@pytest.mark.slow
def test_rl_checkpoints_evaluated_after_the_run_folder_moved_name_their_real_start(tmp_path, make_tiny_checkpoint,
                                                                                  echo_task):
    """RL saved its checkpoint, the process died before evaluating it, and the run folder was moved."""
    from rlheal.train.ppo import PPOConfig, train_ppo
    from rlheal.train.sweep import rl_folder, rl_summary, run_sweep

    run = tmp_path / "run"
    start = make_tiny_checkpoint(run / "sft" / "step-000040", step=40)
    settings = dict(task="echo", episodes_per_update=2, max_attempts=1, max_new_tokens=3, updates=1, seed=0)
    with Store(run) as store:
        train_ppo(start, rl_folder(run, start, "ppo"), PPOConfig(**settings), store=store, task=echo_task,
                  show_progress=False)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    run_sweep(moved / "sft", moved, algo="ppo", steps=[40], overrides=settings, eval_episodes=2,
              eval_decoding=Decoding(max_new_tokens=3), task=echo_task, show_progress=False)
    with Store(moved) as store:
        [row] = rl_summary(store)
    assert (row["start"], row["start_label"], row["rl_step"]) == (str(moved / "sft" / "step-000040"), "sft-40", 1)
    assert row["id_before"] is not None and row["id_after"] is not None
