"""TODO docstring"""

from __future__ import annotations

import html
from dataclasses import dataclass

PALETTE = [(189, 224, 254), (255, 214, 165), (202, 255, 191), (255, 198, 255), (253, 255, 182), (155, 246, 255)]


TRAINED = (134, 239, 172)  # tokens the assistant is trained on


SPECIAL = (203, 213, 225)


@dataclass
class Token:
    id: int
    data: bytes  # the token's bytes (a token may hold part of a multi-byte character)
    special: bool = False
    trained: bool | None = None  # for conversations: is the assistant trained on it


def _shown(token: Token) -> str:
    """A token's text; bytes that are not a whole character show as \\xNN."""
    return token.data.decode("utf-8", errors="backslashreplace")


def render_html(tokens: list[Token], title: str, stats: str, show_ids: bool) -> str:
    spans = []
    for index, token in enumerate(tokens):
        r, g, b = TRAINED if token.trained else SPECIAL if token.special else PALETTE[index % len(PALETTE)]
        label = f"id {token.id}" + (" · trained" if token.trained else "") + (" · special" if token.special else "")
        text = html.escape(_shown(token)).replace("\n", "⏎<br>")
        spans.append(f'<span title="{label}" style="background:rgb({r},{g},{b})">{text}</span>')
    ids = f"<p class=ids>{', '.join(str(t.id) for t in tokens)}</p>" if show_ids else ""
    # %-formatting fills both RGB triples straight from the colour tuples
    legend = ('<p class=legend><span style="background:rgb(%d,%d,%d)">trained on</span> '  # noqa: UP031
              '<span style="background:rgb(%d,%d,%d)">special token</span></p>' % (*TRAINED, *SPECIAL))
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}.tokens{font-family:monospace;white-space:pre-wrap;"
            "line-height:1.8}.tokens span{border-radius:3px;margin-right:1px}.ids{font-family:monospace;"
            "color:#555;word-break:break-all}</style>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(stats)}</p>"
            f"{legend if any(t.trained is not None for t in tokens) else ''}"
            f"<div class=tokens>{''.join(spans)}</div>{ids}")
