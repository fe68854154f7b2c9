import json
import shutil
from pathlib import Path

import pytest
import torch

from rlheal.evaluate import (
    EVAL_SEED_OFFSET,
    EVALS,
    EvalConfigError,
    eval_problems,
    eval_set_id,
    evaluate,
    ood_peak,
    summarize,
)
from rlheal.models.checkpoint import CheckpointError
from rlheal.rollout import Decoding, RolloutError, ScriptedBackend
from rlheal.stats import wilson_interval
from rlheal.store import Store


def digits(messages):
    return messages[0]["content"].removeprefix("Repeat the number ").removesuffix(".")


class Loader:
    """A `load_backend` that answers with `script` for every checkpoint and counts loads and chats."""

    def __init__(self, script):
        self.script = script
        self.loaded = []
        self.chats = 0

    def __call__(self, folder):
        self.loaded.append(folder.name)

        def counted(messages):
            self.chats += 1
            return self.script(messages)

        return ScriptedBackend(counted)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "run") as s:
        yield s


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    from conftest import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    return [make_tiny_checkpoint(root / f"checkpoint-{step}", seed=step, stage="sft", step=step)
            for step in (10, 20)]


def test_summarize_hand_counted(echo_task):
    # Three episodes: solved at attempt 1; solved at attempt 3 after a format error and a wrong value;
    # never solved (three format errors). So 7 attempts, 4 of them format errors.
    eps = [echo_task.new_episode(p) for p in echo_task.problems("id", 0, 3)]
    answer = [echo_task.answer(e.problem) for e in eps]
    echo_task.step(eps[0], answer[0])
    for text in ("x", "0" if answer[1] != "0" else "1", answer[1]):
        echo_task.step(eps[1], text)
    for _ in range(3):
        echo_task.step(eps[2], "?")
    got = summarize(eps)
    low, high = wilson_interval(2, 3)
    assert got == {
        "n_episodes": 3, "n_solved": 2, "success_rate": 2 / 3, "ci_low": low, "ci_high": high,
        "format_error_rate": 4 / 7, "mean_attempts": 7 / 3, "first_attempt_acc": 1 / 3, "solved_at": [1, 3, 0],
    }


def test_eval_set_is_frozen_and_apart_from_training_seeds(echo_task):
    a = eval_problems(echo_task, "ood", seed=1, episodes=5)
    assert a == eval_problems(echo_task, "ood", seed=1, episodes=5)
    assert [p.seed for p in a] == [EVAL_SEED_OFFSET + 1] * 5 and [p.index for p in a] == list(range(5))
    assert eval_set_id(seed=0, episodes=500, max_attempts=5, profile="compact", decoding=Decoding()) == \
        "heldout-seed0-n500-a5-compact"
    assert eval_set_id(seed=0, episodes=500, max_attempts=5, profile="paper",
                       decoding=Decoding(temperature=0.2)) == "heldout-seed0-n500-a5-paper-t0.2-p1-m256-s0"


@pytest.mark.parametrize(
    ("script", "success", "first", "attempts", "format_errors"),
    [(digits, 1.0, 1.0, 1.0, 0.0), (lambda m: "0", 0.0, 0.0, 3.0, 0.0), (lambda m: "no idea", 0.0, 0.0, 3.0, 1.0)],
)
def test_always_right_or_always_wrong(store, two_checkpoints, echo_task, script, success, first, attempts,
                                      format_errors):
    rows = evaluate(store, two_checkpoints[:1], [echo_task], ["id", "ood"], episodes=40, seed=2,
                    load_backend=Loader(script), show_progress=False)
    assert [(r["task"], r["split"]) for r in rows] == [("echo", "id"), ("echo", "ood")]
    n_solved = round(success * 40)
    for row in rows:
        assert (row["n_episodes"], row["n_solved"], row["success_rate"]) == (40, n_solved, success)
        assert (row["ci_low"], row["ci_high"]) == wilson_interval(n_solved, 40)
        assert (row["first_attempt_acc"], row["mean_attempts"], row["format_error_rate"]) == \
            (first, attempts, format_errors)
        assert (row["stage"], row["step"], row["label"]) == ("sft", 10, "sft-10")
        assert row["checkpoint"] == str(two_checkpoints[0].resolve())
        assert row["eval_set"] == "heldout-seed2-n40-a3-compact" and row["seed"] == 2
        assert row["decoding"] == Decoding().as_dict() and "torch" in row["versions"]
        assert row["versions"]["torch_threads"] == torch.get_num_threads() and row["versions"]["cpu"]
        assert row["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert store.rows(EVALS) == rows


def test_resume_redoes_nothing_stored(store, two_checkpoints, echo_task):
    class Killed(Exception):
        pass

    def kill_after_first(row):
        raise Killed

    first_run = Loader(digits)
    with pytest.raises(Killed):
        evaluate(store, two_checkpoints, [echo_task], ["id", "ood"], episodes=10, load_backend=first_run,
                 on_row=kill_after_first, show_progress=False)
    stored = store.rows(EVALS)
    assert len(stored) == 1 and first_run.chats == 10

    second_run, computed = Loader(digits), []
    rows = evaluate(store, two_checkpoints, [echo_task], ["id", "ood"], episodes=10, load_backend=second_run,
                    on_row=computed.append, show_progress=False)
    assert rows[0] == stored[0]  # same `created`: not recomputed
    assert [(r["label"], r["split"]) for r in computed] == [("sft-10", "ood"), ("sft-20", "id"), ("sft-20", "ood")]
    assert second_run.chats == 30 and second_run.loaded == ["checkpoint-10", "checkpoint-20"]

    third_run = Loader(digits)
    assert evaluate(store, two_checkpoints, [echo_task], ["id", "ood"], episodes=10, load_backend=third_run,
                    show_progress=False) == rows
    assert third_run.loaded == []  # everything stored: no model is even loaded


def test_a_new_eval_set_is_a_new_combination(store, two_checkpoints, echo_task):
    loader = Loader(digits)
    for episodes in (5, 6, 5):
        evaluate(store, two_checkpoints[:1], [echo_task], ["id"], episodes=episodes, load_backend=loader,
                 show_progress=False)
    assert sorted(r["eval_set"] for r in store.rows(EVALS)) == ["heldout-seed0-n5-a3-compact", "heldout-seed0-n6-a3-compact"]
    assert loader.chats == 11


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"splits": ["id", "test"]}, "splits"), ({"episodes": 0}, "episodes"), ({"profile": "fancy"}, "profile"),
     ({"max_attempts": 0}, "max_attempts"), ({"tasks": ["nope"]}, "unknown task 'nope'")],
)
def test_invalid_settings_name_the_setting(store, two_checkpoints, kwargs, match):
    args = {"splits": ["id"], "tasks": ["gp24"]} | kwargs
    with pytest.raises(EvalConfigError, match=match):
        evaluate(store, two_checkpoints, args.pop("tasks"), args.pop("splits"), load_backend=Loader(digits),
                 show_progress=False, **args)


def test_ood_peak_is_the_best_sft_ood_row_earliest_on_ties(store):
    assert ood_peak(store, "gp24") is None
    base = {"task": "gp24", "eval_set": "e", "label": "x"}
    rows = [  # the peak is chosen on the selection half (even positions of solved_at)
        {"checkpoint": "a", "stage": "sft", "step": 30, "split": "ood", "success_rate": 0.5, "solved_at": [1, 0, 1, 0]},
        {"checkpoint": "b", "stage": "sft", "step": 20, "split": "ood", "success_rate": 0.5, "solved_at": [1, 0, 2, 0]},
        {"checkpoint": "c", "stage": "sft", "step": 40, "split": "id", "success_rate": 1.0, "solved_at": [1, 1, 1, 1]},
        {"checkpoint": "d", "stage": "rl", "step": 5, "split": "ood", "success_rate": 1.0, "solved_at": [1, 1, 1, 1]},
        {"checkpoint": "e", "stage": "sft", "step": 10, "split": "ood", "success_rate": 0.75, "solved_at": [0, 1, 1, 1]},
    ]
    store.put(EVALS, [base | r for r in rows])
    # e has the highest success over all problems, but a and b are better on the selection half: b is earlier
    assert Path(ood_peak(store, "gp24")["checkpoint"]).name == "b"  # paths come back absolute
    store.put(EVALS, [base | rows[0] | {"eval_set": "other"}])
    with pytest.raises(ValueError, match="several eval sets"):
        ood_peak(store, "gp24")
    assert Path(ood_peak(store, "gp24", eval_set="other")["checkpoint"]).name == "a"


# --- the real Hugging Face path on tiny random Llamas -----------------------------------------------------

@pytest.mark.slow
def test_real_model_evaluation_is_deterministic(tmp_path, two_checkpoints):
    results = []
    for name in ("one", "two"):
        with Store(tmp_path / name) as s:
            rows = evaluate(s, two_checkpoints[:1], ["gp24"], ["id", "ood"], episodes=4, max_attempts=2,
                            decoding=Decoding(max_new_tokens=8), batch_size=3, show_progress=False)
        results.append([{k: v for k, v in r.items() if k != "created"} for r in rows])
    assert results[0] == results[1]
    assert [r["n_episodes"] for r in results[0]] == [4, 4]
    assert all(r["success_rate"] == 0.0 for r in results[0])  # a random 8-token answer never makes 24


@pytest.mark.slow
def test_sampled_evaluation_is_reproducible_by_seed(tmp_path, two_checkpoints):
    def run(name, seed):
        with Store(tmp_path / name) as s:
            return evaluate(s, two_checkpoints[:1], ["det"], ["id"], episodes=4, seed=seed, max_attempts=2,
                            decoding=Decoding(temperature=1.0, max_new_tokens=6, seed=seed), show_progress=False)

    a, b = run("a", 3), run("b", 3)
    assert [r["eval_set"] for r in a] == ["heldout-seed3-n4-a2-compact-t1-p1-m6-s3"]
    assert {k: v for k, v in a[0].items() if k != "created"} == {k: v for k, v in b[0].items() if k != "created"}


def _seed_store(store):
    row = {"checkpoint": "/elsewhere/ck", "label": "sft-1", "stage": "sft", "step": 1, "task": "gp24",
           "split": "id", "eval_set": "old", "success_rate": 0.5}
    store.put(EVALS, [row])
    return store.rows(EVALS)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated config", "no weights", "truncated weights"])
def test_corrupt_checkpoints_are_named_and_the_store_is_kept(tmp_path, store, two_checkpoints, damage):
    before = _seed_store(store)
    bad = tmp_path / "bad"
    shutil.copytree(two_checkpoints[1], bad)
    weights = bad / "model.safetensors"
    if damage == "truncated config":
        text = (bad / "config.json").read_text()
        (bad / "config.json").write_text(text[: len(text) // 2])
        match = r"bad/config.json is corrupt"
    elif damage == "no weights":
        weights.unlink()
        match = r"bad has no .safetensors weights"
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
        match = r"cannot load the model weights of .*bad"
    with pytest.raises(CheckpointError, match=match):
        evaluate(store, [two_checkpoints[0], bad], ["det"], ["id"], episodes=2, max_attempts=1,
                 decoding=Decoding(max_new_tokens=4), show_progress=False)
    after = store.rows(EVALS)
    assert after[: len(before)] == before
    # A checkpoint damaged in a way only loading can see fails after the good one was stored.
    assert len(after) == len(before) + (damage == "truncated weights")


@pytest.mark.slow
def test_a_context_too_short_for_the_episode_is_a_clear_error(tmp_path, store, make_tiny_checkpoint):
    before = _seed_store(store)
    short = make_tiny_checkpoint(tmp_path / "short", max_position_embeddings=64)
    with pytest.raises(RolloutError, match=r"short has a context of 64 tokens"):
        evaluate(store, [short], ["gp24"], ["id"], episodes=2, show_progress=False)
    assert store.rows(EVALS) == before


@pytest.mark.slow
def test_a_revision_that_outgrows_the_context_ends_the_episode(tmp_path, store, make_tiny_checkpoint, echo_task):
    # The first chat (~52 tokens) + 8 fits a context of 80; with a feedback turn (~60 more) it does not.
    cramped = make_tiny_checkpoint(tmp_path / "cramped", max_position_embeddings=80)
    [row] = evaluate(store, [cramped], [echo_task], ["id"], episodes=3, decoding=Decoding(max_new_tokens=8),
                     show_progress=False)
    assert (row["n_episodes"], row["n_solved"], row["mean_attempts"]) == (3, 0, 1.0)


@pytest.mark.slow
def test_a_tokenizer_without_chat_template_is_a_clear_error(tmp_path, store, two_checkpoints):
    before = _seed_store(store)
    plain = tmp_path / "plain"
    shutil.copytree(two_checkpoints[0], plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RolloutError, match=r"tokenizer of .*plain has no chat template"):
        evaluate(store, [plain], ["gp24"], ["ood"], episodes=2, profile="paper", show_progress=False)
    assert store.rows(EVALS) == before


# --- the command line -------------------------------------------------------------------------------------

@pytest.fixture
def trainer_output(tmp_path, two_checkpoints):
    """A folder of `checkpoint-*` sub-folders as another trainer writes them (no rlheal manifest)."""
    out = tmp_path / "trainer-out"
    for ck in two_checkpoints:
        shutil.copytree(ck, out / ck.name)
        (out / ck.name / "rlheal_manifest.json").unlink()
    return out


def cli(*args):
    from typer.testing import CliRunner

    from rlheal.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


EVAL_ARGS = ("--tasks", "det", "--splits", "id,ood", "--episodes", 3, "--max-attempts", 1, "--max-new-tokens", 4,
             "--quiet", "--profile", "compact")


@pytest.mark.slow
def test_cli_eval_and_results_on_a_folder_of_trainer_checkpoints(trainer_output):
    import csv
    import io

    first = cli("eval", trainer_output, *EVAL_ARGS)
    assert first.exit_code == 0, first.output
    assert (trainer_output / "results.sqlite").is_file()
    again = cli("eval", trainer_output, *EVAL_ARGS)
    assert again.exit_code == 0, again.output

    as_json = cli("results", trainer_output, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [(r["stage"], r["step"], r["task"], r["split"]) for r in rows] == [
        ("external", 10, "det", "id"), ("external", 10, "det", "ood"),
        ("external", 20, "det", "id"), ("external", 20, "det", "ood")]
    assert all(r["n_episodes"] == 3 and r["eval_set"] == "heldout-seed0-n3-a1-compact-greedy-m4" for r in rows)
    with Store(trainer_output) as s:
        assert sorted(rows, key=lambda r: r["created"]) == sorted(s.rows(EVALS), key=lambda r: r["created"])

    as_csv = cli("results", trainer_output, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["step"], r["split"], float(r["success_rate"])) for r in parsed] == \
        [(str(r["step"]), r["split"], r["success_rate"]) for r in rows]
    # flat: mappings spread into columns, lists (solved_at) left out, no JSON in any cell
    assert parsed[0]["decoding.max_new_tokens"] == "4" and parsed[0]["versions.torch"] == rows[0]["versions"]["torch"]
    assert "solved_at" not in parsed[0] and not any(v.startswith(("{", "[")) for r in parsed for v in r.values())

    as_table = cli("results", trainer_output)
    assert as_table.exit_code == 0
    assert "4 evaluation rows" in as_table.stdout and as_table.stdout.count("external-") == 4


def test_default_store_folder(tmp_path):
    from rlheal.cli.evaluate import default_store_folder

    checkpoint = tmp_path / "run" / "sft" / "step-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    assert default_store_folder(checkpoint) == checkpoint.parent.resolve()  # a checkpoint: its parent
    assert default_store_folder(checkpoint.parent) == checkpoint.parent.resolve()  # a folder of them: itself
    Store(tmp_path / "run").close()
    assert default_store_folder(checkpoint) == (tmp_path / "run").resolve()  # an existing store above wins


def test_cli_results_without_a_store_says_what_to_do(tmp_path):
    result = cli("results", tmp_path / "nowhere", "--format", "json")
    assert result.exit_code == 1
    assert "no results store at" in result.output and "rlheal eval" in result.output
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_cli_eval_of_a_corrupt_checkpoint_fails_cleanly(tmp_path, trainer_output):
    cli("eval", trainer_output / "checkpoint-10", *EVAL_ARGS, "--store", tmp_path / "run")
    before = cli("results", tmp_path / "run", "--format", "json").stdout
    (trainer_output / "checkpoint-20" / "config.json").write_text("{ truncated")
    result = cli("eval", trainer_output, *EVAL_ARGS, "--store", tmp_path / "run")
    assert result.exit_code == 1
    assert "checkpoint-20/config.json is corrupt" in result.output and "Traceback" not in result.output
    assert cli("results", tmp_path / "run", "--format", "json").stdout == before


def test_cli_eval_rejects_invalid_settings(tmp_path, trainer_output):
    result = cli("eval", trainer_output, "--splits", "id,xx", "--store", tmp_path / "run")
    assert result.exit_code == 2 and "splits" in result.output
    result = cli("eval", trainer_output, "--temperature", "-1", "--store", tmp_path / "run")
    assert result.exit_code == 2 and "--temperature" in result.output


# --- resuming inside a combination, labels, samples, profiles --------------------------------------------

class Dies(Exception):
    pass


def test_a_killed_evaluation_resumes_at_the_next_batch_of_problems(tmp_path, two_checkpoints, echo_task):
    from rlheal.evaluate import EVAL_EPISODES

    problems = [str(p.data["number"]) for p in eval_problems(echo_task, "id", seed=0, episodes=10)]
    seen = []

    def wrong_on_odd(messages):  # a fixed script: every other problem solved, the rest revised twice
        seen.append(digits(messages))
        return digits(messages) if int(digits(messages)) % 2 else "0"

    def dies_in_the_second_batch(messages):
        if digits(messages) not in problems[:4]:
            raise Dies
        return wrong_on_odd(messages)

    with Store(tmp_path / "whole") as s:
        [whole] = evaluate(s, two_checkpoints[:1], [echo_task], ["id"], episodes=10, batch_size=4,
                           load_backend=Loader(wrong_on_odd), show_progress=False)
    with Store(tmp_path / "killed") as s:
        with pytest.raises(Dies):
            evaluate(s, two_checkpoints[:1], [echo_task], ["id"], episodes=10, batch_size=4,
                     load_backend=Loader(dies_in_the_second_batch), show_progress=False)
        assert sorted(r["position"] for r in s.rows(EVAL_EPISODES)) == [0, 1, 2, 3] and not s.rows(EVALS)
        seen.clear()
        [resumed] = evaluate(s, two_checkpoints[:1], [echo_task], ["id"], episodes=10, batch_size=4,
                             load_backend=Loader(wrong_on_odd), show_progress=False)
        assert not s.rows(EVAL_EPISODES)  # folded into the row
    assert set(seen) == set(problems[4:])  # only the problems not stored before
    assert {k: v for k, v in resumed.items() if k != "created"} == {k: v for k, v in whole.items() if k != "created"}


def test_labels_are_unique_per_checkpoint_in_a_store(tmp_path, store, two_checkpoints, echo_task):
    a, b = tmp_path / "one" / "model", tmp_path / "two" / "model"
    for folder in (a, b):  # two outside models whose folder names say nothing: both read as external-0
        shutil.copytree(two_checkpoints[0], folder)
        (folder / "rlheal_manifest.json").unlink()
    rows = evaluate(store, [a, b], [echo_task], ["id"], episodes=2, load_backend=Loader(digits), show_progress=False)
    assert [r["label"] for r in rows] == ["external-0", "two/external-0"]
    again = evaluate(store, [b, a], [echo_task], ["ood"], episodes=2, load_backend=Loader(digits), show_progress=False)
    assert [r["label"] for r in again] == ["two/external-0", "external-0"]  # a checkpoint keeps its label


def test_samples_hold_every_episode_with_its_chat_and_verdicts(tmp_path, store, two_checkpoints, echo_task):
    from rlheal.samples import SampleLog

    log = SampleLog(tmp_path / "run", "eval")
    rows = evaluate(store, two_checkpoints[:1], [echo_task], ["id", "ood"], episodes=5, batch_size=2,
                    load_backend=Loader(lambda m: "0"), samples=log, show_progress=False)
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert log.path == tmp_path / "run" / "samples" / "eval.jsonl" and len(lines) == 10
    for row in rows:
        mine = [x for x in lines if x["split"] == row["split"]]
        assert [x["solved_at"] for x in mine] == row["solved_at"]
        assert all(len(x["verdicts"]) == 3 and x["messages"][1] == {"role": "assistant", "content": "0"} for x in mine)
        assert {x["label"] for x in mine} == {"sft-10"} and mine[0]["problem"].startswith("echo/")


def test_the_profile_follows_the_checkpoints_unless_given(tmp_path, two_checkpoints):
    from rlheal.cli.evaluate import choose_profile
    from rlheal.models.builtin import RECIPES, builtin_base

    outside = tmp_path / "outside"
    shutil.copytree(two_checkpoints[0], outside)
    (outside / "rlheal_manifest.json").unlink()
    ours = two_checkpoints[0]  # an rlheal manifest
    assert choose_profile(None, [outside]) == ("paper", None)
    assert choose_profile(None, [ours]) == ("compact", None)
    assert choose_profile("paper", [ours]) == ("paper", None)
    profile, warning = choose_profile("compact", [outside])
    assert profile == "compact" and "--profile paper" in warning
    built_in = tmp_path / "built-in"  # the built-in base's files under another trainer: its own chat template
    shutil.copytree(builtin_base(RECIPES["builtin:det"], progress=False), built_in)
    (built_in / "rlheal_manifest.json").unlink()
    assert choose_profile(None, [built_in]) == ("compact", None)
