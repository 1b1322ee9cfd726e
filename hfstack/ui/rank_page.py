"""The ranking page: a person orders a prompt's rollouts best to worst, by keyboard or mouse.

    hfstack rank --config recipes/tiny/rank.yaml      # then open http://127.0.0.1:7861

Keys: press the number of the best answer, then the next best, and so on (clicking a card does the
same); Backspace takes the last pick back; Enter saves once every answer has a place (the last one
places itself). Each saved ranking goes straight to `rankings.jsonl` (fsync'ed) before the page
moves on, so closing the page or killing the server loses nothing that was saved, and a restarted
server opens at the first prompt not yet ranked.

A small standard-library HTTP server: GET / (the page), GET /api/next, POST /api/rank. It binds to
127.0.0.1 unless `host` says otherwise, and every request passes hfstack.ui.http's checks (Host,
Origin, a JSON body of at most 64 KiB), so another website open in the same browser cannot rank
in the person's name.
"""

from __future__ import annotations

from hfstack.ui.http import GuardedHandler, GuardedHTTPServer, Refused, page, serve_until_interrupted

MAX_BODY_BYTES = 64 * 1024  # a ranking is a prompt id and a handful of indices

PAGE = page("rank.html")


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
    server = make_server(store, host, port)
    serve_until_interrupted(server, "rank", f"ranking page on http://{host}:{server.server_address[1]}/ "
                                            "(Ctrl-C when done; every saved ranking is kept)")
