"""`rlheal tasks show|check` through the real command tree."""

from typer.testing import CliRunner

from rlheal.cli import app
from rlheal.tasks import get_task

runner = CliRunner()


def test_show_prints_problems_with_a_solution():
    result = runner.invoke(app, ["tasks", "show", "gp24", "--split", "ood", "-n", "3", "--seed", "0"])
    assert result.exit_code == 0, result.output
    task = get_task("gp24")
    for index in range(3):
        problem = task.problem("ood", 0, index)
        assert task.prompt(problem) in result.output
        assert task.answer(problem) in result.output


def test_show_paper_profile_for_a_matrix_task():
    result = runner.invoke(app, ["tasks", "show", "det", "-n", "1", "--profile", "paper"])
    assert result.exit_code == 0, result.output
    assert '{"answer": ' in result.output


def test_check_prints_the_verdict():
    task = get_task("gp24")
    answer = task.answer(task.problem("ood", 0, 3))
    result = runner.invoke(app, ["tasks", "check", "gp24", "--split", "ood", "--index", "3", "--answer", answer])
    assert result.exit_code == 0, result.output
    assert "verdict:  correct" in result.output
    wrong = runner.invoke(app, ["tasks", "check", "gp24", "--split", "ood", "--index", "3", "--answer", "formula: 1/0"])
    assert "illegal" in wrong.output and "division by zero" in wrong.output


def test_unknown_task_is_a_usage_error_listing_the_valid_ones():
    result = runner.invoke(app, ["tasks", "show", "gp25"])
    assert result.exit_code == 2
    assert "gp24, rank, det" in result.output


def test_show_with_id_max_rank_prints_the_restricted_hands_and_rejects_a_bad_rank():
    result = runner.invoke(app, ["tasks", "show", "gp24", "-n", "4", "--id-max-rank", "9"])
    assert result.exit_code == 0, result.output
    task = get_task("gp24", id_max_rank=9)
    for index in range(4):
        assert task.prompt(task.problem("id", 0, index)) in result.output
    bad = runner.invoke(app, ["tasks", "show", "gp24", "--id-max-rank", "14"])
    assert bad.exit_code == 2 and "id_max_rank must be a card rank 1..13" in bad.output
