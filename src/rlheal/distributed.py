"""Evaluation and spectral analysis split across processes (`torchrun` / `accelerate launch`), gathered on all.

Each process plays its contiguous share of the episodes of every (checkpoint, task, split), or analyses its
share of the decoder layers; results travel between processes as JSON text in byte tensors (no pickle) and
rank 0 writes the results store. With greedy decoding the gathered rows equal those of one process
(`rlheal.evaluate.evaluate`, `rlheal.spectral.run_spectrum`): rank 0 replays the gathered completions through
`evaluate` itself, so every metric and column is computed by the same code. Sampled decoding is reproducible
for a given number of processes but differs from one process (each process samples its own batches).

A single process (no process group, WORLD_SIZE unset or 1) runs everything itself.
"""

from __future__ import annotations

import functools
import json
import os
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rlheal.evaluate import EVALS, LoadBackend, eval_problems, evaluate
from rlheal.progress import bar
from rlheal.rollout import Decoding, Generation, Messages, play
from rlheal.store import Store
from rlheal.tasks.base import SPLITS, Task

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------------------
class LaunchError(RuntimeError):
    """A launch that cannot run as asked on this machine; the message says what to launch instead."""


def free_port(low: int = 20000) -> int:
    """A free TCP port on 127.0.0.1 for a local launch's `--main_process_port`, chosen below the kernel's
    ephemeral range (which the kernel never hands out by itself): the gloo connections of other launches,
    which take ephemeral ports, cannot take it between this choice and the launcher's bind. Another process
    choosing ports the same way still can; retry a launch that fails with EADDRINUSE."""
    import random
    import socket

    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    high = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    while True:
        port = random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def ensure_process_group() -> tuple[int, int]:
    """(rank, world size); when WORLD_SIZE > 1 and no group exists yet, sets up Accelerate's process state from
    the launcher's environment: nccl on CUDA; without a GPU gloo and Accelerate's MULTI_CPU, which Accelerate
    chooses only with ACCELERATE_USE_CPU set (`accelerate launch --cpu` starts one process unless under MPI),
    so it is set here for the trainers built later. An FSDP launch without a GPU is a LaunchError: Accelerate
    turns on FSDP only for GPU-like devices, so it would train with plain DDP. Single process: (0, 1)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _leave_at_exit()
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_at_exit()
        from accelerate import PartialState

        if not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
            raise LaunchError("FSDP was asked for on a machine without a GPU, where Accelerate does not shard and "
                              "would train with plain DDP instead: launch with --multi_gpu (DDP over gloo) on CPU, "
                              "or run the FSDP config on GPUs")
        if not torch.cuda.is_available():  # read by Accelerator() and by TrainingArguments, which rebuilds the state
            os.environ["ACCELERATE_USE_CPU"] = "true"
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=collective_timeout())
        return state.process_index, state.num_processes
    return 0, 1


@functools.cache
def _leave_at_exit() -> None:
    """Destroy the process group when the interpreter exits normally, while it is still whole: left to
    interpreter finalisation, gloo's worker threads can abort the process (SIGABRT, "terminate called without
    an active exception") after its work is done and saved, and the launcher then reports a failure. Registers
    its handler once per process (cached)."""
    import atexit

    import torch.distributed as dist

    def leave() -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(leave)


def collective_timeout() -> Any:
    """How long a collective waits for the other processes before it fails (RLHEAL_COLLECTIVE_TIMEOUT seconds,
    default 1800): a process whose peer was killed stops with an error instead of hanging."""
    from datetime import timedelta

    return timedelta(seconds=float(os.environ.get("RLHEAL_COLLECTIVE_TIMEOUT", "1800")))


def shard(items: Sequence[T], rank: int, world: int, *, strided: bool = False) -> list[T]:
    """This rank's share of `items`: contiguous blocks whose sizes differ by at most one (the first
    `len % world` ranks take one more), or every `world`-th item from `rank` when `strided`.
    Concatenating the contiguous shards of ranks 0..world-1 gives `items` back in order."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    if strided:
        return list(items[rank::world])
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start:start + base + (rank < extra)])


def gather_json(value: Any) -> list[Any]:
    """Every rank's `value` (JSON-serialisable), in rank order, on every rank. Single process: [value].

    The values travel as UTF-8 JSON in uint8 tensors (padded to the longest), never pickled.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [json.loads(json.dumps(value))]
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    data = json.dumps(value).encode()
    world = dist.get_world_size()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    width = max(int(s) for s in sizes)
    mine = torch.zeros(width, dtype=torch.uint8, device=device)
    mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data else mine[:0]
    parts = [torch.empty(width, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [json.loads(bytes(p[: int(n)].cpu().tolist())) for p, n in zip(parts, sizes, strict=True)]


def gather_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of all ranks concatenated in rank order, on every rank (single process: the rows)."""
    return [row for part in gather_json(list(rows)) for row in part]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_view(value: Any) -> Any:
    """Rank 0's `value` (JSON-serialisable) on every rank, once rank 0 has computed it: what rank 0 wrote before
    is there for the others to read. Single process: `value` through JSON."""
    return gather_json(value)[0]


class MainProcessError(RuntimeError):
    """Raised on the other ranks when work that rank 0 did alone (`on_main`) failed; names rank 0's error."""


def on_main(work: Callable[..., Any], *args: Any) -> Any:
    """`work(*args)` on rank 0 alone while the other ranks wait; every rank returns its result through JSON (it must
    be JSON-serialisable; a single process gets the same round trip). When `work` raises, rank 0 raises its
    error and the others MainProcessError with its message, so no rank waits for a failed one. Call it on
    every rank."""
    rank, world = ensure_process_group()
    if world == 1:
        return json.loads(json.dumps(work(*args)))
    outcome = None
    if rank == 0:
        try:
            outcome = json.loads(json.dumps({"value": work(*args)}))
        except Exception as exc:
            gather_json({"error": f"{type(exc).__name__}: {exc}"})
            raise
    got = gather_json(outcome)[0]
    if "error" in got:
        raise MainProcessError(f"rank 0 failed, so this rank stops: {got['error']}")
    return got["value"]


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
class ReplayBackend:
    """A backend that answers each chat with the completion recorded for it (in recorded order), and says a
    chat does not fit where the recording stopped for context: rank 0 replays the gathered episodes."""

    def __init__(self, name: str = "replay") -> None:
        self.name = name
        self._answers: dict[str, deque[str]] = defaultdict(deque)
        self._no_room: set[str] = set()

    @staticmethod
    def _key(messages: Messages) -> str:
        return json.dumps([[m["role"], m["content"]] for m in messages])

    def record(self, turns: Sequence[Sequence[str]], stopped: bool) -> None:
        """Add one played episode: its turns as [role, content] pairs, and whether it stopped for context."""
        chat: Messages = []
        for role, content in turns:
            if role == "assistant":
                self._answers[self._key(chat)].append(content)
            chat.append({"role": role, "content": content})
        if stopped:
            self._no_room.add(self._key(chat))

    def generate(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> list[Generation]:
        out = []
        for messages in batch:
            queue = self._answers.get(self._key(messages))
            if not queue:
                raise RuntimeError(f"{self.name}: no recorded completion for a chat; the processes did not play "
                                   "the same episodes (same rlheal version and eval settings on every rank?)")
            out.append(Generation(queue.popleft()))
        return out

    def fits(self, batch: Sequence[Messages], *, max_new_tokens: int) -> list[bool]:
        return [self._key(m) not in self._no_room for m in batch]


def distributed_evaluate(
    store: str | Path | Store,
    checkpoints: Sequence[str | Path],
    tasks: Sequence[str | Task],
    splits: Sequence[str] = SPLITS,
    *,
    episodes: int = 500,
    seed: int = 0,
    profile: str = "compact",
    decoding: Decoding = Decoding(),  # noqa: B008 - frozen dataclass, safe as a default
    batch_size: int = 16,
    max_attempts: int | None = None,
    load_backend: LoadBackend | None = None,
    on_row: Any = None,
    samples: Any = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """`rlheal.evaluate.evaluate` with the episodes of each (checkpoint, task, split) split across processes.

    Every rank loads each checkpoint that has missing rows (rank 0 decides which, from its store) with
    `load_backend` (default: `hf_backend_loader(batch_size)`, on this rank's GPU under a launcher), plays its
    shard of the eval set, and the episodes are gathered; rank 0 turns them into rows with `evaluate` (one
    store, written by rank 0 only; `on_row` and `samples` act there). Returns the rows of all combinations on
    every rank. Call it on every rank.
    """
    from rlheal.evaluate import check_settings, eval_set_id, get_tasks, hf_backend_loader
    from rlheal.models.checkpoint import check_checkpoint

    rank, world = ensure_process_group()
    check_settings(splits, episodes, profile, max_attempts)
    task_objs = get_tasks(tasks, profile)
    folders = [check_checkpoint(Path(c)).resolve() for c in checkpoints]
    db = None
    if rank == 0:
        db = store if isinstance(store, Store) else Store(store)

    plan = []
    for folder in folders:
        for task in task_objs:
            attempts = task.default_max_attempts if max_attempts is None else max_attempts
            eval_set = eval_set_id(seed=seed, episodes=episodes, max_attempts=attempts, profile=task.profile,
                                   decoding=decoding)
            plan.extend((str(folder), task.name, split, eval_set) for split in splits)
    missing = [list(c) for c in plan if db is not None and not db.has(
        EVALS, checkpoint=c[0], task=c[1], split=c[2], eval_set=c[3])]
    todo = [tuple(c) for c in gather_json(missing)[0]]  # rank 0's view decides

    by_name = {t.name: t for t in task_objs}
    load_backend = load_backend or hf_backend_loader(batch_size)
    played_here: list[dict[str, Any]] = []
    with bar("evaluating (rank 0's share)", total=len(todo), enabled=show_progress and rank == 0) as shown:
        for folder in dict.fromkeys(c[0] for c in todo):
            backend = load_backend(Path(folder))
            for _, task_name, split, _ in (c for c in todo if c[0] == folder):
                task = by_name[task_name]
                problems = shard(eval_problems(task, split, seed=seed, episodes=episodes), rank, world)
                for pe in play(task, problems, backend, max_attempts=max_attempts, decoding=decoding):
                    played_here.append({"checkpoint": folder, "stopped": pe.stopped is not None,
                                        "turns": [[t.role, t.content] for t in pe.episode.turns]})
                shown.advance(1, description=f"{Path(folder).name} {task_name}/{split}")
            del backend  # free this model before the next one is loaded

    everything = gather_rows(played_here)
    rows: list[dict[str, Any]] = []
    if db is not None:
        replays: dict[str, ReplayBackend] = defaultdict(ReplayBackend)
        for record in everything:
            replays[record["checkpoint"]].record(record["turns"], record["stopped"])
        rows = evaluate(db, folders, task_objs, splits, episodes=episodes, seed=seed, profile=profile,
                        decoding=decoding, max_attempts=max_attempts, show_progress=show_progress,
                        on_row=on_row, samples=samples, load_backend=lambda folder: replays[str(folder)])
        if not isinstance(store, Store):
            db.close()
    return gather_json(rows)[0]


def evaluate_launched(store: Store, checkpoints: Sequence[str | Path], tasks: Sequence[str | Task],
                      splits: Sequence[str] = SPLITS, **options: Any) -> list[dict[str, Any]]:
    """`evaluate` (options as there) in a single process; `distributed_evaluate` when launched on several
    (WORLD_SIZE > 1), where `store` is written by rank 0 only. Call it on every rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return distributed_evaluate(store, checkpoints, tasks, splits, **options)
    return evaluate(store, checkpoints, tasks, splits, **options)


# --------------------------------------------------------------------------------------------------------------
# Spectral analysis
# --------------------------------------------------------------------------------------------------------------
def distributed_spectrum(
    pairs: Sequence[tuple[str | Path, str | Path]],
    ks: Sequence[int | float] = (0.2,),
    modules: str | Sequence[str] | None = None,
    layers: set[int] | None = None,
    *,
    method: str = "gram64",
    device: str | None = "auto",
    cache: Any = None,
    store: str | Path | Store | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`rlheal.spectral.run_spectrum` with the decoder layers split across processes (contiguous shares;
    embeddings/head, which belong to no layer, on rank 0). Returns (rows, sigma rows) of all ranks in
    the single-process order, on every rank; rank 0 writes them to `store` when given. Call it on every rank.
    """
    from rlheal.spectral import SPECTRAL, SPECTRAL_SIGMA, run_spectrum
    from rlheal.spectral.metrics import k_label
    from rlheal.spectral.weights import DECODER_MODULES, CheckpointWeights, parse_modules

    rank, world = ensure_process_group()
    chosen = parse_modules(modules)
    refs = [CheckpointWeights(ref) for ref, _ in pairs]
    order = {}  # (reference, target, tensor) -> position in the single-process order
    all_layers: set[int] = set()
    for index, ((_, target), ref) in enumerate(zip(pairs, refs, strict=True)):
        for position, info in enumerate(ref.select(chosen, layers)):
            order[(str(ref.folder), str(Path(target).resolve()), info.name)] = (index, position)
            if info.layer is not None:
                all_layers.add(info.layer)
    my_layers = set(shard(sorted(all_layers), rank, world))
    my_modules = chosen if rank == 0 else tuple(m for m in chosen if m in DECODER_MODULES)
    has_work = my_modules and any(ref.select(my_modules, my_layers) for ref in refs)
    rows, sigma_rows = (run_spectrum(pairs, ks, my_modules, my_layers, method, device, cache,
                                     progress=progress and rank == 0) if has_work else ([], []))

    k_position = {k_label(k): i for i, k in enumerate(ks)}

    def canonical(table_rows: list[dict[str, Any]], with_k: bool) -> list[dict[str, Any]]:
        unique = {}
        for row in table_rows:
            key = (row["reference"], row["target"], row["tensor"], row.get("k_label"))
            unique.setdefault(key, row)
        return sorted(unique.values(), key=lambda r: (
            order[(r["reference"], r["target"], r["tensor"])], k_position[r["k_label"]] if with_k else 0))

    rows, sigma_rows = canonical(gather_rows(rows), True), canonical(gather_rows(sigma_rows), False)
    if rank == 0 and store is not None:
        db = store if isinstance(store, Store) else Store(store)
        with db.transaction():
            db.put(SPECTRAL, rows)
            db.put(SPECTRAL_SIGMA, sigma_rows)
        if not isinstance(store, Store):
            db.close()
    barrier()
    return rows, sigma_rows
