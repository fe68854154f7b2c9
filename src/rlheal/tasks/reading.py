"""Reading one answer field out of model text, per prompt profile, in bounded time.

- `compact`: the first line holding `KEY:`; the field is the rest of that line (`formula: 8/(3-8/3)`).
- `paper`: the first balanced `{...}` object holding KEY (code fences and surrounding prose are fine); JSON,
  or failing that a Python-style dict with single quotes. The field is the value under KEY.
A miss is a one-line reason for the verdict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_OBJECT_CHARS = 4096  # a JSON answer longer than this is not looked at
MAX_OBJECT_TRIES = 16  # '{' positions tried before giving up

_BRACES = re.compile(r'[{}"\\]')


@dataclass(frozen=True)
class Miss:
    """No answer field in the profile's format; `reason` says what was looked for."""

    reason: str


def read_field(text: str, profile: str, key: str) -> Any:
    """The value of `key` in `text` as written in `profile` (a string for compact), or a Miss."""
    if profile == "compact":
        return _read_line(text, key)
    return _read_object(text, key)


def _read_line(text: str, key: str) -> str | Miss:
    match = re.search(rf"{key}\s*:", text, flags=re.IGNORECASE)
    if match is None:
        return Miss(f"no {key} found after '{key}:'" if text.strip() else "the answer is empty")
    end = text.find("\n", match.end())
    return text[match.end() : end if end >= 0 else len(text)].strip()


def _balanced_object(text: str, start: int) -> str | None:
    """The `{...}` starting at `start`, matching braces outside JSON strings, or None within the bound."""
    depth, in_string, escaped = 0, False, False
    stop = min(len(text), start + MAX_OBJECT_CHARS)
    for match in _BRACES.finditer(text, start, stop):
        ch = match.group()
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = text[match.end() : match.end() + 1] in ('"', "\\")
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : match.end()]
    return None


_LOOSE_FIELD = r"""["']{key}["']\s*:\s*(?:"([^"\n]*)"|'([^'\n]*)'|(-?[0-9]+))"""


def _parse_object(candidate: str, key: str) -> tuple[bool, Any]:
    """(found, value) for `key` in one candidate object: JSON first, then a loose key: 'value' match."""
    try:
        obj = json.loads(candidate)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        return (key in obj, obj.get(key))
    loose = re.search(_LOOSE_FIELD.format(key=re.escape(key)), candidate)
    if loose is None:
        return (False, None)
    string_value = loose.group(1) if loose.group(1) is not None else loose.group(2)
    return (True, string_value if string_value is not None else int(loose.group(3)))


def _read_object(text: str, key: str) -> Any:
    start = text.find("{")
    seen_object = False
    for _ in range(MAX_OBJECT_TRIES):
        if start < 0:
            break
        candidate = _balanced_object(text, start)
        if candidate is not None:
            seen_object = True
            found, value = _parse_object(candidate, key)
            if found:
                return value
        start = text.find("{", start + 1)
    if seen_object:
        return Miss(f'no "{key}" field in the JSON answer')
    return Miss(f'no JSON object with a "{key}" field found' if text.strip() else "the answer is empty")
