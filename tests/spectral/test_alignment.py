"""The alignment screen: the cosine between a checkpoint's change from its start and the way back to a
reference, checked against numpy on hand-built matrices and on tiny checkpoints."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.report.direction import directions
from rlheal.spectral.alignment import ALIGNMENT, run_alignment, update_alignment
from rlheal.store import Store


def test_hand_built_updates():
    start = torch.zeros(2, 2, dtype=torch.float64)
    peak = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    halfway = update_alignment(start, 0.5 * peak, peak)
    assert halfway == pytest.approx({"cosine": 1.0, "back_fraction": 0.5, "update_norm": 1.0, "back_norm": 2.0})
    sideways = update_alignment(start, torch.tensor([[0.0, 3.0], [0.0, 0.0]]), peak)
    assert sideways["cosine"] == 0.0 and sideways["back_fraction"] == 0.0
    assert update_alignment(start, -peak, peak)["cosine"] == -1.0
    unmoved = update_alignment(start, start, peak)
    assert math.isnan(unmoved["cosine"]) and unmoved["update_norm"] == 0.0


def test_random_matrices_match_numpy():
    rng = np.random.default_rng(0)
    s, t, r = (rng.standard_normal((6, 4)) for _ in range(3))
    found = update_alignment(*(torch.from_numpy(m) for m in (s, t, r)))
    a, b = (t - s).ravel(), (r - s).ravel()
    assert found["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12)
    assert found["back_fraction"] == pytest.approx(a @ b / (b @ b), rel=1e-12)


def _blend(folder, start, reference, weight, noise_seed=None):
    """A checkpoint whose weights are start + weight·(reference − start), plus small noise when asked."""
    folder.mkdir()
    for name in ("config.json",):
        (folder / name).write_bytes((start / name).read_bytes())
    a, b = load_file(start / "model.safetensors"), load_file(reference / "model.safetensors")
    gen = torch.Generator().manual_seed(noise_seed or 0)
    mixed = {k: a[k] + weight * (b[k] - a[k]) + (1e-3 * torch.randn(a[k].shape, generator=gen) if noise_seed else 0)
             for k in a}
    save_file(mixed, folder / "model.safetensors")
    return folder


def test_checkpoints_walking_back_and_the_cli(tmp_path, ckpts):
    start, peak = ckpts["sft"], ckpts["base"]
    back = _blend(tmp_path / "back", start, peak, 0.25)
    rows = run_alignment([(start, back, peak)], "q,k,v,o,gate,up,down")
    assert len(rows) == 14 and {r["module"] for r in rows} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["back_fraction"] == pytest.approx(0.25, abs=1e-5)
               for r in rows)
    away = _blend(tmp_path / "away", start, peak, -0.5)
    assert all(r["cosine"] == pytest.approx(-1.0, abs=1e-6) for r in run_alignment([(start, away, peak)], "q"))
    result = CliRunner().invoke(app, ["spectrum", str(back), "--ref", str(start), "--toward", str(peak),
                                      "--store", str(tmp_path / "run"), "--modules", "q,v"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "alignment" in result.output and "1.000" in result.output
    with Store(tmp_path / "run") as store:
        assert len(store.rows(ALIGNMENT)) == 4


def test_directions_summarise_each_arms_last_checkpoint():
    evals = [{"checkpoint": "s10", "stage": "sft", "step": 10, "label": "sft-10"},
             {"checkpoint": "r5", "stage": "rl", "step": 5, "label": "sft-10+ppo-5", "parent": "s10"},
             {"checkpoint": "r9", "stage": "rl", "step": 9, "label": "sft-10+ppo-9", "parent": "s10"},
             {"checkpoint": "c9", "stage": "rl", "step": 9, "label": "sft-10+ppo-control-9", "parent": "s10"}]
    alignment = [{"target": "r5", "cosine": 0.9, "back_fraction": 0.5},
                 {"target": "r9", "cosine": 0.2, "back_fraction": 0.1}, {"target": "r9", "cosine": 0.4,
                                                                         "back_fraction": float("nan")},
                 {"target": "c9", "cosine": -0.1, "back_fraction": 0.0}]
    found = directions([(evals, alignment), (evals, alignment)])
    assert [(d.start_step, d.arm) for d in found] == [(10, "ppo"), (10, "ppo-control")]
    assert found[0].cosine == pytest.approx((0.3, 0.3)) and found[0].back_fraction == pytest.approx((0.1, 0.1))
    assert found[1].mean_cosine == pytest.approx(-0.1)
