"""`rlheal eval` (evaluate checkpoints into a run's results store) and `rlheal results` (print or export its
tables)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from rlheal.cli.common import command, fail, show_bars
from rlheal.cli.options import EVAL_EPISODES, Episodes, LogSamples, Profile, ReportTo, Seed
from rlheal.cli.text import plain

STORE_HELP = ("Run folder whose results.sqlite receives the rows; default: the nearest folder at or above the "
              "first path that already holds one, else the first path (a folder of checkpoints) or its parent.")
TABLE_COLUMNS = ("label", "checkpoint", "stage", "step", "task", "split", "success_rate", "ci_low", "ci_high",
                 "n_episodes", "format_error_rate", "mean_attempts", "first_attempt_acc", "eval_set")
_STAGE_ORDER = ("base", "sft", "rl", "edit", "external")
# what the printed table shows of the wider tables (exports hold every column)
PRINTED_COLUMNS = {
    "rl_updates": ("run_id", "update", "algo", "task", "mean_reward", "success_rate", "format_rate", "kl",
                   "clip_frac", "explained_variance", "no_signal"),
    "spectral": ("target", "reference", "tensor", "k_label", "mean_abs_rel_sigma_drift", "top_left_mean_deg",
                 "top_right_mean_deg", "tail_left_mean_deg", "diag_share", "offdiag_share"),
    "spectral_sigma": ("target", "reference", "tensor", "layer", "module", "method"),
}


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


class TableName(StrEnum):
    evals = "evals"
    losses = "losses"
    rl_updates = "rl_updates"
    spectral = "spectral"
    spectral_sigma = "spectral_sigma"
    alignment = "alignment"


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


def is_outside_model(folder: Path) -> bool:
    """Whether `folder` holds a model rlheal did not make: no rlheal manifest and not the built-in chat template."""
    from rlheal.models.checkpoint import MANIFEST
    from rlheal.models.tokenizer import CHAT_TEMPLATE

    if (folder / MANIFEST).exists():
        return False
    template = folder / "chat_template.jinja"
    if template.is_file():
        return template.read_text(errors="replace").strip() != CHAT_TEMPLATE.strip()
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return True
    return not isinstance(config, dict) or config.get("chat_template") != CHAT_TEMPLATE


def choose_profile(profile: str | None, folders: list[Path]) -> tuple[str, str | None]:
    """(profile, a warning or None): without --profile, `paper` when every checkpoint is an outside model,
    else `compact`; `compact` chosen for outside chat models draws a warning."""
    outside = [f for f in folders if is_outside_model(f)]
    chosen = profile or ("paper" if outside and len(outside) == len(folders) else "compact")
    if chosen == "compact" and outside:
        return chosen, (f"{outside[0].name}{' and others' if len(outside) > 1 else ''}: the compact profile is "
                        "the terse format of rlheal's built-in models; chat models answer in the paper's format "
                        "(--profile paper, docs/REAL_MODELS.md)")
    return chosen, None


def eval_command(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint folders, or folders of checkpoints "
                                                      "(e.g. a trainer's output with checkpoint-*/ sub-folders).")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated task names (rlheal tasks list).")] = "det",
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated splits.")] = "id,ood",
    episodes: Episodes = EVAL_EPISODES,
    store: Annotated[Path | None, typer.Option("--store", help=STORE_HELP)] = None,
    seed: Seed = 0,
    profile: Profile = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Chats per generate call; also the "
                                            "problems stored at a time.")] = 16,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Attempts per episode (1: the first "
                                              "answer is scored; the paper's revision protocol uses 5).")] = 1,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling "
                                         "threshold (when temperature > 0).")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens per attempt.")] = 256,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch CPU threads (default: torch's); "
                                                "on a busy machine 1 is often fastest.")] = None,
    log_samples: LogSamples = False,
    report_to: ReportTo = "none",
    backend: Annotated[str, typer.Option("--backend", help="engine (the episode engine: KV cache kept across "
                                         "attempts, continuous batching), hf (Hugging Face generate per round), "
                                         "or openai (a server speaking /v1/chat/completions: --base-url, "
                                         "--model).")] = "engine",
    base_url: Annotated[str | None, typer.Option("--base-url", help="--backend openai: the server's API root, "
                                                 "e.g. http://localhost:8000/v1.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="--backend openai: the model name the server "
                                              "serves.")] = None,
) -> None:
    """Evaluate checkpoints on ID/OOD splits; what is already stored is skipped, down to single problems.

    Under a launcher (`torchrun`/`accelerate launch`, WORLD_SIZE > 1) the episodes are split across the
    processes and rank 0 writes the store. With `--backend openai` a running server plays the episodes of the
    one checkpoint folder it serves (the folder names the rows; its weights are not loaded here); `--batch-size`
    is then the number of requests in flight."""
    import os

    from rlheal.distributed import distributed_evaluate
    from rlheal.evaluate import evaluate
    from rlheal.models.checkpoint import find_checkpoints
    from rlheal.progress import note
    from rlheal.rollout import Decoding
    from rlheal.samples import SampleLog
    from rlheal.store import Store
    from rlheal.tracking import Trackers, parse_report_to

    if threads:
        import torch

        torch.set_num_threads(threads)
    trackers = parse_report_to(report_to)
    decoding = Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    folders = find_checkpoints(list(checkpoints))
    load_backend = backend_loader(backend, base_url, model, batch_size, folders)
    profile, warning = choose_profile(profile, folders)
    if warning:
        note(f"warning: {warning}", style="yellow")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    with Store(store or default_store_folder(checkpoints[0])) as results:
        hub = Trackers(trackers, results.root)
        extra = {} if distributed else {"samples": SampleLog(results.root, "eval") if log_samples else None,
                                        "on_row": hub.log_eval_row}
        try:
            rows = (distributed_evaluate if distributed else evaluate)(
                results, folders, _split_list(tasks), _split_list(splits), episodes=episodes, seed=seed,
                profile=profile, decoding=decoding, batch_size=batch_size, max_attempts=max_attempts,
                load_backend=load_backend, show_progress=show_bars(), **extra)
        finally:
            hub.close()
        note(f"results store: {results.path} (profile {profile})")
        _print_evals(rows, results.root)


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
    run: Annotated[Path, typer.Argument(help="Run folder holding results.sqlite (or the .sqlite file).")],
    table: Annotated[TableName, typer.Option("--table", help="Which table.")] = TableName.evals,
    output: Annotated[Format, typer.Option("--format", help="table (printed), json, csv (one value per cell; list "
                                           "columns such as solved_at only in json and parquet) or parquet.")] = Format.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of standard output "
                                             "(needed for parquet).")] = None,
) -> None:
    """Print or export one table of a run's results store; angles are in degrees (columns ending in _deg)."""
    from rlheal.atomic import write_text
    from rlheal.export import export_rows, in_degrees, tables, to_csv, write_parquet
    from rlheal.store import STORE_FILENAME, Store

    path = run if run.suffix == ".sqlite" else run / STORE_FILENAME
    if not path.is_file():
        raise fail(f"no results store at {path}: evaluate into it first (`rlheal eval CHECKPOINTS --store {run}`)")
    if output is Format.parquet and out is None:
        raise fail("--format parquet writes a file: give --out FILE.parquet", 2)
    with Store(path, readonly=True) as results:
        rows = results.rows(tables()[table.value])
        if table is TableName.evals:
            rows = sorted(rows, key=_row_order)
        if output is Format.table:
            _print_evals(rows, results.root) if table is TableName.evals else _print_rows(table.value, rows, results.root)
            if table is TableName.evals and any(r["stage"] == "rl" for r in rows):
                from rlheal.train.sweep import rl_summary

                print_rl_summary(rl_summary(results))
            return
    if output is Format.parquet:
        typer.echo(f"{len(rows)} rows written to {write_parquet(export_rows(rows), out)}")
        return
    text = json.dumps([in_degrees(r) for r in rows], indent=2) + "\n" if output is Format.json else to_csv(export_rows(rows))
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text(out, text)
        typer.echo(f"{len(rows)} rows written to {out}")


def _row_order(row: dict[str, Any]) -> tuple:
    stage = _STAGE_ORDER.index(row["stage"]) if row["stage"] in _STAGE_ORDER else len(_STAGE_ORDER)
    return (stage, row["parent"] or "", row["step"], row["checkpoint"], row["task"], row["split"], row["eval_set"])


def _shown_path(path: str | None, root: Path) -> str:
    """A checkpoint as the table shows it: relative to the run folder when inside it."""
    if not path:
        return ""
    folder = Path(path)
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 250)  # pipes get whole rows


def _print_evals(rows: list[dict[str, Any]], root: Path) -> None:
    from rich.table import Table

    table = Table(*TABLE_COLUMNS, title=f"{len(rows)} evaluation rows")
    for row in rows:
        shown = {**row, "checkpoint": _shown_path(row["checkpoint"], root)}
        table.add_row(*(plain(f"{shown[c]:.3f}" if isinstance(shown[c], float) else shown[c]) for c in TABLE_COLUMNS))
    _console().print(table)


def _print_rows(name: str, rows: list[dict[str, Any]], root: Path) -> None:
    """A table's rows, one value per cell (see `rlheal.export.flat`), angles in degrees, paths relative to the run
    folder; the wide tables show the columns of PRINTED_COLUMNS."""
    from rich.table import Table

    from rlheal.export import export_rows, flat, tables

    columns, cells = flat(export_rows(rows))
    columns = [c for c in PRINTED_COLUMNS.get(name, columns) if c in columns]
    paths = tables()[name].path_columns
    table = Table(*columns, title=f"{len(rows)} rows of {name}")
    for row in cells:
        table.add_row(*(plain(_shown_path(row[c], root) if c in paths else "" if row[c] is None
                              else f"{row[c]:.4g}" if isinstance(row[c], float) else row[c]) for c in columns))
    _console().print(table)


def print_rl_summary(rows: list[dict[str, Any]]) -> None:
    """Per RL start: ID and OOD success before RL (the start) and after (its last RL checkpoint)."""
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
    _console().print(table)


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`: `eval` and `results`."""
    app.command("eval")(command(eval_command))
    app.command("results")(command(results_command))
