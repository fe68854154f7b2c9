"""Every task through the public API: round trips in both profiles, any text, revision episodes, names."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.tasks import PROFILES, SPLITS, TASK_NAMES, Verdict, get_task
from rlheal.tasks.base import CORRECT, VERDICT_KINDS

ALL = [(name, split, profile) for name in TASK_NAMES for split in SPLITS for profile in PROFILES]


@pytest.mark.parametrize(("name", "split", "profile"), ALL)
def test_the_reference_answer_is_correct_in_every_profile(name, split, profile):
    task = get_task(name, profile)
    for problem in task.problems(split, seed=3, n=60):
        answer = task.answer(problem)
        assert "\n" not in answer and answer.isascii()
        assert task.prompt(problem).isascii()
        verdict = task.verify(problem, answer)
        assert (verdict.correct, verdict.kind, verdict.reward, verdict.format_ok) == (True, CORRECT, 5.0, True)


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300) | st.text(alphabet='{}[]"\\:formula answer0123456789+-*/()=., \n', max_size=300))
def test_any_text_gets_a_verdict(name, profile, text):
    task = get_task(name, profile)
    verdict = task.verify(task.problem("ood", 0, 1), text)
    assert isinstance(verdict, Verdict) and verdict.kind in VERDICT_KINDS
    assert verdict.feedback and "\n" not in verdict.feedback


def test_revision_turns_until_solved():
    task = get_task("gp24")
    problem = task.problem("id", 0, 0)
    episode = task.new_episode(problem)
    assert episode.max_attempts == 5 and [t.role for t in episode.turns] == ["user"]
    first = task.step(episode, "formula: 1+1")
    assert not first.correct and not episode.done
    assert [t.role for t in episode.turns] == ["user", "assistant", "user"]
    assert episode.turns[-1].content == f"You failed this trial because {first.feedback}. Try again."
    assert task.step(episode, task.answer(problem)).correct
    assert episode.done and episode.solved and episode.n_attempts == 2
    assert episode.turns[-1].role == "assistant"  # no feedback after the solving attempt
    with pytest.raises(ValueError, match="already finished"):
        task.step(episode, "formula: 1")


@pytest.mark.parametrize(("name", "attempts"), [("gp24", 5), ("det", 5), ("rank", 1)])
def test_episodes_end_after_max_attempts(name, attempts):
    task = get_task(name)
    episode = task.new_episode(task.problem("ood", 0, 0))
    for _ in range(attempts):
        task.step(episode, "no idea")
    assert episode.done and not episode.solved and episode.n_attempts == attempts
    assert len(episode.turns) == 2 * attempts  # prompt, then answer + feedback, last answer without feedback
    assert all(v.reward == -3 and not v.format_ok for v in episode.verdicts)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: gp24, rank, det"):
        get_task("gp25")
    with pytest.raises(ValueError, match="valid: compact, paper"):
        get_task("rank", profile="chat")
    with pytest.raises(ValueError, match="valid: id, ood"):
        get_task("det").problem("test", 0, 0)
    with pytest.raises(ValueError, match="valid: none"):
        get_task("rank", target=3)
    with pytest.raises(ValueError, match="valid: target"):
        get_task("gp24", traget=3)


def test_importing_tasks_does_not_import_torch():
    code = "import sys, rlheal.tasks, rlheal.cli.tasks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
