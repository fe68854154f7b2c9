"""Config input is bounded and checked before any run folder is touched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.config import ConfigError, load_config

QUICK = Path(__file__).parent.parent / "configs" / "quick.yaml"


def alias_bomb(levels: int) -> str:
    """Each level is a list of nine aliases of the level below: 9**levels strings from a few hundred bytes."""
    anchors = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "rl:\n  ppo:\n    task_options:\n      id_max_rank: [" + ", ".join(anchors) + "]\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_before_validation_with_a_short_message(tmp_path, levels):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels))
    assert len(bomb.read_bytes()) < 1500
    with pytest.raises(ConfigError, match="expands to more than") as err:
        load_config(bomb)
    assert len(str(err.value)) < 500


def test_deep_nesting_and_huge_files_are_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("sft: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_config(deep)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(huge)


def test_an_alias_bomb_in_a_set_value_is_refused():
    import typer

    from rlheal.cli.overrides import parse_overrides

    value = alias_bomb(9).split("id_max_rank: ", 1)[1]
    with pytest.raises(typer.BadParameter, match="expands to more than"):
        parse_overrides([f"rl.ppo.task_options.id_max_rank={value}"], example="lr=1")


def test_config_error_lines_do_not_echo_long_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides={"rl.ppo.task_options": {"id_max_rank": ["x" * 40] * 200}})
    assert max(len(line) for line in str(err.value).splitlines()) < 400


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_an_empty_config_file_is_refused_not_run_as_the_default(tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match="holds no settings"):
        load_config(empty)
    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}\n")
    assert load_config(explicit) == load_config(None)


@pytest.mark.parametrize("settings,match", [
    (["rl.starts=[3]"], r"rl.starts names SFT steps \[3\] that the SFT schedule does not save"),
    (["model=/nowhere/qwen"], "model: checkpoint folder /nowhere/qwen does not exist"),
    (["sft.schedule=[0, 2, 40]"], "sft.schedule"),
])
def test_what_a_config_cannot_do_is_found_before_the_run_folder_is_claimed(tmp_path, monkeypatch, settings, match):
    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["study", "--config", str(QUICK), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, [*args, *(a for s in settings for a in ("--set", s))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(match, result.output), result.output
    assert not out.exists() and not (tmp_path / "cache").exists()
