"""Findings over several runs (seeds): pooled counts, Wilson and Student-t intervals, RL and edit pooling,
per-layer spectra, and `rlheal compare` on real stores."""

import math

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.evaluate import EVALS
from rlheal.report.seed_figures import findings_figure
from rlheal.report.seeds import held_out_declines, layer_spectra, pool, seed_findings, seed_interval
from rlheal.spectral.metrics import SPECTRAL
from rlheal.store import Store

N = 100


def row(run, stage, step, split, solved, parent=None, label=None, eval_set="seed0-n100"):
    rate = solved / N
    lo, hi = stats.binomtest(solved, N).proportion_ci(method="wilson")  # only used by per-run findings
    return {"checkpoint": f"{run}/{stage}{step}" if stage != "edit" else f"{run}/{label}",
            "label": label or f"{stage}-{step}", "stage": stage, "step": step, "parent": parent, "task": "gp24",
            "split": split, "eval_set": eval_set, "n_episodes": N, "n_solved": solved, "success_rate": rate,
            "ci_low": lo, "ci_high": hi}


def run_rows(run, ood, ids, rl=None, edits=None):
    """SFT steps 0, 10, 20, 40 with the given OOD / ID solved counts; rl: {start_step: ood_after}."""
    rows = []
    for step, o, i in zip((0, 10, 20, 40), ood, ids, strict=True):
        rows += [row(run, "sft", step, "ood", o), row(run, "sft", step, "id", i)]
    for start, after in (rl or {}).items():
        rows.append(row(run, "rl", 6, "ood", after, parent=f"{run}/sft{start}", label=f"sft-{start}+ppo-6"))
    for label, (o, i) in (edits or {}).items():
        rows += [row(run, "edit", 40, "ood", o, parent=f"{run}/sft40", label=label),
                 row(run, "edit", 40, "id", i, parent=f"{run}/sft40", label=label)]
    return rows


@pytest.fixture
def runs():
    return [
        run_rows("a", (0, 20, 14, 4), (0, 30, 50, 70), rl={20: 15, 40: 12}, edits={"edit-vectors-top0.2": (10, 20)}),
        run_rows("b", (0, 16, 20, 6), (0, 28, 52, 71), rl={40: 9}, edits={"edit-vectors-top0.2": (8, 30)}),
        run_rows("c", (1, 18, 15, 2), (0, 33, 49, 69), rl={40: 10}, edits={"edit-vectors-top0.2": (9, 25)}),
    ]


def test_pooled_counts_and_wilson_interval():
    p = pool([row("a", "sft", 0, "ood", 3), row("b", "sft", 0, "ood", 7)])
    assert (p.solved, p.n, p.per_run) == (10, 200, (0.03, 0.07))
    assert p.rate == 0.05
    assert p.ci == pytest.approx(stats.binomtest(10, 200).proportion_ci(method="wilson"), abs=1e-12)


def test_seed_interval_is_scipys_t_interval():
    values = [0.12, 0.08, 0.17, 0.11]
    mean, low, high = seed_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and (low, high) == pytest.approx(ref)
    mean, low, high = seed_interval([0.3])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)


def test_peak_end_and_declines_over_runs(runs):
    f = seed_findings(runs, "gp24")
    assert f.runs == 3 and list(f.sft["ood"]) == [0, 10, 20, 40]
    assert f.peak_step == 10 and f.peak.solved == 20 + 16 + 18 and f.end.solved == 4 + 6 + 2
    assert f.decline_significant  # 54/300 vs 12/300
    # each run's own peak (a: step 10, b: step 20, c: step 10) minus its end
    assert f.declines == pytest.approx((0.16, 0.14, 0.16))
    # leave-one-out peak steps: a is judged at 20 (b+c: 35 > 34 at 10), b and c at 10 (a+c: 38, a+b: 36)
    assert f.held_out_declines == pytest.approx((0.14 - 0.04, 0.16 - 0.06, 0.18 - 0.02))


def test_held_out_decline_ties_missing_steps_and_one_run():
    a = {0: (0, 100), 10: (5, 100), 20: (3, 100)}
    b = {0: (0, 100), 10: (4, 100), 20: (4, 100), 30: (9, 100)}  # b alone reached step 30
    # a: b's curve ties at 10 and 20 -> the earlier step, 10; b: judged on a's steps only, peak 10, end 30
    assert held_out_declines([a, b]) == pytest.approx((0.05 - 0.03, 0.04 - 0.09))
    assert held_out_declines([a]) == ()


def test_rl_is_pooled_per_start_step_and_edits_per_label(runs):
    f = seed_findings(runs, "gp24")
    assert list(f.rl) == [20, 40]
    before, after = f.rl[40]
    assert (before.solved, before.n, after.solved, after.n) == (12, 300, 31, 300)
    before, after = f.rl[20]
    assert (before.solved, after.solved, after.per_run) == (14, 15, (0.15,))
    edit = f.edits["vectors-top0.2"]
    assert (edit["ood"].solved, edit["id"].solved, edit["id"].n) == (27, 75, 300)


def test_runs_on_different_eval_sets_are_refused(runs):
    for r in runs[1]:
        r["eval_set"] = "seed1-n100"
    with pytest.raises(ValueError, match="different eval sets"):
        seed_findings(runs, "gp24")
    with pytest.raises(ValueError, match="no run holds OOD rows"):
        seed_findings(runs, "det")


def spectral_row(run, target, layer, module, drift, angle_deg):
    return {"target": f"{run}/sft{target}", "reference": f"{run}/sft0", "tensor": f"l{layer}.{module}",
            "k_label": "k=0.2", "k": 2, "layer": layer, "module": module, "mean_abs_rel_sigma_drift": drift,
            "top_left_mean": math.radians(angle_deg)}


def test_layer_spectra_average_the_last_checkpoint_against_the_base(runs):
    spectral_a = [spectral_row("a", 40, 0, "q", 0.01, 4.0), spectral_row("a", 40, 0, "k", 0.03, 6.0),
                  spectral_row("a", 40, 1, "q", 0.02, 2.0), spectral_row("a", 20, 0, "q", 0.5, 50.0)]
    spectral_b = [spectral_row("b", 40, 0, "q", 0.02, 8.0)]
    layers = layer_spectra([(runs[0], spectral_a), (runs[1], spectral_b)], "k=0.2")
    assert layers[0] == pytest.approx((0.02, 6.0, 3)) and layers[1] == pytest.approx((0.02, 2.0, 1))


def _store(folder, rows):
    with Store(folder) as store:
        store.put(EVALS, [{**dict.fromkeys(EVALS.columns), **r, "decoding": {}, "seed": 0} for r in rows])
        last, base = rows[6]["checkpoint"], rows[0]["checkpoint"]  # SFT step 40 and step 0
        store.put(SPECTRAL, [{**dict.fromkeys(SPECTRAL.columns), **spectral_row("x", 40, 0, "q", 0.01, 3.0),
                              "target": last, "reference": base}])


def test_compare_command_prints_and_writes_the_tables(tmp_path, runs):
    folders = []
    for name, rows in zip("abc", runs, strict=True):
        folders.append(tmp_path / name)
        _store(folders[-1], rows)
    out = tmp_path / "targets.md"
    result = CliRunner().invoke(app, ["compare", *map(str, folders), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text == result.output
    assert "| 10 (pooled peak) | 30.3 [25.4, 35.8] | 18.0 [14.1, 22.7] | 20 / 16 / 18 |" in text
    assert "a decline of 14.0 points, outside the pooled 95 % intervals" in text
    assert "| 40 | 3 | 4.0 [2.3, 6.9] | 10.3 [7.4, 14.3] | +6.3 | yes, up |" in text
    assert "| 0 | 3 | 1.00 | 3.00 |" in text  # one q matrix per run
    assert "| vectors-top0.2 | 9.0 [6.3, 12.8] | 10 / 8 / 9 | 25.0 [20.4, 30.2] |" in text
    assert "(leave-one-out): +12.0 [3.4, 20.6] points" in text
    one = CliRunner().invoke(app, ["compare", str(folders[0])])  # one run: no spread over seeds, no leave-one-out
    assert one.exit_code == 0, one.output
    assert "+16.0 [–, –] points" in one.output and "(leave-one-out): – points" in one.output
    with_figures = CliRunner().invoke(app, ["compare", *map(str, folders), "--out", str(out), "--figures",
                                            str(tmp_path / "figs")])
    assert with_figures.exit_code == 0, with_figures.output
    assert (tmp_path / "figs" / "findings-gp24.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![gp24: the four findings over 3 run(s)](figs/findings-gp24.png)" in out.read_text()
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "holds no results store" in missing.output


def _bar_heights(ax):
    return [patch.get_height() for patch in ax.patches]


def test_findings_figure_draws_the_pooled_numbers(runs):
    f = seed_findings(runs, "gp24")
    fig = findings_figure(f, {0: (0.02, 6.0, 3), 1: (0.01, 2.5, 3)}, "k=0.2")
    sft, rl, spectra, edits, angles = fig.axes  # the spectra panel's angle axis is a twin, added last
    lines = {line.get_label(): line for line in sft.lines}
    # pooled over the fixture's 3 runs: OOD 1, 54, 49, 12 and ID 0, 91, 151, 210 solved of 300
    assert list(lines["OOD, pooled over 3 run(s)"].get_ydata()) == pytest.approx([100 / 300, 18.0, 4900 / 300, 4.0])
    assert list(lines["ID, pooled over 3 run(s)"].get_ydata()) == pytest.approx([0.0, 9100 / 300, 15100 / 300, 70.0])
    each_run = [list(line.get_ydata()) for line in sft.lines if line.get_gid() == "each-run"]
    assert each_run == [pytest.approx(run) for run in ([0, 20, 14, 4], [0, 16, 20, 6], [1, 18, 15, 2])]
    assert lines["pooled OOD peak (step 10)"].get_xdata()[0] == 10
    # RL: start 20 (run a: 14 -> 15) and start 40 (12 -> 31 of 300), before then after
    assert _bar_heights(rl) == pytest.approx([14.0, 400 / 100, 15.0, 3100 / 300])
    assert _bar_heights(spectra) == pytest.approx([2.0, 1.0]) and _bar_heights(angles) == pytest.approx([6.0, 2.5])
    # edits: none (the end, 12/300), the OOD peak (54/300), vectors (27/300)
    assert _bar_heights(edits) == pytest.approx([4.0, 18.0, 9.0])
