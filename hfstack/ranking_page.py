"""The ranking page: a person orders a prompt's rollouts best to worst, by keyboard or mouse.

    hfstack rank --config recipes/tiny/rank.yaml      # then open http://127.0.0.1:7861

Keys: press the number of the best answer, then the next best, and so on (clicking a card does the
same); Backspace takes the last pick back; Enter saves once every answer has a place (the last one
places itself). Each saved ranking goes straight to `rankings.jsonl` (fsync'ed) before the page
moves on, so closing the page or killing the server loses nothing that was saved, and a restarted
server opens at the first prompt not yet ranked.

A small standard-library HTTP server: GET / (the page), GET /api/next, POST /api/rank. It binds to
127.0.0.1 unless `host` says otherwise, and every request passes hfstack.webguard's checks (Host,
Origin, a JSON body of at most 64 KiB), so another website open in the same browser cannot rank
in the person's name.
"""

from __future__ import annotations

from hfstack.webguard import GuardedHandler, GuardedHTTPServer, Refused

MAX_BODY_BYTES = 64 * 1024  # a ranking is a prompt id and a handful of indices

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
function undo() {
  if (item && order.length) { order.pop(); if (order.length === item.completions.length - 1) order.pop(); render(); }
}
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


def make_server(store, host: str = "127.0.0.1", port: int = 7861) -> GuardedHTTPServer:
    """The page's HTTP server over a RankingStore (call serve_forever, or use `serve`)."""

    class Handler(GuardedHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path in ("/", "/index.html"):
                self.send_page(PAGE)
            elif self.path == "/api/next":
                self.send_json(200, store.progress())
            else:
                self.send_json(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            try:
                if self.path != "/api/rank":
                    raise Refused(404, "not found")
                prompt_id, order = ranking_request(self.read_json_object())
                store.save_ranking(prompt_id, order, ranker="person")
            except Refused as refusal:
                self.refuse(refusal)
                return
            except ValueError as e:  # an unknown prompt id, an order that is not a permutation
                self.refuse(Refused(400, str(e)))
                return
            self.send_json(200, {"saved": True})

    return GuardedHTTPServer(host, port, Handler, "rank", MAX_BODY_BYTES)


def ranking_request(body: dict) -> tuple[int, list[int]]:
    """`{"prompt_id": int, "order": [int, ...]}`, or Refused(400) saying which field is wrong."""
    def is_integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    prompt_id, order = body.get("prompt_id"), body.get("order")
    if not is_integer(prompt_id):
        raise Refused(400, "'prompt_id' must be an integer")
    if not isinstance(order, list) or not all(is_integer(i) for i in order):
        raise Refused(400, "'order' must be a list of integers")
    return prompt_id, order


def serve(store, host: str = "127.0.0.1", port: int = 7861) -> None:
    from hfstack.serving import serve_until_interrupted

    server = make_server(store, host, port)
    serve_until_interrupted(server, "rank", f"ranking page on http://{host}:{server.server_address[1]}/ "
                                            "(Ctrl-C when done; every saved ranking is kept)")
