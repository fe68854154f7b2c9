"""Findings from hand-made rows: the peak, the decline and its significance, RL gains, the window, edits."""

import pytest

from rlheal.report.findings import compute, recovery_window


def row(ckpt, stage, step, split, rate, lo, hi, task="gp24", parent=None, label=None):
    return {"checkpoint": ckpt, "label": label or f"{stage}-{step}", "stage": stage, "step": step, "task": task,
            "split": split, "success_rate": rate, "ci_low": lo, "ci_high": hi, "n_episodes": 500, "parent": parent}


@pytest.fixture
def evals():
    rows = []
    # SFT: OOD 0.10 -> 0.30 (step 40, the peak) -> 0.12; ID keeps rising.
    for step, ood, idr in ((0, 0.00, 0.00), (40, 0.30, 0.20), (80, 0.30, 0.40), (160, 0.12, 0.70)):
        rows.append(row(f"sft{step}", "sft", step, "ood", ood, max(0, ood - 0.04), ood + 0.04))
        rows.append(row(f"sft{step}", "sft", step, "id", idr, max(0, idr - 0.04), idr + 0.04))
    # RL from 80: no significant change; from 160: recovery (two RL checkpoints, the last counts).
    rows.append(row("rl80-5", "rl", 5, "ood", 0.31, 0.27, 0.35, parent="sft80"))
    rows.append(row("rl160-5", "rl", 5, "ood", 0.18, 0.14, 0.22, parent="sft160"))
    rows.append(row("rl160-10", "rl", 10, "ood", 0.26, 0.22, 0.30, parent="sft160"))
    rows.append(row("rl160-10", "rl", 10, "id", 0.72, 0.68, 0.76, parent="sft160"))
    # Edits of the last SFT checkpoint.
    rows.append(row("e-vec", "edit", 160, "ood", 0.27, 0.23, 0.31, parent="sft160", label="edit-vectors"))
    rows.append(row("e-val", "edit", 160, "ood", 0.12, 0.08, 0.16, parent="sft160", label="edit-values"))
    return rows


def test_peak_is_highest_then_earliest_and_decline_is_significant(evals):
    (curve,) = compute(evals).sft
    assert curve.peak["step"] == 40  # ties at 0.30: the earliest step wins
    assert curve.end["step"] == 160
    assert curve.decline == pytest.approx(0.18)
    assert curve.decline_significant
    assert curve.id_at_peak["success_rate"] == 0.20 and curve.id_at_end["success_rate"] == 0.70


def test_overlapping_intervals_are_not_significant(evals):
    for r in evals:
        if r["checkpoint"] == "sft160" and r["split"] == "ood":
            r.update(success_rate=0.27, ci_low=0.23, ci_high=0.31)
    (curve,) = compute(evals).sft
    assert not curve.decline_significant


def test_rl_uses_the_last_rl_checkpoint_and_finds_the_window(evals):
    starts = compute(evals).rl
    assert [(s.start_step, round(s.gain, 2)) for s in starts] == [(80, 0.01), (160, 0.14)]
    assert [s.gain_significant for s in starts] == [False, True]
    assert starts[1].id_after["success_rate"] == 0.72
    assert recovery_window(starts) == (160, 160)


def test_edit_recovered_fraction(evals):
    by_label = {e.edit["label"]: e for e in compute(evals).edits}
    # lost = 0.30 - 0.12 = 0.18; vectors recover 0.15 of it, values none.
    assert by_label["edit-vectors"].recovered_fraction == pytest.approx(0.15 / 0.18)
    assert by_label["edit-values"].recovered_fraction == pytest.approx(0.0)


def test_no_rows_no_findings():
    f = compute([])
    assert f.sft == [] and f.rl == [] and f.edits == []


def test_rows_of_a_minor_eval_set_are_left_out(evals):
    extra = dict(evals[0], eval_set="other", success_rate=0.99, ci_low=0.98, ci_high=1.0, step=999)
    (curve,) = compute([*evals, extra]).sft
    assert curve.peak["step"] == 40
