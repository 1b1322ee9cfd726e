"""Web chat with the assistant: streaming answers, a system message, tool calls shown as they run.

    hfstack serve --model runs/tiny/rlhf [--port 7860] [--host 127.0.0.1]

A standard-library HTTP server (bound to 127.0.0.1 unless `host` says otherwise) with one page and
one endpoint: POST /api/chat takes `{"messages": [...], "system": "..."}` and streams newline-
delimited JSON events while the tool loop runs: `{"type": "text", "text": ...}` as the answer's
tokens arrive, `{"type": "call", "tool": ..., "text": ...}` as the model writes a tool call,
`{"type": "tool", "tool": "python", "input": ..., "output": ...}` when the tool has run, and
`{"type": "done", "answer": ...}`. Requests are answered one at a time (one model, one CPU).

Every request passes hfstack.ui.http's checks (Host, Origin, JSON body, size); the messages may
only be user and assistant turns (the system message comes in `system`), and no text may spell out
a protocol token. A client that goes away stops its generation within a token, freeing the model.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections import deque
from dataclasses import dataclass, field

from hfstack.core.config import bounded, check_fields, model_folder
from hfstack.core.model import load_model
from hfstack.core.pretrained import resolve_model
from hfstack.core.protocol import TOOL_CALL_TOKENS, contains_protocol_token, without_protocol_tokens
from hfstack.core.renames import renamed
from hfstack.tools.loop import assistant_replies, default_tools
from hfstack.tools.search import index_of_model
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
    temperature: float = bounded(0.0, ge=0, why="0 = greedy")  # sampling temperature
    max_tool_calls: int = bounded(3, ge=0, why="0: answer without tools")  # tool calls per reply

    def __post_init__(self):
        check_fields(self, "serve")  # the model folder too: config.json, weights


@dataclass
class Generation:
    """One chat request's run: the flag set when its client goes away, and what the model wrote."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0  # tokens the model has generated so far (tool outputs not counted)


def chat_request(body: dict) -> tuple[list[dict], str]:
    """The messages and system text of a POST /api/chat body, or Refused(400) saying what is wrong.
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
    return clean, system


PAGE = page("chat.html")


def make_server(cfg: ServeConfig, tools: dict | None = None) -> GuardedHTTPServer:
    """The chat server (call serve_forever). `tools`: name → function (default: python and the model's
    search index). `server.generations` keeps the last requests' Generation records."""
    from transformers import TextStreamer

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "serve")
    model, tokenizer = load_model(folder)
    tools = default_tools(index_of_model(folder)) if tools is None else tools
    one_at_a_time = threading.Lock()

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
                    self.tool = None
                elif piece and not re.fullmatch(r"<\|[a-z_]+\|>", piece):
                    self.emit({"type": "call", "tool": self.tool, "text": piece} if self.tool
                              else {"type": "text", "text": piece})

    def answer(messages: list[dict], system: str, events: queue.Queue, run: Generation) -> None:
        def emit(event: dict) -> None:
            # waits while the client is behind (the queue is bounded), gives up once it has gone
            while not run.cancelled.is_set():
                try:
                    events.put(event, timeout=POLL_SECONDS)
                    return
                except queue.Full:
                    continue

        conversation = ([{"role": "system", "content": system}] if system else []) + messages
        try:
            with one_at_a_time:
                if run.cancelled.is_set():  # the client left while an earlier request held the model
                    return
                reply = assistant_replies(model, tokenizer, [conversation], cfg.max_new_tokens, cfg.max_tool_calls,
                                          cfg.temperature, tools=tools, streamer=QueueStreamer(emit, run),
                                          on_tool=lambda call: emit({"type": "tool", **call}),
                                          should_stop=run.cancelled.is_set)[0]
            # the page sends the answer back as history, which may not hold protocol tokens
            emit({"type": "done", "answer": without_protocol_tokens(reply.answer)})
        except Exception as e:  # the page shows it; the server keeps serving
            emit({"type": "done", "answer": "", "error": f"{type(e).__name__}: {e}"})
        finally:
            run.finished.set()

    class Handler(GuardedHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_page(PAGE)

        def do_POST(self):  # noqa: N802
            try:
                if self.path != "/api/chat":
                    raise Refused(404, "not found")
                messages, system = chat_request(self.read_json_object())
            except Refused as refusal:
                self.refuse(refusal)
                return
            run = Generation()
            server.generations.append(run)
            events: queue.Queue = queue.Queue(maxsize=EVENT_BACKLOG)
            threading.Thread(target=answer, args=(messages, system, events, run), daemon=True).start()
            delivered = False
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                delivered = self.stream(events)
            except OSError:  # BrokenPipe, ConnectionReset, a write that timed out: the client is gone
                pass
            finally:
                if not delivered:  # stop the generation (within a token) and let the next request in
                    run.cancelled.set()
                    self.close_connection = True

        def stream(self, events: queue.Queue) -> bool:
            """Write the events as chunks until `done` (True), or until the client has gone (False)."""
            while True:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    event = None
                if self.client_gone():  # checked before each write, and while a tool runs in silence
                    return False
                if event is None:
                    continue
                data = (json.dumps(event) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if event["type"] == "done":
                    self.wfile.write(b"0\r\n\r\n")
                    return True

    server = GuardedHTTPServer(cfg.host, cfg.port, Handler, "serve", MAX_BODY_BYTES)
    server.generations = deque(maxlen=16)
    return server


def serve(cfg: ServeConfig) -> None:
    server = make_server(cfg)
    address = f"http://{cfg.host}:{server.server_address[1]}/"
    serve_until_interrupted(server, "serve", f"chat with {cfg.model_name_or_path} on {address} (Ctrl-C to stop)")


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = ServeConfig
run = serve
