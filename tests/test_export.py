"""`rlheal results --table ... --format ...`: every table exportable, CSV flat, angles in degrees everywhere a
person or another tool reads them."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.evaluate import EVALS
from rlheal.export import export_rows, flat, in_degrees, spread, tables, to_csv, write_parquet
from rlheal.spectral.alignment import ALIGNMENT
from rlheal.spectral.metrics import ANGLE_COLUMNS, SPECTRAL, SPECTRAL_SIGMA
from rlheal.store import Store
from rlheal.train.ppo import RL_UPDATES
from rlheal.train.sft import LOSSES


def test_angles_go_to_degrees_under_their_own_names_in_place():
    row = {"target": "t", "top_left_max": math.pi / 2, "top_left_proj": 0.5, "angle_error_bound": None, "k": 3}
    assert in_degrees(row) == {"target": "t", "top_left_max_deg": 90.0, "top_left_proj": 0.5,
                               "angle_error_bound_deg": None, "k": 3}
    assert "top_right_mean" in ANGLE_COLUMNS and "top_left_proj" not in ANGLE_COLUMNS  # a distance, not an angle


def test_mappings_spread_into_dotted_columns_and_lists_stay_out_of_flat_cells():
    rows = [spread({"a": 1, "decoding": {"t": 0.0, "inner": {"x": "y"}}, "solved_at": [1, 0]}), {"a": 2, "b": "new"}]
    assert rows[0] == {"a": 1, "decoding.t": 0.0, "decoding.inner.x": "y", "solved_at": [1, 0]}
    columns, cells = flat(rows)
    assert columns == ["a", "decoding.t", "decoding.inner.x", "b"]
    assert cells[1] == {"a": 2, "decoding.t": None, "decoding.inner.x": None, "b": "new"}
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed[0] == {"a": "1", "decoding.t": "0.0", "decoding.inner.x": "y", "b": ""}


def test_parquet_keeps_lists_and_reads_back(tmp_path):
    import pyarrow.parquet as pq

    rows = export_rows([{"label": "sft-0", "solved_at": [1, 0, 2], "decoding": {"temperature": 0.0}},
                        {"label": "sft-5", "solved_at": [0, 0, 0], "decoding": {"temperature": 0.7}}])
    back = pq.read_table(write_parquet(rows, tmp_path / "x.parquet")).to_pylist()
    assert back == rows


ONE_ROW = {
    EVALS.name: {"checkpoint": "/c", "label": "sft-0", "stage": "sft", "step": 0, "task": "det", "split": "id",
            "eval_set": "e", "success_rate": 0.5, "solved_at": [1, 0], "decoding": {"temperature": 0.0}},
    LOSSES.name: {"checkpoint": "/c", "task": "det", "split": "id", "step": 0, "loss": 1.5, "n_tokens": 10},
    RL_UPDATES.name: {"run_id": "/r", "update": 1, "start": "/c", "algo": "ppo", "task": "det", "mean_reward": 1.0,
                 "adv_hist": {"edges": [-1.0, 0.0, 1.0], "counts": [1, 2]}},
    SPECTRAL.name: {"target": "/t", "reference": "/c", "tensor": "w", "k_label": "k=0.2", "top_left_mean": math.pi / 4,
               "mean_abs_rel_sigma_drift": 0.02},
    SPECTRAL_SIGMA.name: {"target": "/t", "reference": "/c", "tensor": "w", "sigma_ref": [3.0, 1.0],
                     "sigma_target": [2.0, 1.0], "rel_drift": [-1 / 3, 0.0]},
    ALIGNMENT.name: {"start": "/c", "target": "/t", "reference": "/p", "tensor": "w", "cosine": 0.25},
}


@pytest.fixture
def run(tmp_path):
    with Store(tmp_path / "run") as store:
        for name, row in ONE_ROW.items():
            store.put(tables()[name], [row])
    return tmp_path / "run"


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", list(tables()))
def test_every_table_exports_to_every_format(run, tmp_path, name):
    import pyarrow.parquet as pq

    row = ONE_ROW[name]
    as_json = json.loads(cli("results", run, "--table", name, "--format", "json"))
    assert len(as_json) == 1 and all(as_json[0][k] == v for k, v in in_degrees(row).items() if k in as_json[0])
    [as_csv] = list(csv.DictReader(io.StringIO(cli("results", run, "--table", name, "--format", "csv"))))
    assert not any(v.startswith(("{", "[")) for v in as_csv.values())  # one value per cell
    assert not {k for k, v in row.items() if isinstance(v, list)} & set(as_csv)  # list columns only in json/parquet
    cli("results", run, "--table", name, "--format", "parquet", "--out", tmp_path / f"{name}.parquet")
    [as_parquet] = pq.read_table(tmp_path / f"{name}.parquet").to_pylist()
    assert {k: v for k, v in as_parquet.items() if v is not None} == \
        {k: v for k, v in export_rows([row])[0].items() if v is not None}
    assert ("evaluation rows" if name == "evals" else f"rows of {name}") in cli("results", run, "--table", name)


def test_spectral_exports_and_tables_say_degrees(run):
    [as_csv] = list(csv.DictReader(io.StringIO(cli("results", run, "--table", "spectral", "--format", "csv"))))
    assert float(as_csv["top_left_mean_deg"]) == pytest.approx(45.0) and "top_left_mean" not in as_csv
    shown = cli("results", run, "--table", "spectral")
    assert "top_left_mean_deg" in shown and "45" in shown
