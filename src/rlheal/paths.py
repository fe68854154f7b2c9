"""Paths built from strings that came from files or stores (index files, manifests, result rows).

Such a string is data: it may name a file inside a folder, never a place outside it. `resolve_inside` joins
a relative name to its folder or refuses it; `plain_name` accepts one path component only. The check is on
the text (no `..`, not absolute, no separators where one component is expected), so a folder whose files
are links (the Hugging Face cache links a snapshot's weights to its blob store) is still read as usual.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePathError(ValueError):
    """A name from a file or a store that would reach outside its folder; the message names it."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")


def resolve_inside(folder: str | Path, relative: str, what: str = "a file name") -> Path:
    """`folder / relative` when `relative` is a relative path that stays inside `folder`; else UnsafePathError.

    Refused: empty text, NUL or backslash characters, an absolute path, and any `..` component."""
    text = str(relative)
    parts = PurePosixPath(text).parts
    if (not text or "\0" in text or "\\" in text or text.startswith("/") or not parts
            or any(part == ".." for part in parts)):
        raise UnsafePathError(f"{what} {_shown(text)} is not a relative path inside {folder}: refused (it could "
                              "read or write outside the folder); fix or remove the file that names it")
    return Path(folder).joinpath(*parts)


def plain_name(text: str, what: str = "a name") -> str:
    """`text` when it is one plain path component (no separators, not `.` or `..`, no control characters);
    UnsafePathError otherwise."""
    text = str(text)
    if (not text or text in (".", "..") or any(c in text for c in "/\\") or any(ord(c) < 32 for c in text)):
        raise UnsafePathError(f"{what} {_shown(text)} is not a plain file or folder name: refused (it could "
                              "reach outside its folder); fix or remove the file that names it")
    return text
