"""The ranking page: a person orders a prompt's rollouts best to worst, by keyboard or mouse.

    hfstack rank --config recipes/tiny/rank.yaml      # then open http://127.0.0.1:7861

Keys: press the number of the best answer, then the next best, and so on (clicking a card does the
same); Backspace takes the last pick back; Enter saves once every answer has a place (the last one
places itself). Each saved ranking goes straight to `rankings.jsonl` (fsync'ed) before the page
moves on, so closing the page or killing the server loses nothing that was saved, and a restarted
server opens at the first prompt not yet ranked.

A small standard-library HTTP server: GET / (the page), GET /api/next, POST /api/rank. It binds to
127.0.0.1 unless `host` says otherwise.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hfstack · rank rollouts</title>
<style>
 body { font: 16px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
 #prompt { font-size: 1.2rem; background: #f3f0ff; padding: .8rem 1rem; border-radius: .5rem; }
 .card { border: 2px solid #ccc; border-radius: .5rem; padding: .6rem .9rem; margin: .5rem 0; cursor: pointer;
         white-space: pre-wrap; display: flex; gap: .8rem; }
 .card:hover { border-color: #888; }
 .card.picked { border-color: #4a3aff; background: #f7f6ff; }
 .key { font-weight: bold; min-width: 1.5rem; }
 .place { margin-left: auto; font-weight: bold; color: #4a3aff; }
 #status, #help { color: #555; }
 button { font-size: 1rem; padding: .4rem 1rem; }
</style></head>
<body>
<h1>Rank the answers, best first</h1>
<p id="help">Press the number of the best answer, then the next best, … (or click the answers in order).
Backspace undoes the last pick, Enter saves.</p>
<p id="status">loading…</p>
<div id="prompt"></div>
<div id="cards"></div>
<p><button id="undo">Undo (Backspace)</button> <button id="save" disabled>Save ranking (Enter)</button></p>
<script>
let item = null, order = [];
async function loadNext() {
  const response = await fetch("api/next");
  const data = await response.json();
  item = data.item; order = [];
  document.getElementById("status").textContent =
    `${data.ranked} of ${data.total} prompts ranked` + (item ? "" : " · all done, thank you!");
  render();
}
function render() {
  document.getElementById("prompt").textContent = item ? item.prompt : "";
  const cards = document.getElementById("cards");
  cards.innerHTML = "";
  if (!item) return;
  item.completions.forEach((text, index) => {
    const card = document.createElement("div");
    const place = order.indexOf(index);
    card.className = "card" + (place >= 0 ? " picked" : "");
    card.dataset.index = index;
    card.innerHTML = `<span class="key">${index + 1}</span><span class="text"></span>` +
                     `<span class="place">${place >= 0 ? "#" + (place + 1) : ""}</span>`;
    card.querySelector(".text").textContent = text || "(empty)";
    card.addEventListener("click", () => pick(index));
    cards.appendChild(card);
  });
  document.getElementById("save").disabled = order.length !== item.completions.length;
}
function pick(index) {
  if (!item || order.includes(index)) return;
  order.push(index);
  const left = item.completions.map((_, i) => i).filter(i => !order.includes(i));
  if (left.length === 1) order.push(left[0]);  // the last one places itself
  render();
}
function undo() { if (item && order.length) { order.pop(); if (order.length === item.completions.length - 1) order.pop(); render(); } }
async function save() {
  if (!item || order.length !== item.completions.length) return;
  const response = await fetch("api/rank", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({prompt_id: item.prompt_id, order: order})});
  if (!response.ok) { document.getElementById("status").textContent = "not saved: " + await response.text(); return; }
  await loadNext();
}
document.addEventListener("keydown", (event) => {
  if (/^[1-9]$/.test(event.key)) pick(Number(event.key) - 1);
  else if (event.key === "Backspace") { event.preventDefault(); undo(); }
  else if (event.key === "Enter") save();
});
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("save").addEventListener("click", save);
loadNext();
</script></body></html>
"""


def make_server(store, host: str = "127.0.0.1", port: int = 7861) -> ThreadingHTTPServer:
    """The page's HTTP server over a RankingStore (call serve_forever, or use `serve`)."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str, kind: str = "application/json") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE, "text/html")
            elif self.path == "/api/next":
                self._send(200, json.dumps(store.progress()))
            else:
                self._send(404, json.dumps({"error": "not found"}))

        def do_POST(self):  # noqa: N802
            if self.path != "/api/rank":
                self._send(404, json.dumps({"error": "not found"}))
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                store.save_ranking(int(body["prompt_id"]), [int(i) for i in body["order"]], ranker="person")
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, json.dumps({"error": str(e)}))
                return
            self._send(200, json.dumps({"saved": True}))

        def log_message(self, *args):  # keep the terminal for our own progress lines
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve(store, host: str = "127.0.0.1", port: int = 7861) -> None:
    from hfstack.serving import serve_until_interrupted

    server = make_server(store, host, port)
    serve_until_interrupted(server, "rank", f"ranking page on http://{host}:{server.server_address[1]}/ "
                                            "(Ctrl-C when done; every saved ranking is kept)")
