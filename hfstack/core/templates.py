"""Chat templates for training and for inference, and the assistant mask of any template.

A training template marks what the assistant writes with `{% generation %}` ... `{% endgeneration %}`
(transformers' `return_assistant_tokens_mask` and TRL's `assistant_only_loss` read them). Other engines
do not know that tag, so a checkpoint ships the inference template: the same template without the
markers, rendering byte-identical text (`inference_template`). When a template has no markers,
`training_template` finds one that has (hfstack's own, or TRL's patched version of a known template),
and `assistant_mask` computes the mask of any prefix-stable template by rendering prefixes.

Tests: python -m pytest -q tests/unit/test_templates.py
"""

from __future__ import annotations

import os
import re

from hfstack.core.errors import ConfigError
from hfstack.core.protocol import chat_template as protocol_template

_STRING = r"""'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*\""""
# the template's tags, each whole (so a marker inside a comment, a raw block or a string is left alone), and
# the generation markers with their whitespace control: '-' strips all whitespace on that side, '+' keeps
# what lstrip_blocks or trim_blocks (both set in transformers' Jinja environment) would strip
_TAGS = re.compile(
    r"(?P<marker>\{%(?P<left>[-+]?)\s*(?:end)?generation\s*(?P<right>[-+]?)%\})"
    r"|\{%[-+]?\s*raw\s*[-+]?%\}.*?\{%[-+]?\s*endraw\s*[-+]?%\}"
    r"|\{#.*?#\}"
    rf"|\{{\{{(?:[^}}'\"]|{_STRING}|\}}(?!\}}))*\}}\}}"
    rf"|\{{%(?:[^%'\"]|{_STRING}|%(?!\}}))*%\}}", re.S)


def _markers(template: str):
    return (match for match in _TAGS.finditer(template) if match["marker"])


def has_generation_markers(template: str | dict | None) -> bool:
    """Whether the template (or a named set's default) marks the assistant's text with `{% generation %}`."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and next(_markers(template), None) is not None


def inference_template(template: str) -> str:
    """`template` without its `{% generation %}` / `{% endgeneration %}` tags, rendering the same text.

    A `{%- ... -%}` tag goes with the whitespace around it; any other variant becomes an empty Jinja
    comment with the same whitespace control, which Jinja's lexer trims exactly as it trims a tag
    (lstrip_blocks, trim_blocks, '-' and '+'), so the text rendered never changes.
    """
    out, pos = "", 0
    for match in _markers(template):
        out += template[pos:match.start()]
        pos = match.end()
        if match["left"] == match["right"] == "-":  # the whitespace either side is data: strip it as the tag did
            out = out.rstrip()
            pos = len(template) - len(template[pos:].lstrip())
        else:
            out += f"{{#{match['left']} {match['right']}#}}"
    return out + template[pos:]


def _protocol_parts() -> tuple[str, str]:
    """hfstack's template as head + tail: a default system message sits between the two, markers in the tail."""
    plain = protocol_template()
    head = os.path.commonprefix([plain, protocol_template(default_system="x")])
    return head, plain[len(head):]


def protocol_training_template(template: str) -> str | None:
    """hfstack's template with its markers back, when `template` is hfstack's inference template (with
    any default system message); else None."""
    head, tail = _protocol_parts()
    stripped_tail = inference_template(tail)
    if len(template) >= len(head) + len(stripped_tail) and template.startswith(head) \
            and template.endswith(stripped_tail):
        return template[:len(template) - len(stripped_tail)] + tail
    return None


def training_template(tokenizer) -> str | None:
    """A template with generation markers for `tokenizer`: its own when it has them, hfstack's marked
    template for hfstack's inference template, TRL's patched template when TRL knows the template;
    else None (then `assistant_mask` computes the mask from the tokenizer's own template)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        return None
    if has_generation_markers(template):
        return template
    if (ours := protocol_training_template(template)) is not None:
        return ours
    from jinja2 import TemplateError
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except (ValueError, TemplateError):  # TRL raises ValueError for a template it cannot patch
        return None
    return patched if patched and has_generation_markers(patched) else None


def _cannot_render(error: Exception) -> ConfigError:
    first_line = str(error).splitlines()[0] if str(error) else ""
    return ConfigError(f"chat template: cannot render the conversation ({type(error).__name__}: {first_line})")


def _render(tokenizer, template: str, messages: list[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        if not messages:  # apply_chat_template refuses an empty conversation; a prefix can be one
            from transformers.utils.chat_template_utils import render_jinja_template

            rendered, _ = render_jinja_template(conversations=[[]], chat_template=template,
                                                add_generation_prompt=generation_prompt,
                                                **tokenizer.special_tokens_map)
            return rendered[0]
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except (TemplateError, TypeError, ValueError) as e:  # the template's raise_exception, bad messages
        raise _cannot_render(e) from None


def assistant_spans(tokenizer, messages: list[dict], template: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the assistant wrote, found by rendering prefixes:
    for assistant message i, the text between messages[:i] with the generation prompt and messages[:i+1]."""
    full = _render(tokenizer, template, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, template, messages[:index], True)
        through = _render(tokenizer, template, messages[:index + 1], False)
        if not through.startswith(before) or not full.startswith(through):
            raise ConfigError(f"chat template is not prefix-stable for this conversation (message {index}: "
                              "a shorter conversation does not render as a prefix of the longer one); "
                              "its assistant mask cannot be computed")
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans


def assistant_mask(tokenizer, messages: list[dict], chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, mask): the conversation's ids and 1 on every token the assistant wrote.

    A template with generation markers gives the mask through transformers; any other template
    through `assistant_spans`, characters mapped to tokens with the fast tokenizer's offsets (a token
    that overlaps the assistant's text counts as the assistant's, as in transformers). Everything the
    template renders between the generation prompt and the next message is the assistant's: with a
    ChatML-style template that is the content, `<|im_end|>` and the newline after it (as TRL's
    training templates mark it).
    """
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ConfigError("assistant mask: the conversation must be a non-empty list of message objects")
    try:
        template = tokenizer.get_chat_template(chat_template)
    except ValueError as e:
        raise ConfigError(f"assistant mask: {str(e).splitlines()[0]}") from None
    if has_generation_markers(template):
        from jinja2 import TemplateError

        try:
            out = tokenizer.apply_chat_template(messages, chat_template=template, return_dict=True,
                                                return_assistant_tokens_mask=True)
        except (TemplateError, TypeError, ValueError) as e:
            raise _cannot_render(e) from None
        return list(out["input_ids"]), [int(flag) for flag in out["assistant_masks"]]
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("assistant mask: a template without generation markers needs a fast tokenizer (offsets)")
    full, spans = assistant_spans(tokenizer, messages, template)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask, span = [], 0
    for start, end in encoded["offset_mapping"]:
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        mask.append(int(span < len(spans) and end > spans[span][0]))
    return list(encoded["input_ids"]), mask
