"""YAML that people hand to rlheal (config files, `--set` values), read within bounds.

A study config is a few hundred values. Text larger than `MAX_BYTES`, nested deeper than `MAX_DEPTH`, or
whose data would count more than `MAX_NODES` values with every alias expanded (an alias bomb: a few hundred
bytes that stand for billions of strings) is refused before anything validates, copies or prints it. The
count stops at the bound, so checking costs at most `MAX_NODES` steps whatever the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
MAX_NODES = 10_000
MAX_DEPTH = 64


class YamlInputError(ValueError):
    """YAML input that cannot be read or is beyond the bounds; the message names the source and what to do."""


def load_yaml_file(path: str | Path) -> Any:
    """The data of YAML file `path` (None for an empty file), within the bounds."""
    path = Path(path)
    if not path.is_file():
        raise YamlInputError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_BYTES:
        raise YamlInputError(f"{path} is larger than {MAX_BYTES} bytes: a config is a few kilobytes; check the file")
    return load_yaml_text(path.read_text(), str(path))


def load_yaml_text(text: str, source: str) -> Any:
    """The data of YAML `text` from `source` (named in errors), within the bounds."""
    if len(text) > MAX_BYTES:
        raise YamlInputError(f"{source} is larger than {MAX_BYTES} bytes: a config is a few kilobytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise YamlInputError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlInputError(f"{source} nests deeper than YAML can be read: write it flatter") from None
    check_bounded(data, source)
    return data


def check_bounded(data: Any, source: str) -> None:
    """YamlInputError when `data`, aliases expanded, holds more than MAX_NODES values or nests deeper than
    MAX_DEPTH (a value that contains itself does both)."""
    stack, count = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YamlInputError(f"{source} expands to more than {MAX_NODES} values (YAML aliases repeat what they "
                                 "name): a study config is far smaller; write the values out")
        if depth > MAX_DEPTH:
            raise YamlInputError(f"{source} nests deeper than {MAX_DEPTH} levels: a study config is flat; write "
                                 "it flatter")
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for pair in node.items() for item in pair)
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
