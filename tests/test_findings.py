"""Findings over runs from hand-made rows with per-problem outcomes: the peak chosen on the selection half, the
decline on the test half, RL arms and their controls, edits, and `rlheal compare` on real stores."""

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.evaluate import EVALS
from rlheal.report.compare import layer_spectra
from rlheal.report.findings import FindingsError, compute, recovery_window, rl_arm, vectors_vs_values
from rlheal.report.seed_figures import findings_figure
from rlheal.spectral.metrics import SPECTRAL
from rlheal.stats import paired_difference
from rlheal.store import Store


def row(run, stage, step, split, solved, parent=None, label=None, eval_set="e"):
    """An eval row whose problems are solved (1) or not (0) as `solved` says, at the first attempt."""
    solved = list(solved)
    return {"checkpoint": f"{run}/{label or stage + str(step)}", "label": label or f"{stage}-{step}", "stage": stage,
            "step": step, "parent": parent, "task": "gp24", "split": split, "eval_set": eval_set,
            "n_episodes": len(solved), "n_solved": sum(solved), "success_rate": sum(solved) / len(solved),
            "ci_low": 0.0, "ci_high": 1.0, "solved_at": solved}


# 8 problems: even positions (0, 2, 4, 6) are the selection half, odd positions the test half.
OOD = {  # step -> outcomes
    0: [0, 0, 0, 0, 0, 0, 0, 0],
    10: [1, 0, 1, 0, 1, 0, 0, 0],  # the selection half's best (3 of 4); the test half has none
    20: [0, 1, 1, 1, 0, 1, 1, 1],  # the best over all problems (6 of 8), but 2 of 4 on the selection half
    40: [0, 0, 1, 0, 0, 0, 0, 0],
}
ID = {0: [0] * 8, 10: [1, 0, 0, 0, 0, 0, 0, 0], 20: [1, 1, 0, 0, 1, 0, 0, 0], 40: [1] * 8}


def run_rows(run, shift=0, rl=None, edits=None):
    """One run: the SFT curves above (OOD problems rotated by `shift` positions), RL arms and edits."""
    rows = []
    for step in OOD:
        ood = OOD[step][shift:] + OOD[step][:shift]
        rows += [row(run, "sft", step, "ood", ood), row(run, "sft", step, "id", ID[step])]
    for (start, arm), after in (rl or {}).items():
        rows.append(row(run, "rl", 6, "ood", after, parent=f"{run}/sft{start}", label=f"sft-{start}+{arm}-6"))
        rows.append(row(run, "rl", 3, "ood", [0] * 8, parent=f"{run}/sft{start}", label=f"sft-{start}+{arm}-3"))
    for label, ood in (edits or {}).items():
        rows.append(row(run, "edit", 40, "ood", ood, parent=f"{run}/sft40", label=label))
    return rows


def test_the_peak_is_chosen_on_the_selection_half_and_the_decline_measured_on_the_test_half():
    f = compute([run_rows("a")])
    (curve,) = f.sft
    assert curve.peak_step == 10 and curve.end_step == 40  # not step 20, the best over all problems
    # test half (odd positions): step 10 solves none, step 40 none: no decline measured, whatever the peak's luck
    d = curve.decline
    assert (d.value, d.runs, d.problems) == (0.0, 1, 4)
    assert d.p_value == 1.0  # no discordant problems
    assert curve.peak.rate.value == 3 / 8 and curve.end.rate.value == 1 / 8


def test_ties_on_the_selection_half_go_to_the_earliest_step():
    rows = run_rows("a") + [row("a", "sft", 15, "ood", [1, 1, 1, 1, 1, 0, 0, 0])]  # 3 of 4 too, later than 10
    assert compute([rows]).sft[0].peak_step == 10


def test_runs_on_the_same_problems_are_paired_not_pooled():
    # two identical runs carry no more information than one: the interval of the mean is the same
    one, two = compute([run_rows("a")]), compute([run_rows("a"), run_rows("b")])
    assert two.runs == 2
    rate1, rate2 = one.sft[0].ood[20].rate, two.sft[0].ood[20].rate
    assert (rate2.value, rate2.low, rate2.high) == pytest.approx((rate1.value, rate1.low, rate1.high))


def test_rl_arms_their_controls_and_the_window():
    rl = {(20, "ppo"): [1, 1, 1, 1, 0, 0, 1, 1], (20, "ppo-control"): [0, 1, 1, 0, 0, 0, 0, 0],
          (40, "ppo"): [0, 0, 1, 0, 0, 0, 0, 0]}
    f = compute([run_rows("a", rl=rl)])
    assert [(a.start_step, a.arm) for a in f.rl] == [(20, "ppo"), (20, "ppo-control"), (40, "ppo")]
    assert all(a.ood_after.step == 6 for a in f.rl)  # the arm's last RL checkpoint
    real, control, late = f.rl
    assert control.is_control and not real.is_control
    # from step 20 (6 of 8 solved) to 6 of 8: gained problems 0 and 1... by hand: before 0,1,1,1,0,1,1,1
    assert real.gain.value == pytest.approx((6 - 6) / 8)
    beyond = f.beyond_control(real)
    assert beyond.value == pytest.approx((6 - 2) / 8)  # after minus the control's after, paired
    assert beyond.p_value == pytest.approx(0.125)  # McNemar: 4 gained, 0 lost -> 2 * 0.5**4
    assert f.control_of(late) is None and f.beyond_control(late) is None
    assert recovery_window(f.rl) is None  # no arm's gain lies beyond its interval


def test_edits_are_paired_with_the_unedited_checkpoint():
    edits = {"edit-vectors-top0.2": [1, 1, 1, 0, 1, 0, 0, 0], "edit-values-top0.2": [0, 0, 1, 0, 0, 0, 0, 0]}
    f = compute([run_rows("a", edits=edits)])
    vectors = next(e for e in f.edits if e.kind == "vectors-top0.2")
    assert vectors.gain.value == pytest.approx(3 / 8)  # 4 of 8 against the end's 1 of 8
    assert vectors.recovered_fraction == pytest.approx((4 / 8 - 1 / 8) / (3 / 8 - 1 / 8))
    assert vectors_vs_values(f.edits, "gp24").value == pytest.approx(3 / 8)


def test_rows_that_cannot_be_paired_are_refused():
    other = [{**r, "eval_set": "other"} for r in run_rows("b")]
    with pytest.raises(FindingsError, match="different eval sets"):
        compute([run_rows("a"), other])
    old = [{**r, "solved_at": None} for r in run_rows("a")]
    with pytest.raises(FindingsError, match="no per-problem outcomes"):
        compute([old])


def test_arm_names_come_from_labels():
    assert rl_arm("sft-45+ppo-400") == "ppo" and rl_arm("sft-45+ppo-control-400") == "ppo-control"
    assert rl_arm("sft-2+grpo-10") == "grpo"


def test_the_decline_over_runs_is_the_two_way_bootstrap_of_the_paired_differences():
    runs = [run_rows("a"), run_rows("b", shift=1), run_rows("c", shift=2)]
    f = compute(runs)
    curve = f.sft[0]
    peak, end = curve.peak, curve.end
    by_hand = paired_difference([r[1::2] for r in (peak.rows[i]["solved_at"] for i in range(3))],
                                [r[1::2] for r in (end.rows[i]["solved_at"] for i in range(3))])
    assert (curve.decline.value, curve.decline.low, curve.decline.high) == (by_hand.value, by_hand.low, by_hand.high)


def spectral_row(run, step, layer, module, drift, angle_deg):
    return {"target": f"{run}/sft{step}", "reference": f"{run}/sft0", "k_label": "k=0.2", "layer": layer,
            "tensor": f"model.layers.{layer}.{module}",
            "module": module, "mean_abs_rel_sigma_drift": drift, "top_left_mean": math.radians(angle_deg)}


def test_layer_spectra_average_the_last_checkpoint_against_the_base():
    spectral_a = [spectral_row("a", 40, 0, "q", 0.01, 4.0), spectral_row("a", 40, 0, "k", 0.03, 6.0),
                  spectral_row("a", 40, 1, "q", 0.02, 2.0), spectral_row("a", 20, 0, "q", 0.5, 50.0)]
    spectral_b = [spectral_row("b", 40, 0, "q", 0.02, 8.0)]
    layers = layer_spectra([(run_rows("a"), spectral_a), (run_rows("b"), spectral_b)], "k=0.2")
    assert layers[0] == pytest.approx((0.02, 6.0, 3)) and layers[1] == pytest.approx((0.02, 2.0, 1))


def _store(folder, rows):
    with Store(folder) as store:
        store.put(EVALS, [{**dict.fromkeys(EVALS.columns), **r, "decoding": {}, "seed": 0} for r in rows])
        store.put(SPECTRAL, [{**dict.fromkeys(SPECTRAL.columns), **spectral_row("x", 40, 0, "q", 0.01, 3.0),
                              "target": str(folder / "a/sft40"), "reference": str(folder / "a/sft0")}])


def test_compare_command_prints_and_writes_the_tables(tmp_path):
    rl = {(20, "ppo"): [1, 1, 1, 1, 0, 0, 1, 1], (20, "ppo-control"): [0, 1, 1, 0, 0, 0, 0, 0]}
    edits = {"edit-vectors-top0.2": [1, 1, 1, 0, 1, 0, 0, 0], "edit-values-top0.2": [0, 0, 1, 0, 0, 0, 0, 0]}
    folders = []
    for name in "ab":
        folders.append(tmp_path / name)
        rows = [{**r, "checkpoint": str(folders[-1] / r["checkpoint"]),
                 "parent": str(folders[-1] / r["parent"]) if r["parent"] else None}
                for r in run_rows("a", rl=rl, edits=edits)]
        _store(folders[-1], rows)
    out = tmp_path / "targets.md"
    result = CliRunner().invoke(app, ["compare", *map(str, folders), "--out", str(out), "--figures",
                                      str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text == result.output
    assert "| 10 (OOD peak) | 12.5 % [0.0, 37.5] | 37.5 % [12.5, 75.0] | 38 / 38 |" in text  # ID 1/8, OOD 3/8
    assert "Peak minus end on the test half, paired by problem: +0.0 points [+0.0, +0.0]" in text
    assert "| 20 | ppo | 2 | 75.0 % [" in text and "| +50.0 points [" in text  # beyond the control: 6/8 - 2/8
    assert "| 0 | 2 | 1.00 | 3.00 |" in text  # one q matrix per run
    assert "| vectors-top0.2 | 50.0 % [" in text and "Restoring singular vectors minus restoring singular values" in text
    assert (tmp_path / "figs" / "findings-gp24.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![gp24: the four findings over 2 run(s)](figs/findings-gp24.png)" in text
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "holds no results store" in missing.output


def _bar_heights(ax):
    return [patch.get_height() for patch in ax.patches]


def test_findings_figure_draws_the_numbers_over_runs():
    rl = {(20, "ppo"): [1, 1, 1, 1, 0, 0, 1, 1]}
    f = compute([run_rows("a", rl=rl), run_rows("b", shift=1, rl=rl)])
    fig = findings_figure(f, f.sft[0], {0: (0.02, 6.0, 3), 1: (0.01, 2.5, 3)}, "k=0.2")
    sft, rl_ax, spectra, edits, angles = fig.axes  # the spectra panel's angle axis is a twin, added last
    lines = {line.get_label(): line for line in sft.lines}
    means = [100 * np.mean(OOD[s]) for s in OOD]  # a shift moves problems, not the rate
    assert list(lines["OOD, mean of 2 run(s)"].get_ydata()) == pytest.approx(means)
    assert len([line for line in sft.lines if line.get_gid() == "each-run"]) == 2
    assert _bar_heights(rl_ax) == pytest.approx([75.0, 75.0])  # start 20: 6/8 before, 6/8 after
    assert _bar_heights(spectra) == pytest.approx([2.0, 1.0]) and _bar_heights(angles) == pytest.approx([6.0, 2.5])
    # the end, and the OOD peak: run b's rotation moves step 20's problems onto the selection half
    assert f.sft[0].peak_step == 20 and _bar_heights(edits) == pytest.approx([12.5, 75.0])
