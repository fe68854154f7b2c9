"""`--set KEY=VALUE` options: values are read as YAML scalars (1e-6, true, [1, 2]), never evaluated as code."""

from __future__ import annotations

import typer


def parse_overrides(pairs: list[str], example: str) -> dict[str, object]:
    """{KEY: value} from KEY=VALUE strings; a malformed pair is a BadParameter naming `example`."""
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set takes KEY=VALUE (e.g. --set {example}), got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"--set {pair!r}: the value is not a YAML scalar or list ({exc})") from None
    return overrides
