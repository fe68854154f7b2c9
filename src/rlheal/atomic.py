"""Atomic writes: a file or folder appears whole under its final name, or not at all.

Temporaries are siblings of their final name: `.NAME.XXXXXXXX.tmp` files and `.NAME.XXXXXXXX.partial`
folders (XXXXXXXX: tempfile's eight random characters), and `.NAME.old` while a folder is replaced. What
appears under the final name has the permissions of an ordinary new file or folder (the process umask), so
a team sharing a run folder can read it. `clean_stale` removes what a killed writer left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STALE = re.compile(r"^\..+\.[a-z0-9_]{8}\.(?:tmp|partial)$")
_OLD = re.compile(r"^\.(.+)\.old$")


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no other thread sees it change)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it is renamed to `final`.

    If the block raises, the temporary folder is removed and `final` is untouched. With `overwrite`, an
    existing `final` is replaced; otherwise an existing `final` is an error.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; remove it or choose another output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale(root: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes left under `root` (links are not followed) and return them:
    `.tmp` files and `.partial` folders, and `.NAME.old` folders, which are put back as NAME when a kill
    came between the two renames of a replacement. Call it only while holding the folder's lock
    (`rlheal.lock`): a live writer's temporaries look the same. Under a launcher only rank 0 cleans (it holds
    the lock); the other ranks return [] at once."""
    from rlheal.lock import launched_rank

    removed: list[Path] = []
    if launched_rank() != 0:
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            old = _OLD.match(name)
            if old and path.is_dir() and not path.is_symlink() and not (Path(folder) / old.group(1)).exists():
                os.replace(path, Path(folder) / old.group(1))
            elif _STALE.match(name) or (old and path.is_dir() and not path.is_symlink()):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        dirs[:] = [d for d in dirs if (Path(folder) / d).is_dir()]
    return removed
