"""`--set KEY=VALUE` options: values are read as YAML scalars (1e-6, true, [1, 2]) within the bounds of
`rlheal.yaml_input`, never evaluated as code."""

from __future__ import annotations

import typer


def parse_overrides(pairs: list[str], example: str) -> dict[str, object]:
    """{KEY: value} from KEY=VALUE strings; a malformed pair is a BadParameter naming `example`."""
    from rlheal.yaml_input import YamlInputError, load_yaml_text

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set takes KEY=VALUE (e.g. --set {example}), got {pair[:100]!r}")
        try:
            overrides[key.strip()] = load_yaml_text(value, f"the value of --set {key.strip()[:100]}")
        except YamlInputError as exc:
            raise typer.BadParameter(f"--set {key.strip()[:100]}: the value is not a YAML scalar or list ({exc})") from None
    return overrides
