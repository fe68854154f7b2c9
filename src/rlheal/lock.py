"""One writer per run folder: an advisory lock (`RUN/.rlheal.lock`) that names its holder.

`run_lock(RUN)` takes an exclusive `flock` on the lock file or raises RunLockedError naming the holder (pid,
host, start time), which it writes into the file while it holds the lock. The operating system releases the
lock when the holder ends, however it ends (a SIGKILL included), so a stale lock cannot outlive its process.
One process may nest `run_lock` on the same folder. Readers (`rlheal results`, `rlheal report`) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".rlheal.lock"
_held: dict[Path, int] = {}  # lock file -> how many nested holds this process has


class RunLockedError(RuntimeError):
    """The run folder is held by another rlheal process; the message names it and says what to do."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        who = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


def launched_rank() -> int:
    """This process's global rank under a launcher (`torchrun`, `accelerate launch`: the RANK variable), else 0."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the lock of run folder `folder` (created if missing) for the block; yields the folder. Under a
    launcher the main process (rank 0) holds it for all ranks, which take none: they work in the same folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if launched_rank() != 0:
        yield folder
        return
    path = folder.resolve() / LOCK_FILE
    if path in _held:
        _held[path] += 1
        try:
            yield folder
        finally:
            _held[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{folder} is in use by another rlheal process ({_holder(fd)}): wait for it to finish or stop "
                "it (its lock goes when it ends), or give another --out; two processes writing one run folder "
                "would duplicate or mix their work") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _held[path] = 1
        try:
            yield folder
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
