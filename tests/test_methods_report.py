"""SFT methods side by side (`rlheal.report.methods`, `rlheal compare` over runs of several methods): variant
names, per-step mean losses, OOD at the end paired with plain SFT by seed and problem, and the command."""

import json

import pytest
from test_findings import row
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.evaluate import EVALS
from rlheal.report.findings import FindingsError
from rlheal.report.methods import Run, group, matched_step, mean_losses, variant, versus_matched, versus_plain
from rlheal.stats import paired_difference
from rlheal.store import Store
from rlheal.train.sft import LOSSES


def test_variant_names_the_method_and_only_its_settings_that_differ_from_the_defaults():
    assert variant({"lr": 1e-4}) == "full"
    assert variant({"method": "lora", "lora_rank": 8, "lora_alpha": 16.0, "penalty_weight": 1.0}) == "lora"
    assert variant({"method": "lora", "lora_rank": 32, "lora_alpha": 16.0}) == "lora lora_rank=32"
    assert variant({"method": "rotation_penalty", "penalty_weight": 10.0, "lora_rank": 2}) == \
        "rotation_penalty penalty_weight=10"
    assert variant({"method": "sigma_only", "method_modules": ["q", "v"]}) == "sigma_only method_modules=q,v"


# 4 problems; plain SFT ends with problems 0-1 solved, the other method with 0-2 (seed 0) and 0-3 (seed 1)
END = {("full", 0): [1, 1, 0, 0], ("full", 1): [1, 0, 0, 0], ("lora", 0): [1, 1, 1, 0], ("lora", 1): [1, 1, 1, 1]}


def _run(method, seed, folder="r"):
    evals = []
    for step, ood in ((0, [1, 1, 1, 1]), (10, END[(method, seed)])):
        evals += [row(f"{folder}{method}{seed}", "sft", step, "ood", ood),
                  row(f"{folder}{method}{seed}", "sft", step, "id", [0, 0, 1, 1])]
    losses = [{"step": s, "split": sp, "loss": loss + seed} for s, sp, loss in
              ((0, "id", 3.0), (10, "id", 1.0 if method == "full" else 2.0), (0, "ood", 4.0), (10, "ood", 2.5))]
    return Run(variant({} if method == "full" else {"method": method}), seed, evals, losses, [])


def test_losses_are_averaged_over_the_runs_per_step():
    assert mean_losses([_run("full", 0), _run("full", 1)], "id") == {0: 3.5, 10: 1.5}


def test_ood_at_the_end_is_paired_with_plain_sft_by_seed_and_problem():
    runs = [_run("lora", 1), _run("full", 0), _run("lora", 0), _run("full", 1)]
    plain, lora = group(runs, "gp24", None)
    assert (plain.name, plain.seeds, lora.name, lora.seeds) == ("full", [0, 1], "lora", [0, 1])
    diff = versus_plain(lora, plain)
    expected = paired_difference([END[("lora", 0)], END[("lora", 1)]], [END[("full", 0)], END[("full", 1)]])
    assert diff == expected and diff.value == pytest.approx(4 / 8)  # 7 of 8 solved against 3 of 8
    assert versus_plain(plain, plain) is None
    # lora ends at ID loss 2.5; plain SFT's mean losses are 3.5 (step 0) and 1.5 (step 10): on a log scale step 0
    # is nearer, where plain SFT solves all 8 OOD problems against lora's 7
    assert matched_step(lora, plain) == 0
    step, matched = versus_matched(lora, plain)
    assert step == 0 and matched == paired_difference([END[("lora", 0)], END[("lora", 1)]], [[1] * 4, [1] * 4])
    assert matched.value == pytest.approx(-1 / 8)
    # at its step 0 (loss 3.5, plain's too) lora is compared with plain SFT's step 0: both solve everything
    assert versus_matched(lora, plain, 0)[0] == 0 and versus_matched(lora, plain, 0)[1].value == 0.0
    only_seed_1 = group([_run("lora", 1), _run("full", 0)], "gp24", None)
    assert versus_plain(only_seed_1[1], only_seed_1[0]) is None  # no seed in common: nothing to pair


def test_one_seed_twice_in_a_variant_is_refused():
    with pytest.raises(FindingsError, match="same seed"):
        group([_run("full", 0), _run("full", 0, folder="other")], "gp24", None)


def test_compare_over_runs_of_several_methods_puts_them_side_by_side(tmp_path):
    folders = []
    for method, seed in END:
        run, folder = _run(method, seed), tmp_path / f"{method}-s{seed}"
        folders.append(folder)
        sft = {} if method == "full" else {"method": method}
        (folder / "study.json").parent.mkdir(parents=True)
        (folder / "study.json").write_text(json.dumps({"config": {"seed": seed, "sft": sft}}))
        with Store(folder) as store:
            store.put(EVALS, [{**dict.fromkeys(EVALS.columns), **r, "checkpoint": str(folder / r["checkpoint"]),
                               "decoding": {}, "seed": 0} for r in run.evals])
            store.put(LOSSES, [{**r, "checkpoint": str(folder / f"sft{r['step']}"), "task": "gp24", "n_tokens": 9}
                               for r in run.losses])
    out = tmp_path / "methods.md"
    result = CliRunner().invoke(app, ["compare", *map(str, folders), "--out", str(out), "--figures",
                                      str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "## gp24: SFT methods side by side" in text
    # full: ID loss at the end (1+0 + 1+1)/2 = 1.5, OOD end 3/8; lora: 2.5, 7/8, +50 points over full
    assert "| full | 0, 1 | 1.500 | 50.0 % [" in text and "| 37.5 % [" in text
    assert "| lora | 0, 1 | 2.500 |" in text and "| 87.5 % [" in text and "| +50.0 points [" in text
    assert "| -12.5 points [" in text and "] (0) |" in text  # against plain SFT at matched ID loss: its step 0
    assert "| lora | 10 | 2.500 | 87.5 % [" in text  # the trade-off table, step by step
    assert (tmp_path / "figs" / "sft-methods-gp24.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figs/sft-methods-gp24.png)" in text
