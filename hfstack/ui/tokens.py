"""The token view shared by `hfstack tokenize` and the report card: text or a conversation as tokens
(through a tokenizer folder, or GPT-4's cl100k), in the terminal or as HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass

from hfstack.core.config import ConfigError
from hfstack.core.templates import assistant_mask, training_template
from hfstack.core.tokens import cl100k, encode_ordinary, token_bytes

PALETTE = [(189, 224, 254), (255, 214, 165), (202, 255, 191), (255, 198, 255), (253, 255, 182), (155, 246, 255)]


TRAINED = (134, 239, 172)  # tokens the assistant is trained on


SPECIAL = (203, 213, 225)


@dataclass
class Token:
    id: int
    data: bytes  # the token's bytes (a token may hold part of a multi-byte character)
    special: bool = False
    trained: bool | None = None  # for conversations: is the assistant trained on it


def shown(token: Token) -> str:
    """A token's text; bytes that are not a whole character show as \\xNN."""
    return token.data.decode("utf-8", errors="backslashreplace")


def render_html(tokens: list[Token], title: str, stats: str, show_ids: bool) -> str:
    spans = []
    for index, token in enumerate(tokens):
        r, g, b = TRAINED if token.trained else SPECIAL if token.special else PALETTE[index % len(PALETTE)]
        label = f"id {token.id}" + (" · trained" if token.trained else "") + (" · special" if token.special else "")
        text = html.escape(shown(token)).replace("\n", "⏎<br>")
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


def tokens_of_text(tokenizer_path: str, text: str) -> list[Token]:
    """Plain text as tokens: never special ones, whatever it contains."""
    if tokenizer_path == "cl100k":
        encoding = cl100k()
        return [Token(i, encoding.decode_single_token_bytes(i)) for i in encoding.encode_ordinary(text)]

    tokenizer = _load(tokenizer_path)
    return [_token(tokenizer, i) for i in encode_ordinary(tokenizer, [text])[0]]


def tokens_of_chat(tokenizer_path: str, messages: list[dict], where: str) -> list[Token]:
    """A conversation through the chat template, the assistant's trained-on tokens marked."""
    if tokenizer_path == "cl100k":
        raise ConfigError("tokenize: cl100k has no chat template here; use --tokenizer DIR with --chat")
    tokenizer = _load(tokenizer_path)
    try:  # a saved checkpoint's template has no generation markers: find the training one, else render prefixes
        ids, mask = assistant_mask(tokenizer, messages, training_template(tokenizer))
    except ConfigError as e:
        raise ConfigError(f"--chat '{where}': {e}") from None
    except Exception as e:  # the template raises on unknown roles and tools: say so in one line
        raise ConfigError(f"--chat '{where}': cannot render it ({e})") from None
    tokens = [_token(tokenizer, i) for i in ids]
    for token, trained in zip(tokens, mask):
        token.trained = bool(trained)
    return tokens


def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _token(tokenizer, token_id: int) -> Token:
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in tokenizer.all_special_ids:
        return Token(token_id, piece.encode("utf-8"), special=True)
    return Token(token_id, token_bytes(piece))


def summary(tokens: list[Token], text_bytes: int) -> str:
    line = f"{len(tokens)} tokens, {text_bytes} bytes, {text_bytes / max(1, len(tokens)):.2f} bytes/token"
    if any(t.trained is not None for t in tokens):
        line += f", {sum(bool(t.trained) for t in tokens)} trained on (assistant)"
    return line


def render_terminal(tokens: list[Token], color: bool) -> str:
    parts = []
    for index, token in enumerate(tokens):
        text = shown(token)
        if not color:
            parts.append(f"[{text}]" if token.trained else f"|{text}")  # [trained] |other
            continue
        r, g, b = TRAINED if token.trained else SPECIAL if token.special else PALETTE[index % len(PALETTE)]
        # a newline inside the coloured span would colour the rest of the line: show it as ⏎ then break
        visible = text.replace("\n", "⏎\n")
        parts.append(f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{visible}\x1b[0m")
    return "".join(parts)
