"""The report card's renderer: sections of headings, paragraphs, tables, code and PNG plots, written as
Markdown and as HTML; and the readers that a section uses on a run's files. `hfstack report` assembles
the card from sections: each is a function `section(report, run)` that reads what one stage left in the
run directory (a `RunLayout`) and adds nothing when that stage did not run.

Tests: python -m pytest -q tests/stages/test_report.py
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from hfstack.core.textfiles import read_jsonl


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def read_jsonl_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(str(path), "log")] if path.is_file() else []


class Report:
    """Sections of headings, paragraphs, tables and images, rendered to Markdown and to HTML."""

    def __init__(self, folder: Path):
        self.folder, self.parts = folder, []

    def heading(self, text: str):
        self.parts.append(("h", text))

    def text(self, text: str):
        self.parts.append(("p", text))

    def table(self, header: list[str], rows: list[list]):
        self.parts.append(("t", (header, [[str(c) for c in r] for r in rows])))

    def code(self, text: str, html_body: str | None = None):
        self.parts.append(("c", (text, html_body)))

    def plot(self, name: str, draw) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6.4, 3.6))
        draw(axes)
        figure.tight_layout()
        figure.savefig(self.folder / f"{name}.png", dpi=100)
        plt.close(figure)
        self.parts.append(("i", name))

    def markdown(self) -> str:
        out = []
        for kind, value in self.parts:
            if kind == "h":
                out.append(f"## {value}")
            elif kind == "p":
                out.append(value)
            elif kind == "t":
                header, rows = value
                out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(r) + " |" for r in rows]))
            elif kind == "c":
                out.append("```\n" + value[0] + "\n```")
            else:
                out.append(f"![{value}]({value}.png)")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>body{{font-family:"
               "sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}table{border-collapse:collapse}"
               "td,th{border:"
               "1px solid #ccc;padding:.2rem .5rem}pre,.tokens{background:#f6f6f6;padding:.5rem;white-space:pre-wrap}"
               f"</style><h1>{html.escape(title)}</h1>"]
        for kind, value in self.parts:
            if kind == "h":
                out.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "t":
                header, rows = value
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            elif kind == "c":
                out.append(value[1] or f"<pre>{html.escape(value[0])}</pre>")
            else:
                out.append(f'<img src="{value}.png" alt="{value}">')
        return "\n".join(out)
