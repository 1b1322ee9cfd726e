"""Request checks shared by hfstack's two local web pages, so the rules live in one place.

    hfstack serve --model runs/tiny/rlhf             # the chat page (hfstack.stages.serve)
    hfstack rank --config recipes/tiny/rank.yaml     # the ranking page (hfstack.ui.rank_page)

Both pages are standard-library HTTP servers on 127.0.0.1 without logins. Loopback alone does not
keep other websites out: any page open in the same browser may send requests there (a cross-site
POST with `Content-Type: text/plain` needs no CORS preflight), and a DNS-rebinding page may even
read the answers. So `GuardedHTTPServer` and `GuardedHandler` apply, to every request:

- Host: must name this server (127.0.0.1, localhost, [::1] or the configured host, with the port),
  else 421; a rebinding attack arrives with the attacker's host name;
- on POST: `Content-Type: application/json` (else 415), an `Origin`, when present, of one of those
  hosts (else 403: browsers always send it on cross-origin POSTs), a `Content-Length` (else 411) of
  at most the server's cap (else 413, without reading the body), and a body that parses as a JSON
  object with finite numbers (else 400). Each refusal answers `{"error": "..."}` on one line (a
  handler may override `error_body`: serve's OpenAI API answers OpenAI's error object), is logged
  on stderr, and closes the connection; nothing drops the connection without an answer;
- on every answer `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY`; the HTML page
  also gets a Content-Security-Policy that runs only its own inline script and style (a nonce).
A server bound to anything but loopback prints a warning: the pages have no login (serve's
optional `--api_key` guards only its API and chat requests).
"""

from __future__ import annotations

import ipaddress
import json
import math
import secrets
import select
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hfstack.core.config import ConfigError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")  # bound to every interface: not a name a Host header carries
LOG_CHARS = 120  # how much of a client-sent value a log line quotes


class Refused(Exception):
    """A request the page will not serve: the HTTP status and the one-line reason sent back."""

    def __init__(self, status: int, message: str):
        message = message if len(message) <= 300 else message[:300] + "…"  # one readable line, never an echo
        super().__init__(message)
        self.status, self.message = status, message


def allowed_authorities(configured_host: str, port: int) -> frozenset[str]:
    """The `Host` values (host:port, lower case) that address this server; Origin must be http:// one of them."""
    names = set(LOOPBACK_NAMES)
    host = configured_host.strip().lower()
    if host in WILDCARD_ADDRESSES:
        names.add(socket.gethostname().lower())  # reachable from other machines by the machine's name
    else:
        names.add(f"[{host}]" if ":" in host else host)  # an IPv6 literal is bracketed in a Host header
    authorities = {f"{name}:{port}" for name in names}
    if port == 80:  # browsers leave the default port out of Host and Origin
        authorities |= names
    return frozenset(authorities)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # `1e400` parses as inf: refuse it rather than carry it on
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object; anything else (malformed, too deep, non-finite) → Refused(400)."""
    try:
        value = json.loads(body, parse_constant=reject_constant, parse_float=finite_float)
    except RecursionError:  # `[[[[…` nested past the interpreter's recursion limit
        raise Refused(400, "the JSON body is nested too deeply") from None
    except ValueError as e:  # malformed JSON, bad UTF-8, NaN/Infinity, 1e400, an integer of 4,300+ digits
        raise Refused(400, f"the body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise Refused(400, f"the body must be a JSON object, not {type(value).__name__}")
    return value


class GuardedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows which Host/Origin values address it and how big a body may be."""

    def __init__(self, host: str, port: int, handler: type[GuardedHandler], tag: str, max_body_bytes: int):
        try:
            super().__init__((host, port), handler)
        except OSError as e:  # the port is taken, the host name is unknown or not this machine's

            raise ConfigError(f"{tag}: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                              "--port (0 picks a free one) or --host") from None
        self.tag, self.max_body_bytes = tag, max_body_bytes
        self.allowed_authorities = allowed_authorities(host, self.server_address[1])
        warn_if_reachable(self.server_address[0], host, tag)

    def log(self, line: str) -> None:
        print(f"[{self.tag}] {line}", file=sys.stderr, flush=True)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):  # a client that left
            return
        super().handle_error(request, client_address)


def warn_if_reachable(bound_address: str, configured_host: str, tag: str) -> None:
    if is_loopback(bound_address):
        return
    print(f"[{tag}] WARNING: listening on {configured_host or bound_address!r}, not loopback: anyone who can reach "
          "this machine can use the page (there is no login). Requests must still name this server in their Host "
          "header; bind to 127.0.0.1 unless you mean it.", file=sys.stderr, flush=True)


class GuardedHandler(BaseHTTPRequestHandler):
    """Request handling with the checks above; subclasses write do_GET/do_POST with these helpers."""

    server: GuardedHTTPServer
    timeout = 60  # seconds a socket read or write may stall: a client that sends half a request is let go
    body_read, body = False, b""

    # ------------------------------------------------------------------------------ the checks

    def parse_request(self) -> bool:
        """The standard parse, then the Host check, for every method (a rebinding page may GET too)."""
        if not super().parse_request():
            return False
        self.body_read = False
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.server.allowed_authorities:
            self.refuse(Refused(421, f"this server does not answer for Host {host[:LOG_CHARS]!r}"))
            return False
        return True

    def read_json_object(self) -> dict:
        """The POST body as a JSON object, after the length, Origin and Content-Type checks (or Refused)."""
        self.read_body()
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in {f"http://{a}" for a in self.server.allowed_authorities}:
            raise Refused(403, f"cross-origin request from {origin[:LOG_CHARS]!r} refused")
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            # text/plain, form posts and the like are what a cross-site page can send without a preflight
            raise Refused(415, f"expected Content-Type application/json, got {kind[:LOG_CHARS]!r}")
        return parse_json_object(self.body)

    def read_body(self) -> bytes:
        """Exactly Content-Length bytes, never more than the cap (the body is read before any refusal so
        the connection closes cleanly instead of being reset with unread data)."""
        if self.body_read:
            return self.body
        self.body_read, self.body = True, b""
        if self.headers.get("Transfer-Encoding"):
            raise Refused(411, "send the body with a Content-Length, not a Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise Refused(411, "a POST needs a Content-Length")
        declared = lengths[0].strip()
        if len(lengths) > 1 or not (declared.isascii() and declared.isdigit()):
            raise Refused(400, f"invalid Content-Length {', '.join(lengths)[:40]!r}")
        length = int(declared)
        if length > self.server.max_body_bytes:
            raise Refused(413, f"body of {length} bytes is over the {self.server.max_body_bytes}-byte limit")
        self.body = self.rfile.read(length)
        if len(self.body) < length:
            raise Refused(400, f"body cut short: {len(self.body)} of {length} bytes")
        return self.body

    def refuse(self, refusal: Refused) -> None:
        """Log the refusal, answer it in one JSON line, and close the connection."""
        self.server.log(f"refused {self.command} {self.path[:LOG_CHARS]!r} ({refusal.status}): {refusal.message}")
        if not self.body_read and refusal.status not in (411, 413):
            try:  # a small body left unread would turn our close into a reset that can eat the answer
                self.read_body()
            except (Refused, OSError):
                pass
        self.send_json(refusal.status, self.error_body(refusal), close=True)

    def error_body(self, refusal: Refused) -> dict:
        """What a refusal answers: `{"error": "..."}`; a handler speaking another protocol overrides it."""
        return {"error": refusal.message}

    def client_gone(self) -> bool:
        """Whether the client has closed its end (its socket reads as end-of-file), without blocking."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------------------------ the answers

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")  # a JSON answer is never run as a script
        self.send_header("X-Frame-Options", "DENY")  # no clickjacking through a frame on another site
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def send_json(self, status: int, value, close: bool = False) -> None:
        data = (json.dumps(value) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_page(self, page: str) -> None:
        """The HTML page, its inline <script> and <style> allowed by a fresh nonce and nothing else."""
        nonce = secrets.token_urlsafe(16)
        data = page.replace("<script>", f'<script nonce="{nonce}">').replace("<style>", f'<style nonce="{nonce}">')
        data = data.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", f"default-src 'none'; script-src 'nonce-{nonce}'; "
                         f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; base-uri 'none'; "
                         "form-action 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (404, 501, a malformed request line) as JSON too, not an HTML page."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.send_json(code, self.error_body(Refused(code, message or phrase)), close=True)

    def log_message(self, *args) -> None:  # keep the terminal for progress lines and refusals
        pass


def serve_until_interrupted(server: ThreadingHTTPServer, tag: str, banner: str) -> None:
    """Print where the page is, serve until Ctrl-C, then close the socket (the chat and ranking pages)."""
    print(f"[{tag}] {banner}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\n[{tag}] stopped", flush=True)
    finally:
        server.server_close()


def page(name: str) -> str:
    """One of the web pages shipped as package data next to this module (chat.html, rank.html)."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")
