"""A self-contained HTML page (figures inlined as base64 PNG) from findings, figures and tables."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em} figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em} ul.findings li{margin:.35em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left} .empty{color:#999;font-style:italic}
table.facts td{text-align:left}
"""


@dataclass(frozen=True)
class Section:
    title: str
    sentences: Sequence[str] = ()
    figure_png: bytes | None = None
    caption: str = ""
    table: tuple[Sequence[str], Sequence[Sequence[object]]] | None = None
    empty_note: str = ""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render(title: str, meta: str, sections: Sequence[Section], facts: Sequence[tuple[str, str]] = ()) -> str:
    """The page: title, `facts` (name, value) as a small table, the `meta` line, then the sections."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if facts:
        parts.append("<table class='facts'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                                        for k, v in facts) + "</table>")
    parts.append(f"<p class='meta'>{html.escape(meta)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.sentences:
            parts.append("<ul class='findings'>" + "".join(f"<li>{html.escape(x)}</li>" for x in s.sentences) + "</ul>")
        if s.figure_png is not None:
            data = base64.b64encode(s.figure_png).decode()
            parts.append(f"<figure><img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(s.caption)}</figcaption></figure>")
        if s.table is not None and s.table[1]:
            parts.append(_table(*s.table))
        if not s.sentences and s.figure_png is None and not (s.table and s.table[1]):
            parts.append(f"<p class='empty'>{html.escape(s.empty_note or 'No rows for this section yet.')}</p>")
    parts.append("</body></html>")
    return "".join(parts)
