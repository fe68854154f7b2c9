"""The study config (validation, shared fields, shipped files) and the choice of RL starts."""

from pathlib import Path

import pytest
import yaml

from rlheal.config import ConfigError, StudyConfig, default_yaml, load_config, parse_config
from rlheal.evaluate import EVALS
from rlheal.store import Store
from rlheal.study import StudyError, choose_rl_starts, claim_run_folder, decline_start

CONFIGS = Path(__file__).parent.parent / "configs"
FINGERPRINT = "e9e3b785860f"  # the default study's; pinned on purpose


def test_every_problem_is_listed_with_its_field():
    with pytest.raises(ConfigError) as err:
        parse_config({"tasks": ["gp25"], "sft": {"steps": 0, "lrr": 1}, "eval": {"episodes": 0},
                      "spectral": {"modules": ["qq"], "k": [0]}, "rl": {"algo": "dqn"}})
    msg = str(err.value)
    for field in ("tasks", "sft.steps", "sft.lrr", "eval.episodes", "spectral.modules", "spectral.k", "rl.algo"):
        assert f"- {field}:" in msg
    assert "gp24, rank, det" in msg


def test_shared_fields_reach_the_sections():
    cfg = parse_config({"model": "/some/model", "tasks": ["det"], "profile": "paper", "seed": 3})
    assert (cfg.sft.model, cfg.sft.tasks, cfg.sft.profile, cfg.sft.seed) == ("/some/model", ["det"], "paper", 3)
    assert (cfg.rl.ppo.profile, cfg.rl.ppo.seed) == ("paper", 3)


def test_a_section_can_override_a_shared_field():
    cfg = parse_config({"seed": 3, "sft": {"seed": 7}})
    assert cfg.seed == 3 and cfg.sft.seed == 7


def test_seed_override_reaches_every_section_of_the_default_and_of_a_file(tmp_path):
    for cfg in (load_config(None, seed=2), load_config(CONFIGS / "default.yaml", seed=2)):
        assert (cfg.seed, cfg.sft.seed, cfg.rl.ppo.seed, cfg.rl.grpo.seed) == (2, 2, 2, 2)
        assert cfg.fingerprint() != StudyConfig().fingerprint()
    own = tmp_path / "own.yaml"
    own.write_text("seed: 1\nsft: {seed: 7}\n")
    cfg = load_config(own, seed=4)
    assert (cfg.seed, cfg.sft.seed, cfg.rl.ppo.seed) == (4, 7, 4)  # a section's own seed still wins


def test_the_sft_quick_config_is_an_sft_section_of_the_default_study():
    from rlheal.train.sft import load_sft_config

    quick = load_sft_config(CONFIGS / "sft-quick.yaml")
    assert (quick.model, quick.tasks, quick.lr) == ("builtin:det", ["det"], StudyConfig().sft.lr)


def test_dotted_overrides_replace_fields_of_a_file_and_of_the_default(tmp_path):
    cfg = load_config(CONFIGS / "default.yaml", overrides={"sft.n_train": 500, "rl.ppo.lr": 1e-6, "tasks": ["det"]})
    assert (cfg.sft.n_train, cfg.rl.ppo.lr, cfg.tasks, cfg.sft.tasks) == (500, 1e-6, ["det"], ["det"])
    assert cfg.sft.steps == 2000  # fields not overridden keep the file's values
    assert load_config(None, overrides={"eval.episodes": 7}).eval.episodes == 7
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("{}")
    assert load_config(defaults, seed=5, overrides={"sft.steps": 3}).sft.steps == 3


def test_a_bad_override_is_reported_like_a_bad_field(tmp_path):
    with pytest.raises(ConfigError, match="- sft.n_trian:"):
        load_config(None, overrides={"sft.n_trian": 5})
    with pytest.raises(ConfigError, match="- sft.steps:"):
        load_config(None, overrides={"sft.steps": -1})
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        load_config(CONFIGS / "default.yaml", overrides={"seed.x": 1})
    with pytest.raises(ConfigError, match="- seed:"):  # the default has no such field in its data: validation says
        load_config(None, overrides={"seed.x": 1})


def test_study_cli_rejects_a_malformed_set_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from rlheal.cli import app

    out = tmp_path / "run"
    bad_pair = CliRunner().invoke(app, ["study", "--set", "sft.n_train", "--out", str(out)])
    assert bad_pair.exit_code == 2 and "KEY=VALUE" in bad_pair.output
    bad_field = CliRunner().invoke(app, ["study", "--set", "sft.nope=1", "--out", str(out)])
    assert bad_field.exit_code == 2 and "sft.nope" in bad_field.output
    assert not out.exists()


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        parse_config([1, 2])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_default_is_the_builtin_default():
    assert load_config(CONFIGS / "default.yaml") == StudyConfig() == load_config(None)
    assert (CONFIGS / "default.yaml").read_text() == default_yaml()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    assert isinstance(load_config(CONFIGS / name), StudyConfig)
    assert yaml.safe_load((CONFIGS / name).read_text())


def test_fingerprint_changes_with_results_relevant_fields():
    a, b = parse_config({}), parse_config({"sft": {"lr": 1e-3}})
    assert a.fingerprint() == parse_config({}).fingerprint() != b.fingerprint()


def test_rl_task_options_are_checked_against_every_task_and_change_the_fingerprint_only_when_set():
    hard = load_config(overrides={"tasks": ["gp24"], "rl.ppo.task_options": {"id_max_rank": 9}})
    assert hard.rl.settings("gp24")["task_options"] == {"id_max_rank": 9}
    assert hard.fingerprint() != StudyConfig().fingerprint()
    assert "task_options" not in StudyConfig().model_dump()["rl"]["ppo"]  # older run folders keep their fingerprint
    with pytest.raises(ConfigError, match="task_options do not fit task 'rank'.*unknown option"):
        load_config(overrides={"tasks": ["gp24", "rank"], "rl.ppo.task_options": {"id_max_rank": 9}})
    with pytest.raises(ConfigError, match="id_max_rank must be a card rank"):
        load_config(overrides={"tasks": ["gp24"], "rl.ppo.task_options": {"id_max_rank": 20}})


def test_run_folder_of_another_config_is_refused_once_it_holds_results(tmp_path):
    claim_run_folder(tmp_path, parse_config({}))
    claim_run_folder(tmp_path, parse_config({}))  # same config: fine
    (tmp_path / "sft" / "step-000000").mkdir(parents=True)
    with pytest.raises(StudyError, match="different config"):
        claim_run_folder(tmp_path, parse_config({"sft": {"lr": 1e-3}}))


def test_a_run_folder_that_holds_nothing_yet_goes_to_the_corrected_config(tmp_path):
    """A first stage that failed (e.g. a wrong model or bf16 on a CPU) leaves the folder usable."""
    import json

    claim_run_folder(tmp_path, parse_config({}))
    Store(tmp_path).close()  # an empty store, as a run that failed before any row leaves it
    corrected = parse_config({"sft": {"lr": 1e-3}})
    claim_run_folder(tmp_path, corrected)
    assert json.loads((tmp_path / "study.json").read_text())["fingerprint"] == corrected.fingerprint()
    with Store(tmp_path) as store:
        store.put(EVALS, [{"checkpoint": str(tmp_path / "x"), "task": "det", "split": "id", "eval_set": "e"}])
    with pytest.raises(StudyError, match="different config"):
        claim_run_folder(tmp_path, parse_config({}))


def _outcomes(rate: float) -> list[int]:
    """200 problems whose selection half (even positions) and test half each solve `rate` of their 100."""
    return [int(i // 2 < round(100 * rate)) for i in range(200)]


def _rows(ood, idr):
    rows = []
    for step, (o, i) in enumerate(zip(ood, idr, strict=True)):
        rows.append({"step": step * 10, "split": "ood", "success_rate": o, "solved_at": _outcomes(o)})
        rows.append({"step": step * 10, "split": "id", "success_rate": i, "solved_at": _outcomes(i)})
    return rows


def test_auto_starts_include_peak_and_last_and_spread_over_id():
    #          step: 0     10    20    30    40    50    60
    ood = [0.00, 0.20, 0.35, 0.30, 0.20, 0.10, 0.05]
    idr = [0.00, 0.10, 0.25, 0.40, 0.55, 0.70, 0.80]
    starts = choose_rl_starts(_rows(ood, idr), 4)
    assert 20 in starts and 60 in starts  # OOD peak and last
    assert 0 not in starts  # the base is never a start
    assert len(starts) == 4 and starts == sorted(starts)
    # ID levels 0.10, 0.333, 0.567, 0.80: the nearest free steps are 10 and 40 (30 for 0.333 is also close)
    assert 10 in starts


def test_auto_starts_with_few_checkpoints():
    assert choose_rl_starts(_rows([0.0, 0.3], [0.0, 0.5]), 4) == [10]
    assert choose_rl_starts([], 4) == []


def test_decline_start_is_the_first_checkpoint_five_points_below_the_peak():
    # docs/RESULTS.md §21/§22, det at SFT lr 1e-4, seed 0 (steps 0, 10, ..., 90 stand for 0, 2, ..., 2000)
    ood = [0.14, 0.14, 0.14, 0.14, 0.13, 0.14, 0.07, 0.04, 0.01, 0.02]
    rows = _rows(ood, [1.0] * len(ood))
    assert decline_start(rows, 5.0) == 60  # 14 -> 7 %: the first 5-point drop
    assert decline_start(rows, 10.0) == 70  # 14 -> 4 %
    assert decline_start(rows, 7.0) == 60  # exactly 7 points counts despite 0.14 - 0.07 != 0.07 in floats
    assert decline_start(rows, 14.0) is None  # never 14 points below


def test_decline_start_measures_from_the_peak_not_the_base():
    ood = [0.10, 0.30, 0.27, 0.20, 0.26]  # the peak is step 10; step 0 is below it but comes first
    assert decline_start(_rows(ood, [0.5] * 5), 5.0) == 30
    assert decline_start([], 5.0) is None


def test_decline_starts_in_a_config():
    assert parse_config({"rl": {"starts": "decline"}}).rl.decline_points == 5.0
    assert parse_config({"rl": {"starts": "decline:12.5"}}).rl.decline_points == 12.5
    assert parse_config({"rl": {"starts": "auto"}}).rl.decline_points is None
    assert parse_config({"rl": {"starts": [24, 45]}}).rl.decline_points is None
    for bad in ("decline:0", "decline:x", "decline:nan", "declin", "decline:101", ""):
        with pytest.raises(ConfigError, match="rl.starts"):
            parse_config({"rl": {"starts": bad}})


def test_the_config_schema_keeps_old_run_folders_resumable():
    # A field added to the config changes every fingerprint, and `rlheal study` then refuses to resume run
    # folders made before it (the default study's seeds in docs/RESULTS.md). Change it only on purpose.
    assert StudyConfig().fingerprint() == FINGERPRINT


def test_window_starts_take_the_peak_the_decline_its_middle_and_the_end():
    from rlheal.study import window_roles, window_starts

    #          step: 0     10    20    30    40    50    60
    ood = [0.30, 0.36, 0.40, 0.33, 0.25, 0.18, 0.10]
    rows = _rows(ood, [1.0] * len(ood))
    # before the peak (10), the peak (20), 5 points below it (30), at or below (40 + 10) / 2 = 25 % (40), the end
    assert window_starts(rows) == [10, 20, 30, 40, 60]
    assert window_roles(rows) == {"before-peak": 10, "peak": 20, "decline": 30, "mid-decline": 40, "end": 60}
    at_base = _rows([0.40, 0.38, 0.30, 0.10], [1.0] * 4)
    # the peak is the base: never a start; 5 points below it: 20 (30 %); at or below the middle (25 %): the end
    assert window_starts(at_base) == [20, 30]
    assert window_roles(at_base) == {"before-peak": None, "peak": 0, "decline": 20, "mid-decline": 30, "end": 30}
    assert window_starts([]) == []


def test_study_decline_starts_pick_the_decline_and_the_end(tmp_path, caplog):
    from rlheal.study import Study

    ood = [0.14, 0.14, 0.07, 0.04]
    rows = [{**r, "task": "det"} for r in _rows(ood, [1.0, 1.0, 0.1, 0.6])]
    folders = {step: tmp_path / f"step-{step}" for step in (0, 10, 20, 30)}
    study = Study(parse_config({"tasks": ["det"], "rl": {"starts": "decline"}}), tmp_path / "run", progress=False)
    assert study.rl_starts("det", rows, folders) == [folders[20], folders[30]]
    flat = [{**r, "success_rate": 0.14, "solved_at": _outcomes(0.14)} if r["split"] == "ood" else r for r in rows]
    assert study.rl_starts("det", flat, folders) == [folders[30]]  # no decline: the end only, with a warning
    assert "fell 5 points below the peak" in caplog.text


def test_study_defaults_apply_with_and_without_a_section():
    for cfg in (parse_config({}), parse_config({"rl": {"ppo": {"epochs": 2}}}), StudyConfig()):
        assert (cfg.sft.steps, cfg.sft.schedule, cfg.sft.model, cfg.sft.lr) == (2000, "log:12", "builtin:det", 1e-4)
        assert (cfg.rl.ppo.updates, cfg.rl.ppo.kl_target, cfg.rl.starts, cfg.rl.control) == (100, 2.0, "window", True)
    assert parse_config({"rl": {"ppo": {"updates": 9}}}).rl.ppo.updates == 9
    assert parse_config({"model": "builtin:gp24"}).sft.model == "builtin:gp24"  # the study's model wins
    assert parse_config({"rl": {"algo": "grpo"}}).rl.control is False  # the control arm is PPO's
    with pytest.raises(ConfigError, match="control arm is built into PPO"):
        parse_config({"rl": {"algo": "grpo", "control": True}})


def test_auto_starts_skip_checkpoints_without_the_answer_format():
    rows = _rows([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.2])
    for r in rows:
        r["format_error_rate"] = 1.0 if r["step"] <= 10 else 0.5
    assert choose_rl_starts(rows, 3) == [20, 30]
    for r in rows:
        r["format_error_rate"] = 1.0
    assert choose_rl_starts(rows, 2) == [10, 30]  # nothing parses anywhere: fall back to every step


def test_set_values_are_yaml_scalars_never_code():
    import typer

    from rlheal.cli.overrides import parse_overrides

    assert parse_overrides(["lr=1e-6", "a.b=true", "k=[1, 2]", "s=__import__('os')"], example="lr=1") == {
        "lr": "1e-6", "a.b": True, "k": [1, 2], "s": "__import__('os')"}  # YAML 1.1 reads 1e-6 as text ...
    assert load_config(None, overrides={"sft.lr": "1e-6"}).sft.lr == 1e-6  # ... and validation makes it a float
    with pytest.raises(typer.BadParameter, match="not a YAML scalar"):
        parse_overrides(["k=[1, 2"], example="lr=1")
