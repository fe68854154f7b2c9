"""`rlheal tasks show|check`: look at problems of a task world and judge an answer by hand."""

from __future__ import annotations

import json

import typer

from rlheal.cli.common import command

tasks_app = typer.Typer(help="Look at the task worlds: their list, problems, answers, verdicts.", no_args_is_help=True,
                        rich_markup_mode=None)

_SPLIT = typer.Option("id", "--split", help="id or ood.")
_SEED = typer.Option(0, "--seed", help="Problem seed.")
_PROFILE = typer.Option("compact", "--profile", help="Prompt profile: compact or paper.")
_TARGET = typer.Option(None, "--target", help="gp24 only: the number to make (default 24).")
_ID_MAX_RANK = typer.Option(None, "--id-max-rank", help="gp24 only: draw ID cards from A..this rank (default 13).")


def _task(name: str, profile: str, target: int | None, id_max_rank: int | None):
    from rlheal.tasks import get_task

    options = {k: v for k, v in {"target": target, "id_max_rank": id_max_rank}.items() if v is not None}
    try:
        return get_task(name, profile=profile, **options)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _problem(task, split: str, seed: int, index: int):
    try:
        return task.problem(split, seed, index)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def list_tasks() -> None:
    """List the task worlds: name, what ID and OOD differ in, attempts per episode."""
    from rlheal.tasks import TASKS

    for name, cls in TASKS.items():
        typer.echo(f"{name:<15} {cls.default_max_attempts} attempt(s)  {cls.summary}")


def show(
    task_name: str = typer.Argument(..., metavar="TASK", help="A task name (rlheal tasks list)."),
    split: str = _SPLIT,
    n: int = typer.Option(5, "-n", min=1, help="How many problems."),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first problem."),
    seed: int = _SEED,
    profile: str = _PROFILE,
    target: int | None = _TARGET,
    id_max_rank: int | None = _ID_MAX_RANK,
) -> None:
    """Print problems (prompt as the model sees it) with one correct answer each."""
    task = _task(task_name, profile, target, id_max_rank)
    for index in range(start, start + n):
        problem = _problem(task, split, seed, index)
        typer.echo(f"--- {problem.key}")
        typer.echo(task.prompt(problem))
        typer.echo(f">>> {task.answer(problem)}")
        if hasattr(task, "solve"):
            solutions = task.solve(problem)
            typer.echo(f"({len(solutions)} distinct solution(s): {', '.join(solutions[:5])}{', ...' if len(solutions) > 5 else ''})")


def check(
    task_name: str = typer.Argument(..., metavar="TASK", help="A task name (rlheal tasks list)."),
    answer: str = typer.Option(..., "--answer", help="The answer text, in the profile's format."),
    split: str = _SPLIT,
    seed: int = _SEED,
    index: int = typer.Option(0, "--index", min=0, help="Problem index."),
    profile: str = _PROFILE,
    target: int | None = _TARGET,
    id_max_rank: int | None = _ID_MAX_RANK,
) -> None:
    """Judge one answer text for one problem and print the verdict."""
    task = _task(task_name, profile, target, id_max_rank)
    problem = _problem(task, split, seed, index)
    verdict = task.verify(problem, answer)
    typer.echo(f"problem:  {problem.key} {json.dumps(problem.data)}")
    typer.echo(f"verdict:  {verdict.kind} (correct={verdict.correct}, reward={verdict.reward:+g}, format_ok={verdict.format_ok})")
    typer.echo(f"feedback: {verdict.feedback}")


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`."""
    tasks_app.command("list")(command(list_tasks))
    tasks_app.command("show")(command(show))
    tasks_app.command("check")(command(check))
    app.add_typer(tasks_app, name="tasks")
