"""`rlheal spectrum` (spectral diagnostics of checkpoints against a reference) and `rlheal edit` (SVD edits)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from rlheal.cli.common import command, fail, one_line, show_bars
from rlheal.cli.text import plain

MODULES = "q,k,v,o,gate,up,down"


def _parse_sizes(text: str, allow_zero: bool = False) -> list[int | float]:
    """"0.2,768" → [0.2, 768]: items with a dot or exponent are fractions of the rank, others counts."""
    out: list[int | float] = []
    for item in (s.strip() for s in text.split(",")):
        try:
            value: int | float = float(item) if any(c in item.lower() for c in ".e") or item == "nan" else int(item)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not a number: give counts (768) or fractions (0.2)") from None
        if value == 0 and not allow_zero:
            raise typer.BadParameter("k must be ≥ 1 (a count) or in (0, 1] (a fraction of the rank)")
        out.append(value)
    return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rows as `rlheal results` exports them (angles in degrees): by the suffix, .json, .csv or .parquet."""
    import json

    from rlheal.atomic import write_text
    from rlheal.export import export_rows, in_degrees, to_csv, write_parquet

    if path.suffix not in (".json", ".csv", ".parquet"):
        raise typer.BadParameter(f"--out {path}: use a .csv, .json or .parquet file")
    if path.suffix == ".parquet":
        write_parquet(export_rows(rows), path)
    elif path.suffix == ".json":
        write_text(path, json.dumps([in_degrees(r) for r in rows], indent=1, default=str))
    else:
        write_text(path, to_csv(export_rows(rows)))


def _cache(folder: Path | None):
    """The decomposition cache in `folder`, or None (no disk cache) when none was asked for."""
    from rlheal.spectral import DecompositionCache

    return DecompositionCache(folder) if folder is not None else None


def _print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rlheal.spectral import aggregate

    table = Table(title="spectral summary per checkpoint (angles in degrees, max over matrices; drift mean)")
    for col in ("target", "reference", "k", "matrices", "mean|Δσ|/σ", "top L", "top R", "tail L", "tail R",
                "diag share", "offdiag share"):
        table.add_column(col)
    for agg in aggregate(rows, ("target", "reference", "k_label")):
        table.add_row(plain(Path(agg["target"]).name), plain(Path(agg["reference"]).name), plain(agg["k_label"]),
                      str(agg["n_matrices"]),
                      f"{agg['mean_abs_rel_sigma_drift']:.3g}",
                      *(f"{math.degrees(agg[c]):.3g}" for c in ("top_left_max", "top_right_max", "tail_left_max",
                                                                "tail_right_max")),
                      *(f"{agg[c]:.3g}" for c in ("diag_share", "offdiag_share")))
    Console().print(table)


def _alignment(pairs, toward: Path | None, modules: str) -> list[dict]:
    """`alignment` rows of every (reference, target) pair toward `toward`, or none without it."""
    from rlheal.spectral import run_alignment

    return [] if toward is None else run_alignment([(ref, target, toward) for ref, target in pairs], modules)


def _print_alignment(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="alignment: cos(W_target − W_ref, W_toward − W_ref), mean over matrices")
    for col in ("target", "reference", "toward", "matrices", "mean cosine", "mean share of the way back"):
        table.add_column(col)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["start"], r["reference"]), []).append(r)
    for (target, start, toward), found in groups.items():
        cosines = [r["cosine"] for r in found if r["cosine"] == r["cosine"]]
        shares = [r["back_fraction"] for r in found if r["back_fraction"] == r["back_fraction"]]
        table.add_row(plain(Path(target).name), plain(Path(start).name), plain(Path(toward).name), str(len(found)),
                      f"{sum(cosines) / len(cosines):.3f}" if cosines else "–",
                      f"{sum(shares) / len(shares):.3f}" if shares else "–")
    Console().print(table)


def spectrum(
    checkpoints: Annotated[list[Path], typer.Argument(help="Target checkpoints, or folders of checkpoints.")],
    ref: Annotated[str, typer.Option("--ref", help="Reference: a checkpoint path, base, ood-peak or previous.")],
    k: Annotated[str, typer.Option("--k", help="Subspace sizes: counts (768) or fractions of the rank (0.2), comma-separated.")] = "0.2",
    modules: Annotated[str, typer.Option("--modules", help="Modules: q,k,v,o,gate,up,down,embed,head.")] = MODULES,
    layers: Annotated[str, typer.Option("--layers", help="Decoder layers, e.g. 0-3,8 (default: all).")] = "",
    store: Annotated[Path | None, typer.Option("--store", help="Run folder: its store receives the rows (unless --out) and resolves base/ood-peak.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write rows to FILE.csv, FILE.json or FILE.parquet (instead of the store); angles in degrees.")] = None,
    method: Annotated[str, typer.Option("--method", help="gram64 (fast, float64), svd64 (exact), svd32 (naive).")] = "gram64",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present and the matrices have rank ≥ 1024, else CPU), cpu, cuda, cuda:1 …")] = "auto",
    cache: Annotated[Path | None, typer.Option("--cache", envvar="RLHEAL_SPECTRAL_CACHE", help="Keep reference decompositions in this folder and reuse them in later runs (default: none).")] = None,
    task: Annotated[str | None, typer.Option("--task", help="With --ref ood-peak: the task whose OOD peak to use.")] = None,
    toward: Annotated[Path | None, typer.Option("--toward", help="Also the alignment of each checkpoint's change "
                                                "from the reference with the direction from the reference to this "
                                                "checkpoint (e.g. --ref RL-START --toward OOD-PEAK): table alignment.")] = None,
) -> None:
    """Singular-value drift, principal angles and ΔW energy of each checkpoint's matrices against a reference;
    with --toward, whether each checkpoint moved from the reference toward another checkpoint."""
    from rlheal.models.checkpoint import CheckpointError, find_checkpoints
    from rlheal.spectral import SPECTRAL, SPECTRAL_SIGMA, reference_pairs, run_spectrum
    from rlheal.spectral.linalg import SpectralError
    from rlheal.spectral.weights import WeightsError, parse_layers
    from rlheal.store import Store, StoreError

    try:
        targets = find_checkpoints(list(checkpoints))
        pairs = reference_pairs(ref, targets, store, task)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun/accelerate: layers split over ranks
            from rlheal.distributed import distributed_spectrum

            rows, sigma_rows = distributed_spectrum(pairs, _parse_sizes(k), modules, parse_layers(layers),
                                                    method=method, device=device, cache=_cache(cache))
            if int(os.environ.get("RANK", "0")) != 0:
                return
        else:
            rows, sigma_rows = run_spectrum(pairs, _parse_sizes(k), modules, parse_layers(layers), method, device,
                                            _cache(cache), progress=show_bars())
        aligned = _alignment(pairs, toward, modules)
    except (CheckpointError, SpectralError, WeightsError, StoreError) as exc:
        raise fail(one_line(exc), 1) from None
    if aligned:
        _print_alignment(aligned)
        if store is not None and out is None:
            from rlheal.spectral import ALIGNMENT

            with Store(store) as db:
                db.put(ALIGNMENT, aligned)
    if out is not None:
        _write_rows(out, rows)
        typer.echo(f"wrote {len(rows)} rows to {out}")
    elif store is not None:
        with Store(store) as db, db.transaction():
            db.put(SPECTRAL, rows)
            db.put(SPECTRAL_SIGMA, sigma_rows)
        typer.echo(f"wrote {len(rows)} rows to {db.path} (tables spectral, spectral_sigma)")
    else:
        typer.echo("no --store or --out given: rows are only summarised below")
    _print_summary(rows)


def edit(
    ref: Annotated[Path, typer.Option("--ref", help="Reference checkpoint (e.g. the base model).")],
    target: Annotated[Path, typer.Option("--target", help="Checkpoint to edit.")],
    mode: Annotated[str, typer.Option("--mode", help="values, vectors, triplets or layers.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New checkpoint folder.")],
    top: Annotated[str, typer.Option("--top", help="Top singular directions: count or fraction of the rank.")] = "0",
    tail: Annotated[str, typer.Option("--tail", help="Tail singular directions: count or fraction (top=tail=0: all).")] = "0",
    modules: Annotated[str, typer.Option("--modules", help="Modules to edit.")] = MODULES,
    layers: Annotated[str, typer.Option("--layers", help="Decoder layers, e.g. 0-3 (default: all; required for layers mode).")] = "",
    method: Annotated[str, typer.Option("--method", help="gram64, svd64 or svd32.")] = "gram64",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present and the matrices have rank ≥ 1024, else CPU), cpu, cuda …")] = "auto",
    cache: Annotated[Path | None, typer.Option("--cache", envvar="RLHEAL_SPECTRAL_CACHE", help="Keep reference decompositions in this folder and reuse them in later runs (default: none).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
) -> None:
    """Write a new checkpoint: the target with singular values/vectors/triplets or whole layers from the reference."""
    from rlheal.models.checkpoint import CheckpointError
    from rlheal.spectral import edit_checkpoint
    from rlheal.spectral.linalg import SpectralError
    from rlheal.spectral.weights import WeightsError, parse_layers

    sizes = _parse_sizes(top, allow_zero=True), _parse_sizes(tail, allow_zero=True)
    if any(len(v) != 1 for v in sizes):
        raise typer.BadParameter("--top and --tail take one number each (a count or a fraction of the rank)")
    (top_v,), (tail_v,) = sizes
    try:
        path = edit_checkpoint(ref, target, out, mode, top_v, tail_v, modules if mode != "layers" else None,
                               parse_layers(layers), method, device, _cache(cache), overwrite, progress=show_bars())
    except (CheckpointError, SpectralError, WeightsError, FileExistsError) as exc:
        raise fail(one_line(exc), 1) from None
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add this room's commands to `app`."""
    app.command("spectrum")(command(spectrum))
    app.command("edit")(command(edit))
