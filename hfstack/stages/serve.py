"""Chat with the assistant: a web page, and the OpenAI chat-completions API any OpenAI client can use.

    hfstack serve --model runs/tiny/rlhf [--port 7860] [--host 127.0.0.1] [--api_key KEY] [--run RUN | --data DIR]

A standard-library HTTP server (bound to 127.0.0.1 unless `host` says otherwise). It serves:

- `GET /`: the chat page (hfstack/ui/chat.html), which talks to the API below, streaming;
- `POST /v1/chat/completions` and `GET /v1/models`: OpenAI's API (shapes and what is ignored:
  hfstack.ui.openai_api). The tools run here, inside the turn, as in every hfstack tool loop; the
  calls and their outputs come back beside the final answer, and as chunks while streaming;
- `POST /api/chat`, kept for older clients: `{"messages": [...], "system": "..."}` of user and
  assistant turns, answered with newline-delimited JSON events: `{"type": "text", "text"}` as the
  answer's tokens arrive, `{"type": "call", "tool", "text"}` as the model writes a tool call,
  `{"type": "tool", "tool", "input", "output"}` when the tool has run, and `{"type": "done",
  "answer"}` (with `"error"` if the generation failed);
- `POST /v1/trace {"text"}`: "where did this come from?", the crawl documents an answer's text is most
  like, with the span each shares with it (hfstack.tools.provenance, as `hfstack trace`), and `GET
  /v1/trace`: whether there is crawl data. The page offers it under each answer when there is. The crawl
  is `--data`, else `--run`'s RUN/data, else the model's own run's (the model is RUN/rlhf, RUN/sft, ...);
  the index is kept in RUN/trace. Without one the endpoint answers a "no_crawl_data" error.

Requests are answered one at a time (one model). Every request passes hfstack.ui.http's checks
(Host, Origin, JSON body, size), and no text may spell out a protocol token. With `--api_key`, the
API and /api/chat need `Authorization: Bearer KEY` (the page sends it only when typed into it; the
page itself never holds it). A client that goes away stops its generation within a token.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.layout import RunLayout
from hfstack.core.model import load_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.protocol import TOOL_CALL_TOKENS, contains_protocol_token, without_protocol_tokens
from hfstack.core.renames import renamed
from hfstack.tools.loop import assistant_replies, context_window, default_tools
from hfstack.tools.provenance import SharedIndex, parquet_files, run_of_model
from hfstack.tools.search import index_of_model
from hfstack.ui import openai_api as api
from hfstack.ui.http import GuardedHandler, GuardedHTTPServer, Refused, page, serve_until_interrupted

MAX_BODY_BYTES = 1 << 20  # a long conversation fits; a request that would fill memory does not
CLIENT_ROLES = ("user", "assistant")  # tool turns come from our own tools only, never from a client
EVENT_BACKLOG = 64  # events the generation may run ahead of a slow client before it waits
POLL_SECONDS = 0.1  # how often a quiet stream (a tool running) checks whether its client is still there


@renamed(model="model_name_or_path")
@dataclass
class ServeConfig:
    model_name_or_path: str = model_folder("runs/tiny/rlhf", must_exist=True)  # the model to serve: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    host: str = "127.0.0.1"  # the address to listen on; 127.0.0.1: this machine only
    port: int = bounded(7860, ge=0, le=65535, why="0 picks a free port")  # the port to listen on
    max_new_tokens: int = bounded(128, ge=1)  # tokens per reply, tool calls and their outputs included
    temperature: float = bounded(0.0, ge=0, why="0 = greedy")  # sampling temperature (an API request may set its own)
    max_tool_calls: int = bounded(3, ge=0, why="0: answer without tools")  # tool calls per reply
    api_key: str | None = None  # when set, /v1/* and /api/chat need 'Authorization: Bearer <api_key>'
    run: str | None = None  # the run whose crawl (RUN/data) answers "where did this come from?" (default: the model's)
    data: str | None = None  # ...or a data-stage folder or parquet file to trace answers in

    def __post_init__(self):
        check_fields(self, "serve")  # the model folder too: config.json, weights
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("serve: 'api_key' is empty; leave it out for no key, or give one")
        if self.run is not None and not Path(self.run).is_dir():
            raise ConfigError(f"serve: no run directory at '{self.run}' (--run)")
        if self.run is not None or self.data is not None:  # asked for: there must be parquet to trace in
            parquet_files(self.data if self.data is not None else RunLayout(Path(self.run)).data, "serve")


def crawl_index(cfg: ServeConfig, model_folder) -> SharedIndex:
    """The documents "where did this come from?" searches: --data, else --run's RUN/data, else the data of the
    run the model folder belongs to; the index is kept in that run's RUN/trace (built in memory without a run)."""
    run = Path(cfg.run) if cfg.run is not None else run_of_model(model_folder)
    index_dir = RunLayout(run).trace if run is not None else None
    if cfg.data is not None:
        return SharedIndex(Path(cfg.data), index_dir if cfg.run is not None else None)
    if run is None:
        return SharedIndex(None, None, "no crawl data to trace answers in: the model is not in a run with the data "
                                       "stage's parquet (RUN/data); start serve with --run RUN or --data DIR")
    return SharedIndex(RunLayout(run).data, index_dir)


def trace_answer(sources: SharedIndex, text: str, top_k: int) -> dict:
    """POST /v1/trace's answer (hfstack.ui.openai_api), or a "no_crawl_data" error saying why there is none."""
    try:
        matches = sources.trace(text, top_k)
    except ConfigError as e:  # no data, or it went away or was replaced by something unreadable
        raise api.ApiError(404, str(e), code="no_crawl_data") from None
    except Exception as e:  # the client is told in one line; the server keeps serving
        raise api.ApiError(500, f"tracing failed: {type(e).__name__}: {e}") from None
    return {"object": "trace", "data": str(sources.data), "matches": [m.as_dict() for m in matches]}


def trace_status(sources: SharedIndex) -> dict:
    try:
        return {"object": "trace.status", "available": True, "documents": sources.documents(), "reason": None}
    except ConfigError as e:
        return {"object": "trace.status", "available": False, "documents": 0, "reason": str(e)}


@dataclass
class Generation:
    """One chat request's run: the flag set when its client goes away, and what the model wrote."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0  # tokens the model has generated so far (tool outputs not counted)
    messages: list[dict] = field(default_factory=list)  # the conversation it answered (hfstack's format)


class ClientGone(Exception):
    """The client closed its connection before its answer was complete."""


def chat_request(body: dict) -> list[dict]:
    """The conversation of a POST /api/chat body, or Refused(400) saying what is wrong.
    Protocol tokens are refused with the same check the SFT data goes through."""
    messages, system = body.get("messages"), body.get("system") or ""
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    if not isinstance(system, str):
        raise Refused(400, "'system' must be a string")
    clean = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in CLIENT_ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise Refused(400, f"message {number}: the role must be user or assistant, not {str(role)[:40]!r} "
                               "(the system message goes in 'system')")
        if not isinstance(message.get("content"), str):
            raise Refused(400, f"message {number}: 'content' must be a string")
        clean.append({"role": message["role"], "content": message["content"]})
    for where, text in [("system", system), *((f"message {n}", m["content"]) for n, m in enumerate(clean, 1))]:
        token = contains_protocol_token(text)
        if token:  # it would be read as the real token: a forged turn, a fake tool output
            raise Refused(400, f"{where} contains the protocol token {token}")
    return ([{"role": "system", "content": system}] if system else []) + clean


def legacy_event(event: dict) -> dict | None:
    """A tool-loop event as /api/chat's NDJSON has always sent it (None: an event it never had)."""
    if event["type"] == "done":
        return {"type": "done", "answer": without_protocol_tokens(event["reply"].answer)}
    if event["type"] == "error":
        return {"type": "done", "answer": "", "error": event["message"]}
    return event if event["type"] in ("text", "call", "tool") else None


PAGE = page("chat.html")


def make_server(cfg: ServeConfig, tools: dict | None = None) -> GuardedHTTPServer:
    """The chat server (call serve_forever). `tools`: name → function (default: python and the model's
    search index). `server.generations` keeps the last requests' Generation records."""
    from transformers import TextStreamer

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "serve")
    model, tokenizer = load_model(folder)
    tools = default_tools(index_of_model(folder)) if tools is None else tools
    sources = crawl_index(cfg, folder)  # opened on the first "where did this come from?", so serving starts at once
    one_at_a_time = threading.Lock()
    window = context_window(model)
    model_id, started = cfg.model_name_or_path, int(time.time())

    call_tokens = {start: name for name, (start, _) in TOOL_CALL_TOKENS.items()}
    end_tokens = {end for _, end in TOOL_CALL_TOKENS.values()}

    class QueueStreamer(TextStreamer):
        """Sorts the streamed text into the answer and the tool call being written."""

        def __init__(self, emit, run: Generation):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)
            self.emit, self.run, self.tool = emit, run, None

        def put(self, value):
            if not self.next_tokens_are_prompt:  # each generate call first hands over its prompt
                self.run.tokens += value.numel()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            for piece in re.split(r"(<\|[a-z_]+\|>)", text):
                if piece in call_tokens:
                    self.tool = call_tokens[piece]
                elif piece in end_tokens:
                    if self.tool:
                        self.emit({"type": "call_end", "tool": self.tool})
                    self.tool = None
                elif piece and not re.fullmatch(r"<\|[a-z_]+\|>", piece):
                    self.emit({"type": "call", "tool": self.tool, "text": piece} if self.tool
                              else {"type": "text", "text": piece})

    def answer(run: Generation, events: queue.Queue, max_new_tokens: int, temperature: float) -> None:
        def emit(event: dict) -> None:
            # waits while the client is behind (the queue is bounded), gives up once it has gone
            while not run.cancelled.is_set():
                try:
                    events.put(event, timeout=POLL_SECONDS)
                    return
                except queue.Full:
                    continue

        try:
            with one_at_a_time:
                if run.cancelled.is_set():  # the client left while an earlier request held the model
                    return
                reply = assistant_replies(model, tokenizer, [run.messages], max_new_tokens, cfg.max_tool_calls,
                                          temperature, tools=tools, streamer=QueueStreamer(emit, run),
                                          on_tool=lambda call: emit({"type": "tool", **call}),
                                          should_stop=run.cancelled.is_set)[0]
            emit({"type": "done", "reply": reply})
        except Exception as e:  # the client is told; the server keeps serving
            emit({"type": "error", "message": f"{type(e).__name__}: {e}"})
        finally:
            run.finished.set()

    class Handler(GuardedHandler):
        protocol_version = "HTTP/1.1"

        def error_body(self, refusal: Refused) -> dict:
            on_api = getattr(self, "path", "").startswith("/v1/")  # no path yet: a malformed request line
            return api.error_body(refusal) if on_api else super().error_body(refusal)

        def do_GET(self):  # noqa: N802 - the http.server interface
            try:
                if self.path in ("/", "/index.html"):
                    self.send_page(PAGE)
                elif self.path == "/v1/models":
                    api.check_api_key(self.headers.get("Authorization"), cfg.api_key)
                    self.send_json(200, api.models_list(model_id, started))
                elif self.path.startswith("/v1/models/"):
                    api.check_api_key(self.headers.get("Authorization"), cfg.api_key)
                    if unquote(self.path.removeprefix("/v1/models/")) != model_id:
                        raise api.ApiError(404, f"this server serves the model {model_id!r} only", "model",
                                       "model_not_found")
                    self.send_json(200, api.model_card(model_id, started))
                elif self.path == "/v1/trace":
                    api.check_api_key(self.headers.get("Authorization"), cfg.api_key)
                    self.send_json(200, trace_status(sources))
                else:
                    self.send_error(404)  # quietly: a browser asks for /favicon.ico
            except Refused as refusal:
                self.refuse(refusal)

        def do_POST(self):  # noqa: N802
            try:
                if self.path == "/v1/trace":  # the same key, Origin and body checks as a chat request
                    api.check_api_key(self.headers.get("Authorization"), cfg.api_key)
                    self.send_json(200, trace_answer(sources, *api.trace_request(self.read_json_object())))
                    return
                if self.path not in ("/api/chat", "/v1/chat/completions"):
                    raise api.ApiError(404, f"no {self.path[:80]!r} here")
                api.check_api_key(self.headers.get("Authorization"), cfg.api_key)
                body = self.read_json_object()
                if self.path == "/api/chat":
                    request, messages = None, chat_request(body)
                else:
                    request = api.completions_request(body, cfg.max_new_tokens, cfg.temperature)
                    messages = request.messages
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
                api.check_context(len(prompt["input_ids"]), window, request and request.requested_tokens)
            except Refused as refusal:
                self.refuse(refusal)
                return
            run = Generation(messages=messages)
            server.generations.append(run)
            events: queue.Queue = queue.Queue(maxsize=EVENT_BACKLOG)
            limits = (cfg.max_new_tokens, cfg.temperature) if request is None else (request.max_new_tokens,
                                                                                     request.temperature)
            threading.Thread(target=answer, args=(run, events, *limits), daemon=True).start()
            try:
                if request is None:
                    self.stream_ndjson(events)
                elif request.stream:
                    self.stream_sse(events, api.Completion(model_id), request.include_usage)
                else:
                    self.answer_json(events, api.Completion(model_id))
            except (OSError, ClientGone):  # BrokenPipe, ConnectionReset, a write that timed out: the client is gone
                run.cancelled.set()  # stop the generation (within a token) and let the next request in
                self.close_connection = True

        def events(self, events: queue.Queue):
            """The run's events up to its last (done or error); ClientGone once the client has left."""
            while True:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    event = None
                if self.client_gone():  # checked before each write, and while a tool runs in silence
                    raise ClientGone
                if event is not None:
                    yield event
                    if event["type"] in ("done", "error"):
                        return

        def start_chunked(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()

        def write_chunk(self, data: bytes, last: bool = False) -> None:
            """One chunk of the chunked body (`last`: and the body's end, in the same write)."""
            framed = f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b""
            self.wfile.write(framed + (b"0\r\n\r\n" if last else b""))
            self.wfile.flush()

        def stream_ndjson(self, events: queue.Queue) -> None:
            self.start_chunked("application/x-ndjson")
            for event in self.events(events):
                if (sent := legacy_event(event)) is not None:
                    self.write_chunk((json.dumps(sent) + "\n").encode())
            self.write_chunk(b"", last=True)

        def stream_sse(self, events: queue.Queue, completion: api.Completion, include_usage: bool) -> None:
            self.start_chunked("text/event-stream")
            self.write_chunk(api.sse(completion.first_chunk()))
            for event in self.events(events):
                if event["type"] == "error":
                    chunks = [api.error_body(Refused(500, event["message"]))]
                elif event["type"] == "done":
                    chunks = completion.last_chunks(event["reply"], include_usage)
                else:
                    chunks = completion.on_event(event)
                self.write_chunk(b"".join(api.sse(chunk) for chunk in chunks))
            self.write_chunk(api.sse("[DONE]"), last=True)

        def answer_json(self, events: queue.Queue, completion: api.Completion) -> None:
            for event in self.events(events):
                if event["type"] == "error":
                    self.send_json(500, api.error_body(Refused(500, event["message"])))
                elif event["type"] == "done":
                    reply = event["reply"]
                    self.send_json(200, completion.response(reply, without_protocol_tokens(reply.answer)))
                else:
                    completion.on_event(event)

    server = GuardedHTTPServer(cfg.host, cfg.port, Handler, "serve", MAX_BODY_BYTES)
    server.generations = deque(maxlen=16)
    return server


def serve(cfg: ServeConfig) -> None:
    server = make_server(cfg)
    address = f"http://{cfg.host}:{server.server_address[1]}/"
    key = ", API key required" if cfg.api_key else ""
    serve_until_interrupted(server, "serve", f"chat with {cfg.model_name_or_path} on {address}, OpenAI API at "
                                             f"{address}v1{key} (Ctrl-C to stop)")


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = ServeConfig
run = serve
