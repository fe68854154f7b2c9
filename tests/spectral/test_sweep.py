"""The diagnostic sweep against independent numpy/scipy computations, the cache, references and the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.spectral import SPECTRAL, DecompositionCache, aggregate, reference_pairs, run_spectrum
from rlheal.spectral.weights import CheckpointWeights, WeightsError
from rlheal.store import Store, StoreError, Table


def numpy_metrics(W_ref: np.ndarray, W_t: np.ndarray, k: int) -> dict[str, float]:
    Ur, sr, Vrt = np.linalg.svd(W_ref, full_matrices=False)
    Ut, st, Vtt = np.linalg.svd(W_t, full_matrices=False)
    D = W_t - W_ref
    C = Ur[:, :k].T @ D @ Vrt[:k].T
    total = np.sum(D**2)
    return {
        "mean_abs_rel_sigma_drift": float(np.mean(np.abs((st - sr) / sr))),
        "top_left_max": float(sla.subspace_angles(Ur[:, :k], Ut[:, :k]).max()),
        "top_right_mean": float(sla.subspace_angles(Vrt[:k].T, Vtt[:k].T).mean()),
        "tail_left_max": float(sla.subspace_angles(Ur[:, -k:], Ut[:, -k:]).max()),
        "tail_right_max": float(sla.subspace_angles(Vrt[-k:].T, Vtt[-k:].T).max()),
        "top_left_proj": float(np.linalg.norm(Ur[:, :k] @ Ur[:, :k].T - Ut[:, :k] @ Ut[:, :k].T)),
        "diag_share": float(np.sum(np.diag(C) ** 2) / total),
        "offdiag_share": float((np.sum(C**2) - np.sum(np.diag(C) ** 2)) / total),
    }


@pytest.mark.parametrize("method", ["gram64", "svd64"])
def test_rows_match_numpy_and_scipy(ckpts, method):
    rows, sigma_rows = run_spectrum([(ckpts["base"], ckpts["sft"])], ks=(0.25, 3), method=method,
                                    device="cpu", progress=False)
    assert len(rows) == 14 * 2 and len(sigma_rows) == 14
    base, sft = CheckpointWeights(ckpts["base"]), CheckpointWeights(ckpts["sft"])
    for row in rows:
        if row["module"] not in ("k", "gate") or row["layer"] != 1:
            continue
        W_ref, W_t = base.load(row["tensor"]).numpy(), sft.load(row["tensor"]).numpy()
        assert row["k"] == (round(0.25 * min(W_ref.shape)) if row["k_label"] == "k=0.25" else 3)
        want = numpy_metrics(W_ref, W_t, row["k"])
        for col, value in want.items():
            assert row[col] == pytest.approx(value, rel=1e-6, abs=1e-12), col
        assert row["angle_error_bound"] < 1e-10


def test_identical_checkpoints_have_no_drift_or_rotation(ckpts):
    rows, _ = run_spectrum([(ckpts["base"], ckpts["base"])], ks=(0.5,), device="cpu", progress=False)
    for row in rows:
        assert row["mean_abs_rel_sigma_drift"] == 0.0 and row["delta_rel_norm"] == 0.0
        assert max(row[c] for c in ("top_left_max", "top_right_max", "tail_left_max", "tail_right_max")) < 1e-12
        assert row["diag_share"] == 0.0 == row["offdiag_share"]


def test_reference_is_cached_and_reused(ckpts, private_cache):
    cache = DecompositionCache(private_cache)
    first, _ = run_spectrum([(ckpts["base"], ckpts["sft"])], ks=(0.25,), modules="q,v", layers={0},
                            device="cpu", cache=cache, progress=False)
    assert (cache.hits, cache.misses) == (0, 2)
    second, _ = run_spectrum([(ckpts["base"], ckpts["rl"])], ks=(0.25,), modules="q,v", layers={0},
                             device="cpu", cache=cache, progress=False)
    assert (cache.hits, cache.misses) == (2, 2)
    again, _ = run_spectrum([(ckpts["base"], ckpts["sft"])], ks=(0.25,), modules="q,v", layers={0},
                            device="cpu", cache=cache, progress=False)
    for a, b in zip(first, again, strict=True):
        assert a["top_left_max"] == b["top_left_max"] and a["tail_right_mean"] == b["tail_right_mean"]
    # a larger k than cached recomputes instead of reading too few vectors
    run_spectrum([(ckpts["base"], ckpts["sft"])], ks=(0.5,), modules="q,v", layers={0}, device="cpu",
                 cache=cache, progress=False)
    assert cache.misses == 4


def test_sharded_bf16_targets_and_k_beyond_rank(ckpts):
    with pytest.warns(UserWarning, match=r"k_proj\.weight: k=20 exceeds the rank 16"):
        rows, _ = run_spectrum([(ckpts["sharded"], ckpts["bf16"])], ks=(20,), modules="k", layers={0},
                               device="cpu", progress=False)
    (row,) = rows
    assert row["k"] == 16 and row["k_label"] == "k=20"
    assert row["top_left_max"] < 1e-12  # k = rank on the short side: both span all of R^16
    assert row["top_right_max"] > 1e-4  # bf16 rounding rotates the 16-dim row space inside R^32


def test_mismatched_checkpoints_are_refused(ckpts, tmp_path):
    other = shutil.copytree(ckpts["base"], tmp_path / "other")
    tensors = load_file(other / "model.safetensors")
    tensors["model.layers.1.mlp.gate_proj.weight"] = tensors["model.layers.1.mlp.gate_proj.weight"][:40].clone()
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"gate_proj\.weight has shape \(40, 32\)"):
        run_spectrum([(ckpts["base"], other)], device="cpu", progress=False)


def test_aggregate_takes_max_of_maxima_and_mean_of_the_rest():
    rows = [{"module": "q", "top_left_max": 0.1, "mean_abs_rel_sigma_drift": 0.2},
            {"module": "q", "top_left_max": 0.3, "mean_abs_rel_sigma_drift": 0.4},
            {"module": "k", "top_left_max": 0.5, "mean_abs_rel_sigma_drift": math.nan}]
    q, k = aggregate(rows, ("module",))
    assert q["top_left_max"] == 0.3 and q["mean_abs_rel_sigma_drift"] == pytest.approx(0.3)
    assert q["n_matrices"] == 2 and math.isnan(k["mean_abs_rel_sigma_drift"])


EVALS = Table("evals", {"checkpoint": "str", "stage": "str", "step": "int", "task": "str", "split": "str",
                        "eval_set": "str", "success_rate": "float", "solved_at": "json"},
              key=("checkpoint", "task", "split", "eval_set"))


def test_reference_pairs(tmp_path, ckpts):
    targets = [ckpts["base"], ckpts["sft"], ckpts["rl"]]
    assert reference_pairs("previous", targets) == [(ckpts["base"], ckpts["sft"]), (ckpts["sft"], ckpts["rl"])]
    run = tmp_path / "run"
    with pytest.raises(StoreError, match="no evals table"):
        reference_pairs("ood-peak", targets, run)
    with Store(run) as store:
        store.put(EVALS, [
            {"checkpoint": "/r/sft/step-40", "stage": "sft", "step": 40, "task": "gp24", "split": "ood",
             "eval_set": "s", "success_rate": 0.2, "solved_at": [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]},
            {"checkpoint": "/r/sft/step-80", "stage": "sft", "step": 80, "task": "gp24", "split": "ood",
             "eval_set": "s", "success_rate": 0.3, "solved_at": [1, 0, 1, 0, 1, 0, 0, 0, 0, 0]},
            {"checkpoint": "/r/sft/step-120", "stage": "sft", "step": 120, "task": "gp24", "split": "ood",
             "eval_set": "s", "success_rate": 0.3, "solved_at": [1, 0, 1, 0, 1, 0, 0, 0, 0, 0]},
            {"checkpoint": "/r/sft/step-160", "stage": "sft", "step": 160, "task": "gp24", "split": "id",
             "eval_set": "s", "success_rate": 0.9, "solved_at": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]},
            {"checkpoint": "/r/rl/step-10", "stage": "rl", "step": 10, "task": "gp24", "split": "ood",
             "eval_set": "s", "success_rate": 0.9, "solved_at": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]},
        ])
    # highest OOD success on the selection half among SFT rows; the tie between steps 80 and 120 goes to the
    # earlier one
    assert reference_pairs("ood-peak", targets[:1], run) == [(Path("/r/sft/step-80"), ckpts["base"])]
    with pytest.raises(StoreError, match="needs --store"):
        reference_pairs("base", targets)
    with pytest.raises(StoreError, match="give the base model"):
        reference_pairs("base", targets, run)


def test_cli_spectrum_and_edit(ckpts, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["spectrum", "--ref", str(ckpts["base"]), str(ckpts["sft"]), str(ckpts["rl"]),
                                 "--k", "0.25,2", "--modules", "q,down", "--layers", "1", "--store", str(run),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "spectral summary" in result.output
    with Store(run) as store:
        stored = store.rows(SPECTRAL)
    assert len(stored) == 2 * 2 * 2  # targets × matrices × k
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["spectrum", "--ref", "previous", str(ckpts["base"]), str(ckpts["sft"]),
                                 "--modules", "v", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("\n") == 1 + 2
    bad = runner.invoke(app, ["spectrum", "--ref", str(ckpts["base"]), str(ckpts["sft"]), "--k", "0"])
    assert bad.exit_code != 0
    bad = runner.invoke(app, ["spectrum", "--ref", str(ckpts["base"]), str(ckpts["sft"]), "--k", "1.5"])
    assert bad.exit_code == 1 and "out of range" in bad.output
    result = runner.invoke(app, ["edit", "--ref", str(ckpts["base"]), "--target", str(ckpts["sft"]), "--mode",
                                 "triplets", "--top", "0.2", "--tail", "2", "--layers", "0", "--out",
                                 str(tmp_path / "edited"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "edited" / "rlheal_manifest.json").read_text())["stage"] == "edit"


def test_each_checkpoint_is_read_and_decomposed_once_per_tensor(ckpts, monkeypatch):
    import rlheal.spectral.sweep as sweep

    reads, decompositions = [], []
    real_read, real_decompose = CheckpointWeights.read, sweep.decompose
    monkeypatch.setattr(CheckpointWeights, "read", lambda self, name: reads.append(self.folder) or real_read(self, name))
    monkeypatch.setattr(sweep, "decompose", lambda W, *a, **kw: decompositions.append(1) or real_decompose(W, *a, **kw))
    chain = [ckpts["base"], ckpts["sft"], ckpts["rl"]]
    pairs = reference_pairs("previous", chain)  # sft is the target of one pair and the reference of the next
    rows, sigma_rows = run_spectrum(pairs, ks=(0.25, 2), modules="q,down", device="cpu", progress=False)
    tensors = 2 * 2  # q and down of two layers
    assert len(decompositions) == 3 * tensors and len(reads) == 3 * tensors  # pair by pair would take 4 each
    # the same rows, in the same order, as one sweep per pair
    separate = [run_spectrum([pair], ks=(0.25, 2), modules="q,down", device="cpu", progress=False) for pair in pairs]
    assert _without(rows, "seconds", "created") == _without([r for s in separate for r in s[0]], "seconds", "created")
    assert sigma_rows == [r for s in separate for r in s[1]]


def _without(rows, *columns):
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


def test_no_disk_cache_unless_asked(ckpts, tmp_path, monkeypatch):
    monkeypatch.delenv("RLHEAL_SPECTRAL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_spectrum([(ckpts["base"], ckpts["sft"])], modules="q", layers={0}, device="cpu", progress=False)
    runner = CliRunner()
    args = ["spectrum", "--ref", str(ckpts["base"]), str(ckpts["sft"]), "--modules", "v", "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    assert not (tmp_path / "home").exists()
    assert runner.invoke(app, [*args, "--cache", str(tmp_path / "asked")]).exit_code == 0
    assert len(list((tmp_path / "asked").rglob("*.safetensors"))) == 2  # v of both layers of the reference


def test_auto_device_keeps_small_models_on_the_cpu(monkeypatch):
    from rlheal.spectral.sweep import AUTO_CUDA_MIN_RANK, resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_device("auto", 896).type == "cpu"
    assert resolve_device("auto", AUTO_CUDA_MIN_RANK).type == "cuda"
    assert resolve_device("cpu", 10**5).type == "cpu" and resolve_device("cuda:1", 8) == torch.device("cuda:1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device(None, 10**5).type == "cpu"


def test_non_finite_target_is_named(ckpts, poked):
    bad = poked(ckpts["sft"], "model.layers.1.mlp.up_proj.weight", float("inf"), (3, 2))
    with pytest.raises(WeightsError, match=r"sft-poked: tensor model\.layers\.1\.mlp\.up_proj\.weight has 1 non-finite"):
        run_spectrum([(ckpts["base"], bad)], device="cpu", progress=False)


@pytest.mark.slow
def test_cpu_benchmark_runs_both_ways_and_ours_matches_float64_svd(tmp_path):
    """benchmarks/bench_spectral.py end to end on tiny shapes: both processes run and read back (angles from
    `rlheal spectrum --out` come in degrees), ours agrees with float64 SVD, float32 SVDs only loosely."""
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "benchmarks" / "bench_spectral.py"
    done = subprocess.run([sys.executable, str(script), "--targets", "2", "--repeats", "1", "--hidden", "64",
                           "--layers", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == {"hidden": 64, "intermediate": 171, "kv": 21, "layers": 1}
    assert len(report["wall_s"]["ours"]) == len(report["cpu_s"]["naive"]) == 1
    errors = report["worst_abs_error_vs_svd64"]
    assert errors["ours"]["angle"] < 1e-10 and errors["ours"]["drift"] < 1e-10
    assert 1e-9 < errors["naive"]["angle"] < 1e-2  # float32: visibly less exact, still the same metric
