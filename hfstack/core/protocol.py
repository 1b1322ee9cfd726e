"""The conversation protocol: every special token of the mission, and the chat template, in one place.

A conversation is a list of messages in the format TRL and transformers use:

    {"role": "system" | "user", "content": "..."}
    {"role": "assistant", "content": "...", "tool_calls": [{"type": "function",
        "function": {"name": "python" | "search", "arguments": {"code": "..."} | {"query": "..."}}}]}
    {"role": "tool", "name": "python", "content": "..."}

and renders as one token stream (the Tiktokenizer view, `hfstack tokenize --chat conv.json`):

    <|endoftext|><|system_start|>You are ...<|system_end|><|user_start|>What is 2**10?<|user_end|>
    <|assistant_start|>Let me compute it.<|python_start|>print(2**10)<|python_end|>
    <|output_start|>1024<|output_end|>It is 1024.<|assistant_end|>

A tool call ends the model's output for the moment: the runtime executes it, appends the output
block, and the same assistant turn continues (so a message after a tool output opens no new turn).
Everything the assistant writes, its tool calls and its `<|assistant_end|>` sit inside
`{% generation %}` markers, which is what TRL's `assistant_only_loss` and transformers'
`return_assistant_tokens_mask` read; tool outputs and the other roles are never trained on.
"""

from __future__ import annotations

DOCUMENT_BOUNDARY = "<|endoftext|>"  # starts every pretraining document and every conversation
PAD = "<|pad|>"

ROLE_TOKENS = {
    "system": ("<|system_start|>", "<|system_end|>"),
    "user": ("<|user_start|>", "<|user_end|>"),
    "assistant": ("<|assistant_start|>", "<|assistant_end|>"),
}
TOOL_CALL_TOKENS = {  # what the assistant writes to call a tool
    "python": ("<|python_start|>", "<|python_end|>"),
    "search": ("<|search_start|>", "<|search_end|>"),
}
TOOL_ARGUMENT = {"python": "code", "search": "query"}  # the single argument each tool takes
TOOL_OUTPUT = ("<|output_start|>", "<|output_end|>")  # what the runtime appends after a call

SPECIAL_TOKENS: list[str] = [
    DOCUMENT_BOUNDARY,
    PAD,
    *[t for pair in ROLE_TOKENS.values() for t in pair],
    *[t for pair in TOOL_CALL_TOKENS.values() for t in pair],
    *TOOL_OUTPUT,
]
END_OF_TURN = ROLE_TOKENS["assistant"][1]


def _tool_call_branches() -> str:
    branches = []
    for i, (tool, (start, end)) in enumerate(TOOL_CALL_TOKENS.items()):
        arg = TOOL_ARGUMENT[tool]
        keyword = "if" if i == 0 else "elif"
        branches.append(
            f"{{%- {keyword} fn.name == '{tool}' -%}}{start}"
            f"{{{{- fn.arguments['{arg}'] if fn.arguments is mapping else fn.arguments -}}}}{end}")
    tools = " and ".join(TOOL_CALL_TOKENS)
    branches.append(f"{{%- else -%}}{{{{- raise_exception(\"unknown tool '\" ~ fn.name ~ \"': "
                    f"the protocol knows {tools}\") -}}}}{{%- endif -%}}")
    return "".join(branches)


def chat_template(default_system: str | None = None) -> str:
    """The Jinja chat template, built from the tokens above so the two can never disagree.

    With `default_system`, a conversation without a system message gets that one (the assistant's
    identity travels with its template, so training and chatting see the same first turn).
    """
    import json

    (sys_start, sys_end), (user_start, user_end), (asst_start, asst_end) = ROLE_TOKENS.values()
    out_start, out_end = TOOL_OUTPUT
    default = ""
    if default_system:
        default = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                   f"{sys_start}{{{{- {json.dumps(default_system)} -}}}}{sys_end}"
                   "{%- endif -%}")
    return (
        # the tokenizer's own document start (hfstack's <|endoftext|>, a Hub model's <s>); none when it has none
        "{%- if bos_token -%}{{- bos_token -}}{%- endif -%}" + default +
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        f"{sys_start}{{{{- message['content'] -}}}}{sys_end}"
        "{%- elif message['role'] == 'user' -%}"
        f"{user_start}{{{{- message['content'] -}}}}{user_end}"
        "{%- elif message['role'] == 'assistant' -%}"
        # after a tool output the same turn goes on, so no new start token
        "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
        f"{asst_start}"
        "{%- endif -%}"
        "{%- generation -%}"
        "{{- message['content'] or '' -}}"
        "{%- for call in message.get('tool_calls') or [] -%}"
        "{%- set fn = call['function'] if call['function'] is defined else call -%}"
        + _tool_call_branches() +
        "{%- endfor -%}"
        "{%- if not message.get('tool_calls') -%}"
        f"{asst_end}"
        "{%- endif -%}"
        "{%- endgeneration -%}"
        "{%- elif message['role'] == 'tool' -%}"
        f"{out_start}{{{{- message['content'] -}}}}{out_end}"
        "{%- else -%}"
        "{{- raise_exception(\"unknown role '\" ~ message['role'] ~ \"': expected system, user, assistant "
        "or tool\") -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        f"{asst_start}"
        "{%- endif -%}"
    )


def without_protocol_tokens(text: str, also=()) -> str:
    """`text` with every special token (and the tokens in `also`, e.g. another tokenizer's) removed."""
    for token in {*SPECIAL_TOKENS, *also}:
        text = text.replace(token, "")
    return text


def contains_protocol_token(text: str) -> str | None:
    """The first special token spelled out inside `text`, if any (conversation data is checked with this)."""
    for token in SPECIAL_TOKENS:
        if token in text:
            return token
    return None
