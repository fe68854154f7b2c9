"""The report's spectral series (SFT steps and RL updates never on one axis), its header, and the summary a
study prints at its end."""

from __future__ import annotations

import json

from test_findings import run_rows

from rlheal.report.figures import spectral_heatmaps, spectral_series, spectral_summary
from rlheal.report.findings import compute
from rlheal.report.header import run_facts
from rlheal.report.summary import findings_lines


def _eval(checkpoint, stage, step, label, parent=None):
    return {"checkpoint": checkpoint, "stage": stage, "step": step, "label": label, "parent": parent}


EVALS = [_eval("s0", "sft", 0, "sft-0"), _eval("s10", "sft", 10, "sft-10"), _eval("s20", "sft", 20, "sft-20"),
         _eval("r1", "rl", 1, "sft-10+ppo-1", "s10"), _eval("r2", "rl", 2, "sft-10+ppo-2", "s10"),
         _eval("c2", "rl", 2, "sft-10+ppo-control-2", "s10"), _eval("e", "edit", 20, "edit-values", "s20")]


def _spectral(target, angle, reference="s0", layer=0):
    return {"target": target, "reference": reference, "k_label": "k=0.2", "layer": layer,
            "mean_abs_rel_sigma_drift": angle / 100, "top_left_mean": angle, "top_right_mean": angle}


SPECTRAL = [_spectral(t, a) for t, a in (("s10", 0.1), ("s20", 0.2), ("r1", 0.11), ("r2", 0.12), ("c2", 0.13),
                                         ("e", 0.5))] + [_spectral("s20", 9.0, reference="elsewhere")]


def test_sft_steps_and_rl_updates_are_separate_series():
    series = spectral_series(SPECTRAL, EVALS, "s0", "k=0.2")
    assert list(series) == ["SFT", "sft-10+ppo", "sft-10+ppo-control"]
    assert {name: list(points) for name, points in series.items()} == {
        "SFT": [10, 20], "sft-10+ppo": [0, 1, 2], "sft-10+ppo-control": [0, 2]}
    assert [r["target"] for r in series["sft-10+ppo"][0]] == ["s10"]  # update 0 is the start itself
    assert all(r["reference"] == "s0" for points in series.values() for rows in points.values() for r in rows)


def test_the_spectral_summary_plots_sft_and_rl_on_their_own_axes():
    import numpy as np

    fig = spectral_summary(SPECTRAL, EVALS, {"base": "s0"}, "k=0.2")
    by_x = {}
    for ax in fig.axes:
        by_x.setdefault(ax.get_xlabel().split(" (")[0], []).append(ax)
    [top], rl_axes = by_x["SFT step"], by_x["RL update"]
    assert list(top.lines[0].get_xdata()) == [10, 20] and len(rl_axes) == 2
    [angles] = [ax for ax in rl_axes if "angle" in ax.get_ylabel()]
    lines = {line.get_label(): line for line in angles.lines}
    assert list(lines["sft-10+ppo"].get_xdata()) == [0, 1, 2]
    assert np.allclose(lines["sft-10+ppo"].get_ydata(), np.degrees([0.1, 0.11, 0.12]))
    heat = spectral_heatmaps(SPECTRAL, EVALS, "s0", "k=0.2")
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == ["10", "20"]  # SFT checkpoints only


def test_the_header_names_model_config_seed_and_versions(tmp_path):
    config = {"model": "builtin:det", "tasks": ["det"], "seed": 3, "sft": {"steps": 60, "lr": 1e-4},
              "rl": {"algo": "ppo"}, "eval": {"episodes": 100}}
    (tmp_path / "study.json").write_text(json.dumps({"fingerprint": "abc123", "config": config,
                                                     "versions": {"rlheal": "0.1.0", "torch": "2.13.0",
                                                                  "cpu": "a CPU", "torch_threads": 2}}))
    facts = dict(run_facts(tmp_path, []))
    assert facts["model"] == "builtin:det" and facts["seed"] == "3" and "abc123" in facts["config"]
    assert "SFT 60 steps at lr 0.0001" in facts["config"] and facts["versions"] == "rlheal 0.1.0, torch 2.13.0"
    assert facts["machine"] == "a CPU, 2 torch threads"


def test_without_a_study_record_the_header_comes_from_the_rows(tmp_path):
    (tmp_path / "study.json").write_text("[1, 2]")  # not a study record: ignored
    rows = [{"stage": "external", "created": "2026", "versions": {"torch": "2.13.0", "cpu": "c", "torch_threads": 1}}]
    facts = dict(run_facts(tmp_path, rows))
    assert "rlheal eval" in facts["model"] and facts["versions"] == "torch 2.13.0" and "seed" not in facts


def test_the_summary_gives_the_peak_the_end_rl_and_edits():
    rows = run_rows("a", rl={(10, "ppo"): [1, 1, 1, 1, 0, 0, 0, 0]}, edits={"edit-vectors-top0.2": [1] * 8})
    lines = findings_lines(compute([rows]))
    # OOD: 4 of 8 solved at step 10 (the selection half's peak), 1 of 8 at step 40; ID 1 of 8 -> 8 of 8
    assert lines[0] == "gp24: OOD success 38 % at its peak (SFT step 10), 12 % at step 40; ID 12 % → 100 %"
    assert lines[1] == "gp24: RL on ID, OOD success before → after: ppo from step 10 38 % → 50 %"
    assert lines[2] == "gp24: OOD success of step 40 with the peak's weights restored: vectors-top0.2 100 %"
