"""Work split across processes: sharding, JSON gathering, and the real two-process path (torchrun, gloo, CPU)
checked against the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlheal.distributed import ReplayBackend, gather_json, gather_rows, shard
from rlheal.evaluate import EVALS, evaluate
from rlheal.rollout import Decoding, play
from rlheal.spectral import DecompositionCache, run_spectrum
from rlheal.store import Store

TESTS = Path(__file__).parent


@given(st.lists(st.integers(), max_size=40), st.integers(1, 7), st.booleans())
def test_shards_partition_the_items(items, world, strided):
    shards = [shard(items, r, world, strided=strided) for r in range(world)]
    assert sorted(x for s in shards for x in s) == sorted(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    if not strided:
        assert [x for s in shards for x in s] == items  # contiguous shards concatenate back in order


def test_shard_hand_cases():
    assert [shard(range(7), r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard(range(7), r, 3, strided=True) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard([1, 2], 3, 4) == []
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard([1], 2, 2)


def test_single_process_gather_is_identity_through_json():
    rows = [{"a": 1, "b": 0.1 + 0.2, "c": "x", "d": None, "e": float("inf")}]
    assert gather_rows(rows) == rows
    assert gather_json({"k": [1, 2]}) == [{"k": [1, 2]}]


def test_replay_backend_reproduces_played_episodes(echo_task):
    """Replaying recorded turns through `play` gives the same episodes, including a context stop."""
    problems = echo_task.problems("ood", 0, 4)
    answers = iter(["x", "12", "7", "y", "1", "2", "3", "4", "5", "6", "7", "8"])

    class Recorder:
        def generate(self, batch, **_):
            from rlheal.rollout import Generation
            return [Generation(next(answers)) for _ in batch]

        def fits(self, batch, **_):
            return [m[0]["content"] != echo_task.prompt(problems[2]) for m in batch]  # episode 2 outgrows

    played = play(echo_task, problems, Recorder())
    replay = ReplayBackend()
    for pe in played:
        replay.record([[t.role, t.content] for t in pe.episode.turns], pe.stopped is not None)
    again = play(echo_task, problems, replay)
    assert [pe.episode.turns for pe in again] == [pe.episode.turns for pe in played]
    assert [pe.stopped for pe in again] == [pe.stopped for pe in played] and played[2].stopped == "context"


WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import EchoTask
from rlheal.distributed import distributed_evaluate, distributed_spectrum, ensure_process_group
from rlheal.rollout import Decoding
from rlheal.spectral import DecompositionCache

a, b, store, out = sys.argv[1:]
rank, world = ensure_process_group()
assert world == 2, world
rows = distributed_evaluate(store, [a, b], [EchoTask()], ("id", "ood"), **{eval_kwargs})
spec, sigma = distributed_spectrum([(a, b)], {ks!r}, {modules!r}, method="gram64", device="cpu",
                                   cache=DecompositionCache(out + "/cache"), store=store, progress=False)
if rank == 0:
    with open(out + "/result.json", "w") as fh:
        json.dump({{"evals": rows, "spectral": spec, "sigma": sigma}}, fh)
"""
EVAL_KWARGS = dict(episodes=7, max_attempts=2, decoding=Decoding(max_new_tokens=6), batch_size=3)
KS = (0.25, 3)
MODULES = "q,k,v,o,gate,up,down,embed"


def _without(rows, *columns):
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, make_tiny_checkpoint, echo_task):
    a = make_tiny_checkpoint(tmp_path / "a", seed=0, num_hidden_layers=3)
    b = make_tiny_checkpoint(tmp_path / "b", seed=1, num_hidden_layers=3, step=5)
    out = tmp_path / "out"
    out.mkdir()
    worker = tmp_path / "worker.py"
    kwargs = repr(EVAL_KWARGS | {"show_progress": False})  # Decoding's repr is a valid constructor call
    worker.write_text(WORKER.format(tests=str(TESTS), eval_kwargs=kwargs, ks=KS, modules=MODULES))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(a), str(b), str(tmp_path / "run2"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())

    single = evaluate(Store(tmp_path / "run1"), [a, b], [echo_task], ("id", "ood"), show_progress=False,
                      **EVAL_KWARGS)
    assert len(single) == 4
    # `versions` records each process's torch threads: the workers ran at OMP_NUM_THREADS=1, this one may not
    assert [r["versions"]["torch_threads"] for r in result["evals"]] == [1] * 4
    assert _without(result["evals"], "created", "versions") == _without(single, "created", "versions")
    stored = Store(tmp_path / "run2").rows(EVALS)
    assert _without(stored, "created", "versions") == _without(single, "created", "versions")  # rank 0 wrote it

    spec, sigma = run_spectrum([(a, b)], KS, MODULES, method="gram64", device="cpu",
                               cache=DecompositionCache(tmp_path / "cache1"), progress=False)
    assert len(spec) == 2 * (3 * 7 + 1)  # two k per matrix: 3 layers x 7 modules + the embeddings
    assert _without(result["spectral"], "seconds", "created") == _without(spec, "seconds", "created")
    assert result["sigma"] == json.loads(json.dumps(sigma))


CONFIGS = TESTS.parent / "configs"


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-1gpu.yaml", "qwen2.5-7b-multigpu.yaml"])
def test_real_model_study_configs_parse(name):
    from rlheal.config import load_config

    config = load_config(CONFIGS / name)
    assert config.profile == config.sft.profile == config.rl.ppo.profile == "paper"
    assert config.model.startswith("/models/Qwen2.5-") and config.sft.bf16
