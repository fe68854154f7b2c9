"""A weight index naming shards outside its checkpoint folder is refused by every reader and writer."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.models.checkpoint import CheckpointError, check_checkpoint, load_model
from rlheal.spectral import run_spectrum
from rlheal.spectral.weights import CheckpointWeights

INDEX = "model.safetensors.index.json"


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(params=["relative", "absolute"])
def hostile(request, tmp_path, ckpts):
    """A sharded target whose index sends its first shard to a neighbouring checkpoint (`victim`)."""
    target, victim = tmp_path / "target", tmp_path / "victim"
    shutil.copytree(ckpts["sharded"], target)
    shutil.copytree(ckpts["sharded"], victim)
    index = json.loads((target / INDEX).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    elsewhere = f"../victim/{first}" if request.param == "relative" else str(victim / first)
    index["weight_map"] = {k: elsewhere if v == first else v for k, v in index["weight_map"].items()}
    (target / INDEX).write_text(json.dumps(index))
    return target, victim


def test_edit_refuses_and_writes_nothing_anywhere(tmp_path, ckpts, hostile):
    target, victim = hostile
    before = _digest(victim)
    out = tmp_path / "edited"
    result = CliRunner().invoke(app, ["edit", "--ref", str(ckpts["base"]), "--target", str(target), "--mode",
                                      "values", "--top", "1", "--modules", "q", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "Traceback" not in result.output
    assert _digest(victim) == before  # the neighbour's weights are untouched
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["target", "victim"]


def test_spectrum_and_loading_refuse_to_read_outside(ckpts, hostile):
    target, _ = hostile
    with pytest.raises(CheckpointError, match="refused"):
        check_checkpoint(target)
    with pytest.raises(CheckpointError, match="refused"):
        CheckpointWeights(target)
    with pytest.raises(CheckpointError, match="refused"):
        run_spectrum([(ckpts["base"], target)], progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(target)
