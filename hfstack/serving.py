"""Web chat with the assistant: streaming answers, a system message, tool calls shown as they run.

    hfstack serve --model runs/tiny/rlhf [--port 7860] [--host 127.0.0.1]

A standard-library HTTP server (bound to 127.0.0.1 unless `host` says otherwise) with one page and
one endpoint: POST /api/chat takes `{"messages": [...], "system": "..."}` and streams newline-
delimited JSON events while the tool loop runs: `{"type": "text", "text": ...}` as the answer's
tokens arrive, `{"type": "call", "tool": ..., "text": ...}` as the model writes a tool call,
`{"type": "tool", "tool": "python", "input": ..., "output": ...}` when the tool has run, and
`{"type": "done", "answer": ...}`. Requests are answered one at a time (one model, one CPU).
"""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hfstack.config import ConfigError


@dataclass
class ServeConfig:
    model: str = "runs/tiny/rlhf"
    host: str = "127.0.0.1"
    port: int = 7860
    max_new_tokens: int = 128
    temperature: float = 0.0
    max_tool_calls: int = 3

    def __post_init__(self):
        if not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"serve: no model at '{self.model}' (expected config.json)")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hfstack chat</title>
<style>
 body { font: 16px/1.45 system-ui, sans-serif; max-width: 50rem; margin: 1.5rem auto; padding: 0 1rem; }
 #log div { margin: .5rem 0; padding: .5rem .8rem; border-radius: .5rem; white-space: pre-wrap; }
 .user { background: #eef; } .assistant { background: #f6f6f6; }
 .tool { background: #fff8e0; font-family: ui-monospace, monospace; font-size: .9rem; }
 #system { width: 100%; } form { display: flex; gap: .5rem; } #question { flex: 1; font-size: 1rem; }
</style></head>
<body>
<h1>hfstack chat</h1>
<label>System message <input id="system" placeholder="(the model's default)"></label>
<div id="log"></div>
<form id="ask"><input id="question" autocomplete="off" placeholder="Ask something, Enter to send" autofocus>
<button>Send</button></form>
<script>
const history = [];
function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = kind; div.textContent = text;
  document.getElementById("log").appendChild(div);
  return div;
}
document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = document.getElementById("question");
  const question = box.value.trim();
  if (!question) return;
  box.value = "";
  history.push({role: "user", content: question});
  bubble("user", question);
  let answer = bubble("assistant", ""), call = null;
  const response = await fetch("api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({messages: history, system: document.getElementById("system").value})});
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (true) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let newline;
    while ((newline = buffer.indexOf("\\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, newline));
      buffer = buffer.slice(newline + 1);
      if (event.type === "text") answer.textContent += event.text;
      else if (event.type === "tool") {
        bubble("tool", `[${event.tool}] ${event.input}\\n→ ${event.output}`);
        answer = bubble("assistant", "");
      } else if (event.type === "done") {
        answer.dataset.done = "1";
        answer.classList.add("final");
        history.push({role: "assistant", content: event.answer});
      }
    }
  }
});
</script></body></html>
"""


def make_server(cfg: ServeConfig) -> ThreadingHTTPServer:
    from transformers import TextStreamer

    from hfstack.generation import load_model
    from hfstack.protocol import TOOL_CALL_TOKENS
    from hfstack.tools.loop import assistant_replies, default_tools
    from hfstack.tools.search import index_of_model

    model, tokenizer = load_model(cfg.model)
    tools = default_tools(index_of_model(cfg.model))
    one_at_a_time = threading.Lock()

    call_tokens = {start: name for name, (start, _) in TOOL_CALL_TOKENS.items()}
    end_tokens = {end for _, end in TOOL_CALL_TOKENS.values()}

    class QueueStreamer(TextStreamer):
        """Sorts the streamed text into the answer and the tool call being written."""

        def __init__(self, events: queue.Queue):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)
            self.events, self.tool = events, None

        def on_finalized_text(self, text: str, stream_end: bool = False):
            for piece in re.split(r"(<\|[a-z_]+\|>)", text):
                if piece in call_tokens:
                    self.tool = call_tokens[piece]
                elif piece in end_tokens:
                    self.tool = None
                elif piece and not re.fullmatch(r"<\|[a-z_]+\|>", piece):
                    self.events.put({"type": "call", "tool": self.tool, "text": piece} if self.tool
                                    else {"type": "text", "text": piece})

    def answer(messages: list[dict], system: str, events: queue.Queue) -> None:
        conversation = ([{"role": "system", "content": system}] if system else []) + messages
        try:
            with one_at_a_time:
                reply = assistant_replies(model, tokenizer, [conversation], cfg.max_new_tokens, cfg.max_tool_calls,
                                          cfg.temperature, tools=tools, streamer=QueueStreamer(events),
                                          on_tool=lambda call: events.put({"type": "tool", **call}))[0]
            events.put({"type": "done", "answer": reply.answer})
        except Exception as e:  # the page shows it; the server keeps serving
            events.put({"type": "done", "answer": "", "error": f"{type(e).__name__}: {e}"})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path not in ("/", "/index.html"):
                self.send_error(404)
                return
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            if self.path != "/api/chat":
                self.send_error(404)
                return
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = [{"role": m["role"], "content": str(m["content"])} for m in request["messages"]]
            except (ValueError, KeyError, TypeError) as e:
                self.send_error(400, f"expected {{'messages': [{{'role', 'content'}}]}}: {e}")
                return
            events: queue.Queue = queue.Queue()
            threading.Thread(target=answer, args=(messages, request.get("system") or "", events), daemon=True).start()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            while True:
                event = events.get()
                data = (json.dumps(event) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if event["type"] == "done":
                    break
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer((cfg.host, cfg.port), Handler)


def serve(cfg: ServeConfig) -> None:
    server = make_server(cfg)
    serve_until_interrupted(server, "serve", f"chat with {cfg.model} on http://{cfg.host}:{server.server_address[1]}/ "
                                             "(Ctrl-C to stop)")


def serve_until_interrupted(server: ThreadingHTTPServer, tag: str, banner: str) -> None:
    """Print where the page is, serve until Ctrl-C, then close the socket (the chat and ranking pages)."""
    print(f"[{tag}] {banner}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\n[{tag}] stopped", flush=True)
    finally:
        server.server_close()
