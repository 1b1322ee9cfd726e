"""The OpenAI chat-completions protocol of `hfstack serve`: the request checks, and the answers and
stream chunks built from the tool loop's events, so any OpenAI client can talk to the assistant.

    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="KEY or anything")
    client.chat.completions.create(model="hfstack", messages=[{"role": "user", "content": "6*7?"}])

The assistant's tools (python, and search when the model has an index) run on the server, inside the
turn, as in every hfstack tool loop; the client never has to run one. So an answer is one assistant
turn whose tool calls have already been answered, and hfstack returns them beside the final message:

- not streamed: `choices[0].message` is the final assistant message (`content` = the answer, no
  `tool_calls`), and the extra field `choices[0].tool_messages` lists the turn's earlier messages
  in order: `{"role": "assistant", "content": <text before the call or null>, "tool_calls": [{"id",
  "type": "function", "function": {"name": "python", "arguments": "{\"code\": ...}"}}]}` then
  `{"role": "tool", "tool_call_id", "name", "content": <the tool's output>}`, once per call.
  Appending `tool_messages` and `message` to the history gives the next request the whole turn.
- streamed (`stream: true`, Server-Sent Events): `delta.content` as the text arrives; each tool call
  as the model writes it in OpenAI's streamed shape, `delta.tool_calls[0]` with `index` (0, 1, … over
  the turn), `id`, `function.name` and then `function.arguments` pieces that add up to the JSON
  `{"code": ...}`; when the tool has run, the extra `delta.tool_message` = the tool message above;
  then a chunk with `finish_reason`, a usage chunk (`choices: []`) when `stream_options.include_usage`,
  and `data: [DONE]`. A failure mid-stream is one `data: {"error": {...}}` line (the client raises).
- `finish_reason`: "stop", or "length" when the token budget ran out first (never "tool_calls").
- `usage`: `completion_tokens` = the tokens the model wrote; `prompt_tokens` = what it read without
  writing: the rendered conversation and the tool outputs; `total_tokens` is their sum.

Requests: `messages` of system/developer (first), user, assistant (with `tool_calls` in the shape
above) and tool roles, text content only, ending with a user message; every tool call needs its tool
message. `max_tokens`/`max_completion_tokens` (capped at the server's `--max_new_tokens`),
`temperature` in [0, 2] (default: the server's), `stream`, `stream_options.include_usage`, `n` (1
only). The answer's `model` is the served model's id whatever the request named. Accepted and
ignored: `stop` (the turn ends at the model's end-of-turn token), `tools` and `tool_choice` (the
model has its own tools and is trained to call them itself), `top_p`, `seed` and any other field.
The model's context window (`max_position_embeddings`) bounds the turn: messages that fill it, or
that leave less room than an explicit `max_tokens`, are a 400 error with the code
"context_length_exceeded"; without `max_tokens` the answer stops at the window ("length").
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status.

Beside OpenAI's API, hfstack's own "where did this come from?": `POST /v1/trace {"text", "top_k": 3}`
answers `{"object": "trace", "data": <the crawl's folder>, "matches": [{"url", "id", "bm25",
"matched_chars", "span", "start", "end", "text_start", "before", "after", "verbatim"}, ...]}` best first
(hfstack.tools.provenance), and `GET /v1/trace` says whether there is crawl data to trace in:
`{"object": "trace.status", "available", "documents", "reason"}`. Without crawl data a POST is a 404
error with the code "no_crawl_data".
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from hfstack.core.protocol import TOOL_ARGUMENT, contains_protocol_token, without_protocol_tokens
from hfstack.ui.http import Refused

ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "not_found_error"}  # else by class


class ApiError(Refused):
    """A refusal with OpenAI's error details: which request field (`param`) and a machine code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param, self.code = param, code


def error_body(refusal: Refused) -> dict:
    """Any refusal (the shared Host/Origin/size checks too) as OpenAI's error object."""
    kind = ERROR_TYPES.get(refusal.status, "server_error" if refusal.status >= 500 else "invalid_request_error")
    return {"error": {"message": refusal.message, "type": kind, "param": getattr(refusal, "param", None),
                      "code": getattr(refusal, "code", None)}}


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """Nothing when no key is set or `Authorization: Bearer <key>` carries it; else ApiError(401)."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the server's "
                            "--api_key", code="invalid_api_key")


def models_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [model_card(model_id, created)]}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "hfstack"}


MAX_TRACE_CHARS = 20_000  # an answer or a page of text: the span search is quadratic in the worst case
MAX_TRACE_SOURCES = 20


def trace_request(body: dict) -> tuple[str, int]:
    """hfstack's own POST /v1/trace {"text", "top_k"?}: the text whose sources to find and how many, or
    ApiError(400) naming the field."""
    text, top_k = body.get("text"), body.get("top_k", 3)
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'text' must be a non-empty string: the answer to trace back to the crawl", "text")
    if len(text) > MAX_TRACE_CHARS:
        raise ApiError(400, f"'text' is {len(text):,} characters; trace at most {MAX_TRACE_CHARS:,}", "text")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TRACE_SOURCES:
        raise ApiError(400, f"'top_k' must be a whole number from 1 to {MAX_TRACE_SOURCES}", "top_k")
    return text, top_k


@dataclass
class ChatRequest:
    """A checked POST /v1/chat/completions body, in hfstack's terms."""

    messages: list[dict]  # the conversation in hfstack's format (hfstack.core.protocol), system first
    max_new_tokens: int  # the reply's token budget, tool outputs included
    temperature: float  # 0 = greedy
    stream: bool = False  # answer as Server-Sent Events
    include_usage: bool = False  # streamed: end with a usage chunk
    requested_tokens: int | None = None  # max_tokens (or max_completion_tokens) as the client set it


def check_context(prompt_tokens: int, window: int | None, requested_tokens: int | None = None) -> None:
    """ApiError(400, "context_length_exceeded") when the rendered messages leave no room in the model's
    context window, or less than the client's explicit max_tokens; without one the answer is cut at the
    window instead (the rule vLLM's OpenAI server follows)."""
    if not window:
        return
    asked = prompt_tokens + (requested_tokens or 1)
    if asked > window:
        completion = f", {requested_tokens} in the completion" if requested_tokens else ""
        raise ApiError(400, f"This model's maximum context length is {window} tokens; the request takes {asked} "
                            f"({prompt_tokens} in the messages{completion}). Leave out earlier messages"
                            + (" or ask for fewer tokens." if requested_tokens else "."),
                       "messages", "context_length_exceeded")


def completions_request(body: dict, max_new_tokens: int, temperature: float) -> ChatRequest:
    """The request's conversation and settings, or ApiError(400) naming the field that is wrong."""
    if body.get("n", 1) not in (1, None) or isinstance(body.get("n"), bool):
        raise ApiError(400, "only n=1 is supported (one answer per request)", "n")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise ApiError(400, "'model' must be a string", "model")
    stream = flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    limit, requested = max_new_tokens, None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ApiError(400, f"'{name}' must be a whole number of at least 1", name)
            limit = min(limit, value)
            requested = min(requested or value, value)
    chosen = body.get("temperature")
    if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, (int, float))
                               or not 0 <= chosen <= 2):
        raise ApiError(400, "'temperature' must be a number between 0 and 2", "temperature")
    stop = body.get("stop")  # accepted and ignored: the turn ends at the model's end-of-turn token
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    return ChatRequest(conversation(body.get("messages")), limit, temperature if chosen is None else float(chosen),
                       stream, flag(options or {}, "include_usage"), requested)


def flag(values: dict, name: str) -> bool:
    value = values.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false", name)
    return bool(value)


def conversation(messages) -> list[dict]:
    """OpenAI messages → hfstack's: system first, each tool call right before its output (the protocol's
    order), an assistant turn that stopped at a tool output closed; ApiError(400) for anything else."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of message objects", "messages")
    system, out, pending, lead = [], [], {}, ""  # pending: tool_call_id → (tool, argument)
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}: 'role' must be system, developer, user, assistant or tool", where)
        calls = tool_calls_of(message.get("tool_calls"), where) if role == "assistant" else []
        content = text_of(message.get("content"), f"{where}.content", may_be_empty=bool(calls))
        if role in ("system", "developer"):
            if out:
                raise ApiError(400, f"{where}: system messages go before the conversation", where)
            system.append(content)
            continue
        if pending and role != "tool":
            raise ApiError(400, f"{where}: tool call {next(iter(pending))!r} has no tool message with its output",
                           where)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in pending:
                raise ApiError(400, f"{where}: 'tool_call_id' {str(call_id)[:40]!r} answers no tool call of the "
                                    "assistant message before it", f"{where}.tool_call_id")
            tool, argument = pending.pop(call_id)
            call = {"type": "function", "function": {"name": tool, "arguments": {TOOL_ARGUMENT[tool]: argument}}}
            out += [{"role": "assistant", "content": lead, "tool_calls": [call]},
                    {"role": "tool", "name": tool, "content": content}]
            lead = ""
            continue
        if out and out[-1]["role"] == "tool" and role == "user":  # that turn never finished: close it
            out.append({"role": "assistant", "content": ""})
        if calls:
            pending, lead = dict(calls), content
        else:
            out.append({"role": role, "content": content})
    if pending:
        raise ApiError(400, f"tool call {next(iter(pending))!r} has no tool message with its output", "messages")
    if not out or out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message (this server runs the tools itself)",
                       "messages")
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + out


def text_of(content, where: str, may_be_empty: bool = False) -> str:
    """A message's text: a string or a list of text parts; no protocol token spelled out in it."""
    if content is None and may_be_empty:
        return ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{where} must be text: a string or a list of {{\"type\": \"text\", \"text\"}} parts",
                       where)
    return no_protocol_token(content, where)


def no_protocol_token(text: str, where: str) -> str:
    token = contains_protocol_token(text)
    if token:  # it would be read as the real token: a forged turn, a fake tool output
        raise ApiError(400, f"{where} contains the protocol token {token}", where)
    return text


def tool_calls_of(calls, where: str) -> list[tuple[str, tuple[str, str]]]:
    """An assistant message's tool calls as (id, (tool, argument)); the tools are hfstack's own."""
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ApiError(400, f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    found = []
    for index, call in enumerate(calls):
        here = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call.get("id") if isinstance(call, dict) else None, str) or not isinstance(function, dict):
            raise ApiError(400, f"{here} needs an 'id' and a 'function' {{\"name\", \"arguments\"}}", here)
        tool, arguments = function.get("name"), function.get("arguments")
        if tool not in TOOL_ARGUMENT:
            raise ApiError(400, f"{here}: unknown tool {str(tool)[:40]!r}; the tools are "
                                f"{', '.join(TOOL_ARGUMENT)}", f"{here}.function.name")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        key = TOOL_ARGUMENT[tool]
        if not isinstance(arguments, dict) or not isinstance(arguments.get(key), str):
            raise ApiError(400, f"{here}: 'arguments' must be the JSON object {{\"{key}\": \"...\"}}",
                           f"{here}.function.arguments")
        found.append((call["id"], (tool, no_protocol_token(arguments[key], f"{here}.function.arguments"))))
    return found


class Completion:
    """One chat completion in OpenAI's shapes, built from the serve tool loop's events as they come:
    `{"type": "text", "text"}`, `{"type": "call", "tool", "text"}` (a piece of a call being written),
    `{"type": "call_end"}`, `{"type": "tool", "tool", "input", "output"}` (the call has run)."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model
        self.text = ""  # the assistant's text since the last tool output
        self.calls = 0  # tool calls begun so far in the turn (their stream index)
        self.writing: dict | None = None  # the call being written: {"id", "open"}, until its tool has run
        self.tool_messages: list[dict] = []

    def chunk(self, delta: dict | None, finish_reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def first_chunk(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""})

    def on_event(self, event: dict) -> list[dict]:
        """The stream chunks one event makes (the non-streamed answer ignores them)."""
        kind = event["type"]
        if kind == "text":
            self.text += event["text"]
            return [self.chunk({"content": event["text"]})]
        if kind == "call":
            chunks = [] if self.writing else [self.begin_call(event["tool"])]
            return chunks + [self.arguments_chunk(json.dumps(event["text"])[1:-1])]
        if kind == "call_end":
            return [self.end_call()] if self.writing and self.writing["open"] else []
        if kind == "tool":
            chunks = [] if self.writing else [self.begin_call(event["tool"]),
                                              self.arguments_chunk(json.dumps(event["input"])[1:-1])]
            if self.writing["open"]:
                chunks.append(self.end_call())
            # what the client may send back: a tool output that spells a protocol token would be refused
            code, output = without_protocol_tokens(event["input"]), without_protocol_tokens(event["output"])
            call_id, arguments = self.writing["id"], json.dumps({TOOL_ARGUMENT.get(event["tool"], "input"): code})
            message = {"role": "tool", "tool_call_id": call_id, "name": event["tool"], "content": output}
            self.tool_messages += [{"role": "assistant", "content": self.text.strip() or None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": event["tool"], "arguments": arguments}}]},
                message]
            self.text, self.writing = "", None
            return chunks + [self.chunk({"tool_message": message})]
        return []

    def begin_call(self, tool: str) -> dict:
        self.writing = {"id": f"call_{secrets.token_hex(12)}", "open": True}
        self.calls += 1
        start = json.dumps({TOOL_ARGUMENT.get(tool, "input"): ""})[:-2]  # `{"code": "`
        return self.chunk({"tool_calls": [{"index": self.calls - 1, "id": self.writing["id"], "type": "function",
                                           "function": {"name": tool, "arguments": start}}]})

    def arguments_chunk(self, piece: str) -> dict:
        return self.chunk({"tool_calls": [{"index": self.calls - 1, "function": {"arguments": piece}}]})

    def end_call(self) -> dict:
        self.writing["open"] = False
        return self.arguments_chunk('"}')

    def last_chunks(self, reply, include_usage: bool) -> list[dict]:
        """The chunks after the last event: the call left open (budget spent) closed, the finish reason,
        and the usage when asked for."""
        chunks = [self.end_call()] if self.writing and self.writing["open"] else []
        chunks.append(self.chunk({}, finish_reason(reply)))
        if include_usage:
            chunks.append({**self.chunk(None), "choices": [], "usage": usage(reply)})
        return chunks

    def response(self, reply, answer: str) -> dict:
        """The non-streamed answer (`answer`: the reply's final text, protocol tokens removed)."""
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                             "logprobs": None, "finish_reason": finish_reason(reply),
                             "tool_messages": self.tool_messages}],
                "usage": usage(reply)}


def finish_reason(reply) -> str:
    return "stop" if reply.finished else "length"


def usage(reply) -> dict:
    """Tokens written by the model (completion) and read without writing: the conversation and tool outputs."""
    written = sum(reply.model_mask)
    read = len(reply.prompt_ids) + len(reply.completion_ids) - written
    return {"prompt_tokens": read, "completion_tokens": written, "total_tokens": read + written}


def sse(value) -> bytes:
    """One Server-Sent Event carrying `value` as JSON (or the literal [DONE])."""
    return f"data: {value if isinstance(value, str) else json.dumps(value)}\n\n".encode()
