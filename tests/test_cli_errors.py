"""Every `rlheal` command, given bad input, ends with one line saying what is wrong (exit status 2 when the
command line or a config is wrong, 1 when the work cannot be done) and never with a traceback; `--debug`
lets the traceback through. Commands run in-process through `rlheal.cli.main`, as the console script runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer

from rlheal.cli import app, main
from rlheal.evaluate import EVALS
from rlheal.store import Store

CONFIGS = Path(__file__).parent.parent / "configs"
QUICK = str(CONFIGS / "quick.yaml")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths the cases name: a tiny checkpoint, an SFT folder whose model has a 64-token context, a run with a
    store, a folder that does not exist."""
    from conftest import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("cli-errors")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    short = make_tiny_checkpoint(root / "short-run" / "sft" / "step-000002", step=2, max_position_embeddings=64)
    run = root / "run"
    with Store(run) as store:
        store.put(EVALS, [{"checkpoint": str(ckpt), "label": "sft-0", "stage": "sft", "step": 0, "task": "det",
                           "split": "id", "eval_set": "e", "success_rate": 0.5, "solved_at": [1, 0]}])
    return {"CKPT": str(ckpt), "SHORT_SFT": str(short.parent), "RUN": str(run), "NOWHERE": str(root / "nowhere"),
            "OUT": str(root / "out"), "YAML": str(root / "bad.yaml")}


# (arguments, exit status, words the error line must hold); PLACEHOLDERS are replaced from `places`
CASES = [
    (["--bogus"], 2, "--bogus"),
    (["nonsense"], 2, "nonsense"),
    (["study", "--config", "NOWHERE"], 2, "nowhere"),
    (["study", "--config", "YAML"], 2, "bad.yaml"),
    (["study", "--set", "sft.n_train"], 2, "KEY=VALUE"),
    (["study", "--set", "sft.lrr=1"], 2, "sft.lrr"),
    (["study", "--set", "model=NOWHERE", "--out", "OUT"], 2, "does not exist"),
    (["study", "--set", "model=Qwen/Qwen2.5-0.5B-Instruct", "--out", "OUT"], 2, "hf download"),
    (["study", "--config", QUICK, "--set", "sft.bf16=true", "--out", "OUT"], 2, "bf16"),
    (["study", "--seed", "-1"], 2, "seed"),
    (["study", "--report-to", "nowhere-tracker"], 2, "--report-to"),
    (["report", "NOWHERE"], 1, "no results store"),
    (["compare", "NOWHERE"], 1, "nowhere"),
    (["eval", "NOWHERE"], 1, "does not exist"),
    (["eval", "Qwen/Qwen2.5-0.5B-Instruct"], 1, "hf download"),
    (["eval", "CKPT", "--splits", "id,xx", "--store", "OUT"], 2, "splits"),
    (["eval", "CKPT", "--tasks", "nope", "--store", "OUT"], 2, "nope"),
    (["eval", "CKPT", "--episodes", "0"], 2, "--episodes"),
    (["eval", "CKPT", "--profile", "fancy", "--store", "OUT"], 2, "profile"),
    (["eval", "CKPT", "--report-to", "nope", "--store", "OUT"], 2, "--report-to"),
    (["eval", "CKPT", "--max-new-tokens", "5000", "--store", "OUT", "--profile", "compact"], 1, "context"),
    (["results", "NOWHERE"], 1, "no results store"),
    (["results", "RUN", "--table", "nope"], 2, "--table"),
    (["results", "RUN", "--format", "parquet"], 2, "--out"),
    (["sft", "--out", "OUT", "--config", "NOWHERE"], 2, "nowhere"),
    (["sft", "--out", "OUT", "--set", "lr=fast"], 2, "lr"),
    (["sft", "--out", "OUT", "--set", "bf16=true"], 2, "bf16"),
    (["sft", "--out", "OUT", "--set", "model=NOWHERE"], 2, "does not exist"),
    (["sft"], 2, "--out"),
    (["base", "--model", "builtin:huge"], 2, "builtin:huge"),
    (["rl", "--from", "NOWHERE"], 2, "nowhere"),
    (["rl", "--from", "SHORT_SFT", "--algo", "nope"], 2, "nope"),
    (["rl", "--from", "SHORT_SFT", "--set", "lr=-1"], 2, "lr"),
    (["rl", "--from", "SHORT_SFT", "--checkpoints", "1,x"], 2, "--checkpoints"),
    (["rl", "--from", "SHORT_SFT", "--checkpoints", "99"], 2, "99"),
    (["rl", "--from", "SHORT_SFT", "--out", "OUT", "--updates", "1"], 1, "context"),
    (["spectrum", "NOWHERE", "--ref", "CKPT"], 1, "does not exist"),
    (["spectrum", "CKPT", "--ref", "CKPT", "--k", "abc"], 2, "abc"),
    (["spectrum", "CKPT", "--ref", "base"], 1, "base"),
    (["edit", "--ref", "NOWHERE", "--target", "CKPT", "--mode", "values", "--out", "OUT"], 1, "nowhere"),
    (["edit", "--ref", "CKPT", "--target", "CKPT", "--mode", "nope", "--out", "OUT"], 1, "nope"),
    (["tasks", "list", "--bogus"], 2, "--bogus"),
    (["tasks", "show", "nope"], 2, "nope"),
    (["tasks", "show", "det", "--split", "xx"], 2, "xx"),
    (["tasks", "check", "det"], 2, "--answer"),
    (["data", "dump", "--what", "nope"], 2, "nope"),
    (["data", "dump", "--what", "pretrain"], 2, "--base"),
]


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = {(*prefix, c.name) for c in group.registered_commands}
    for sub in group.registered_groups:
        paths |= _command_paths(sub.typer_instance, (*prefix, sub.name))
    return paths


def test_every_command_has_bad_input_cases():
    covered = {tuple(args[: 2 if args[0] in ("tasks", "data") else 1]) for args, _, _ in CASES}
    assert _command_paths(app) <= covered, _command_paths(app) - covered


def run(args: list[str], places: dict[str, str], capsys) -> tuple[int, str, str]:
    args = [places.get(a, a) if "=" not in a else a.split("=")[0] + "=" + places.get(a.split("=", 1)[1], a.split("=", 1)[1])
            for a in args]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


@pytest.mark.parametrize(("args", "code", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_without_a_traceback(args, code, words, places, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path / "cache"))
    if "YAML" in args:
        Path(places["YAML"]).write_text("sft:\n  lr: fast\n")
    shutil.rmtree(places["OUT"], ignore_errors=True)
    status, out, err = run(args, places, capsys)
    assert status == code, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    assert words.lower() in errors[0].lower(), errors[0]


@pytest.mark.slow
def test_a_failed_first_stage_leaves_the_run_folder_to_the_corrected_command(places, capsys, monkeypatch, tmp_path):
    """The study fails in its first stage; the same command with the mistake corrected is not refused."""
    out = tmp_path / "run"
    monkeypatch.setattr("rlheal.study.check_before_claiming", lambda cfg: None)  # let the mistake reach the stage
    status, _, err = run(["study", "--config", QUICK, "--out", str(out), "--set", "model=NOWHERE"], places, capsys)
    assert status in (1, 2) and "does not exist" in err and (out / "study.json").exists(), err
    monkeypatch.undo()
    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path / "cache"))
    status, _, err = run(["study", "--config", QUICK, "--out", str(out), "--set", "sft.steps=2",
                          "--set", "sft.schedule=[0, 2]", "--set", "rl.ppo.updates=1"], places, capsys)
    assert "different config" not in err
    assert status == 0, err


def test_debug_shows_the_traceback(places, capsys):
    with pytest.raises(Exception, match="does not exist"):
        main(["eval", places["NOWHERE"], "--debug"])


def test_version_and_bare_command(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("rlheal ")
    with pytest.raises(SystemExit) as stopped:
        main([])
    out = capsys.readouterr().out
    assert stopped.value.code == 0 and "Commands:" in out and "study" in out
