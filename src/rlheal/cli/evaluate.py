"""`rlheal eval` (evaluate checkpoints into a run's results store) and `rlheal results` (print its rows)."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from rlheal.cli.text import plain

STORE_HELP = ("run folder whose results.sqlite receives the rows; default: the nearest folder at or above the "
              "first path that already holds one, else the first path (a folder of checkpoints) or its parent")
TABLE_COLUMNS = ("label", "stage", "step", "task", "split", "success_rate", "ci_low", "ci_high", "n_episodes",
                 "format_error_rate", "mean_attempts", "first_attempt_acc", "eval_set")
_STAGE_ORDER = ("base", "sft", "rl", "edit", "external")


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def default_store_folder(first: Path) -> Path:
    """Where `rlheal eval` writes when --store is not given (see STORE_HELP)."""
    from rlheal.store import STORE_FILENAME

    first = first.resolve()
    for folder in (first, *first.parents):
        if (folder / STORE_FILENAME).exists():
            return folder
    return first.parent if (first / "config.json").exists() else first


def eval_command(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint folders, or folders of checkpoints "
                                                      "(e.g. a trainer's output with checkpoint-*/ sub-folders)")],
    tasks: Annotated[str, typer.Option(help="comma-separated task names")] = "gp24",
    splits: Annotated[str, typer.Option(help="comma-separated splits")] = "id,ood",
    episodes: Annotated[int, typer.Option(help="episodes per (task, split): problems 0..N-1 of the eval set")] = 500,
    store: Annotated[Path | None, typer.Option(help=STORE_HELP)] = None,
    seed: Annotated[int, typer.Option(help="eval-set seed (problems use seed 10000+S), also the sampling seed")] = 0,
    profile: Annotated[str, typer.Option(help="prompt profile: compact or paper")] = "compact",
    batch_size: Annotated[int, typer.Option(help="chats per generate call")] = 16,
    max_attempts: Annotated[int | None, typer.Option(help="attempts per episode (default: the task's)")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling threshold (when temperature > 0)")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per attempt")] = 256,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's); on a busy "
                                                "machine 1 is often fastest")] = None,
    backend: Annotated[str, typer.Option(help="engine (the episode engine: KV cache kept across attempts, "
                                         "continuous batching), hf (Hugging Face generate per round), or openai "
                                         "(a server speaking /v1/chat/completions: --base-url, --model)")] = "engine",
    base_url: Annotated[str | None, typer.Option(help="--backend openai: the server's API root, e.g. "
                                                 "http://localhost:8000/v1")] = None,
    model: Annotated[str | None, typer.Option(help="--backend openai: the model name the server serves")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Evaluate checkpoints on ID/OOD splits; combinations already in the store are skipped.

    Under a launcher (`torchrun`/`accelerate launch`, WORLD_SIZE > 1) the episodes are split across the
    processes and rank 0 writes the store. With `--backend openai` a running server plays the episodes of the
    one checkpoint folder it serves (the folder names the rows; its weights are not loaded here); `--batch-size`
    is then the number of requests in flight."""
    import os

    from rlheal.distributed import distributed_evaluate
    from rlheal.evaluate import EvalConfigError, evaluate
    from rlheal.models.checkpoint import CheckpointError, find_checkpoints
    from rlheal.rollout import Decoding, RolloutError
    from rlheal.store import Store, StoreError

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        decoding = Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        folders = find_checkpoints(list(checkpoints))
        load_backend = backend_loader(backend, base_url, model, batch_size, folders)
        run_eval = distributed_evaluate if int(os.environ.get("WORLD_SIZE", "1")) > 1 else evaluate
        with Store(store or default_store_folder(checkpoints[0])) as results:
            rows = run_eval(results, folders, _split_list(tasks), _split_list(splits), episodes=episodes,
                            seed=seed, profile=profile, decoding=decoding, batch_size=batch_size,
                            max_attempts=max_attempts, load_backend=load_backend, show_progress=not quiet)
            typer.echo(f"results store: {results.path}", err=True)
    except (CheckpointError, StoreError, RolloutError, EvalConfigError, ValueError) as exc:
        _fail(str(exc))
    _print_table(rows)


def backend_loader(backend: str, base_url: str | None, model: str | None, batch_size: int,
                   folders: list[Path]):
    """The `load_backend` of `rlheal eval --backend ...`; ValueError (one line) for options that do not fit."""
    from functools import partial

    from rlheal.engine import BACKENDS
    from rlheal.evaluate import hf_backend_loader

    if backend not in (*BACKENDS, "openai"):
        raise ValueError(f"--backend must be one of {', '.join((*BACKENDS, 'openai'))}, got {backend!r}")
    if backend != "openai":
        if base_url or model:
            raise ValueError("--base-url and --model are for --backend openai; a local backend loads each "
                             "checkpoint folder itself")
        return hf_backend_loader(batch_size, backend=backend)
    if not base_url or not model:
        raise ValueError("--backend openai needs --base-url (e.g. http://localhost:8000/v1) and --model (the name "
                         "the server serves)")
    if len(folders) != 1:
        raise ValueError(f"--backend openai plays the one model the server serves: give its one checkpoint folder "
                         f"(got {len(folders)} checkpoints)")
    return partial(_openai_backend, base_url=base_url, model=model, concurrency=batch_size)


def _openai_backend(folder: Path, *, base_url: str, model: str, concurrency: int):
    from rlheal.openai_backend import OpenAIBackend

    return OpenAIBackend(base_url, model, concurrency=concurrency)


def results_command(
    run: Annotated[Path, typer.Argument(help="run folder holding results.sqlite (or the .sqlite file)")],
    output: Annotated[Format, typer.Option("--format", help="table, json or csv")] = Format.table,
) -> None:
    """Print every evaluation row of a run's results store."""
    from rlheal.evaluate import EVALS
    from rlheal.store import STORE_FILENAME, Store, StoreError
    from rlheal.train.sweep import rl_summary

    path = run if run.suffix == ".sqlite" else run / STORE_FILENAME
    if not path.is_file():
        _fail(f"no results store at {path}: evaluate into it first (`rlheal eval CHECKPOINTS --store {run}`)")
    try:
        with Store(path, readonly=True) as results:
            rows = sorted(results.rows(EVALS), key=_row_order)
            rl_rows = rl_summary(results) if any(r["stage"] == "rl" for r in rows) else []
    except StoreError as exc:
        _fail(str(exc))
    if output is Format.json:
        typer.echo(json.dumps(rows, indent=2))
    elif output is Format.csv:
        typer.echo(rows_to_csv(rows), nl=False)
    else:
        _print_table(rows)
        if rl_rows:
            _print_rl_table(rl_rows)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with one line per row; json columns are written as JSON strings."""
    from rlheal.evaluate import EVALS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EVALS.columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()})
    return buffer.getvalue()


def _row_order(row: dict[str, Any]) -> tuple:
    stage = _STAGE_ORDER.index(row["stage"]) if row["stage"] in _STAGE_ORDER else len(_STAGE_ORDER)
    return (stage, row["parent"] or "", row["step"], row["checkpoint"], row["task"], row["split"], row["eval_set"])


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*TABLE_COLUMNS, title=f"{len(rows)} evaluation rows")
    for row in rows:
        table.add_row(*(plain(f"{row[c]:.3f}" if isinstance(row[c], float) else row[c]) for c in TABLE_COLUMNS))
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # pipes get whole rows


def _print_rl_table(rows: list[dict[str, Any]]) -> None:
    """Per RL start: ID and OOD success before RL (the start) and after (its last RL checkpoint)."""
    from rich.console import Console
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    table = Table("task", "arm", "start", "start step", "RL step", "ID before", "ID after", "OOD before",
                  "OOD after", "OOD gain", title="RL from each start: success (%) before → after")
    for r in rows:
        gain = (None if r["ood_after"] is None or r["ood_before"] is None else r["ood_after"] - r["ood_before"])
        table.add_row(*map(plain, (r["task"], r["arm"], r["start_label"], r["start_step"], r["rl_step"])),
                      pct(r["id_before"]), pct(r["id_after"]), pct(r["ood_before"]), pct(r["ood_after"]),
                      "-" if gain is None else f"{100 * gain:+.1f}")
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`: `eval` and `results`."""
    app.command("eval")(eval_command)
    app.command("results")(results_command)
