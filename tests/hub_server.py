"""A loopback HTTP server that speaks enough of the Hub protocol for the real huggingface_hub,
transformers and datasets clients: whoami, repo create, preupload, NDJSON commits (inline and LFS
files), the LFS batch API and PUT, model/dataset info, tree listing, paths-info and resolve (with
X-Repo-Commit and X-Linked-Etag headers). Repositories live in memory: {repo: {path: bytes}}.

Set HF_ENDPOINT to its url (and HF_HUB_DISABLE_XET=1) before importing the clients."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # "model:user/name" → files
        self.commits: dict[str, str] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[str] = []

    def commit(self, key: str) -> str:
        digest = hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(d).hexdigest()) for p, d in
                                                self.repos[key].items())).encode()).hexdigest()
        self.commits[key] = digest
        return digest


def make_hub(state: HubState) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, status: int, body=b"", headers: dict | None = None, kind="application/json"):
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def repo_key(self, kind: str, repo: str) -> str:
            return f"{kind.rstrip('s') or 'model'}:{repo}"

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            path = unquote(urlparse(self.path).path)
            state.log.append(f"{self.command} {path}")
            if path == "/api/whoami-v2":
                return self.send(200, {"name": "tester", "type": "user", "orgs": [], "auth": {}})
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if match:
                key = self.repo_key(match.group(1), match.group(2))
                if key not in state.repos:
                    return self.send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepositoryNotFound"})
                return self.send(200, {"id": match.group(2), "sha": state.commits[key], "private": False,
                                       "siblings": [{"rfilename": p} for p in sorted(state.repos[key])]})
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path)
            if match:
                key = self.repo_key(match.group(1), match.group(2))
                prefix = match.group(4).strip("/")
                files = state.repos.get(key, {})
                entries, folders = [], set()
                for name, data in sorted(files.items()):
                    if prefix and not name.startswith(prefix + "/"):
                        continue
                    rest = name[len(prefix) + 1:] if prefix else name
                    if "/" in rest and "recursive=true" not in self.path.lower():
                        folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                        continue
                    entries.append({"type": "file", "path": name, "size": len(data),
                                    "oid": hashlib.sha1(data).hexdigest()})
                entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
                return self.send(200, entries)
            match = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if match:
                key = self.repo_key(match.group(1) or "models", match.group(2))
                data = state.repos.get(key, {}).get(match.group(4))
                if data is None:
                    return self.send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                return self.send(200, data, {"X-Repo-Commit": state.commits[key], "ETag": etag,
                                             "X-Linked-Etag": etag, "X-Linked-Size": str(len(data))},
                                 kind="application/octet-stream")
            self.send(404, {"error": f"no route for {path}"})

        def do_PUT(self):  # noqa: N802 - LFS upload
            path = urlparse(self.path).path
            state.log.append(f"PUT {path}")
            state.lfs[path.rsplit("/", 1)[-1]] = self.body()
            self.send(200, {})

        def do_POST(self):  # noqa: N802
            path = unquote(urlparse(self.path).path)
            state.log.append(f"POST {path}")
            body = self.body()
            if path == "/api/validate-yaml":  # model-card metadata check before a README is committed
                return self.send(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                request = json.loads(body)
                repo = f"{request.get('organization') or 'tester'}/{request['name']}"
                key = self.repo_key((request.get("type") or "model") + "s", repo)
                url = f"http://{self.headers['Host']}/{'datasets/' if key.startswith('dataset:') else ''}{repo}"
                if key in state.repos:
                    return self.send(409, {"error": "You already created this repo", "url": url})
                state.repos[key] = {}
                state.commit(key)
                return self.send(200, {"url": url, "name": repo})
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/([^/]+)", path)
            if match:
                files = json.loads(body)["files"]
                return self.send(200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["size"] > 1000 else
                                                  "regular", "shouldIgnore": False} for f in files]})
            match = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
            if match:
                objects = json.loads(body)["objects"]
                base = f"http://{self.headers['Host']}/lfs-upload"
                return self.send(200, {"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], "authenticated": True,
                     "actions": {"upload": {"href": f"{base}/{o['oid']}"}}} for o in objects]},
                    kind="application/vnd.git-lfs+json")
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/([^/]+)", path)
            if match:
                key = self.repo_key(match.group(1), match.group(2))
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        state.repos[key][value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        state.repos[key][value["path"]] = state.lfs[value["oid"]]
                    elif item["key"] == "deletedFile":
                        state.repos[key].pop(value["path"], None)
                oid = state.commit(key)
                kind = "datasets/" if match.group(1) == "datasets" else ""
                return self.send(200, {"commitUrl": f"http://{self.headers['Host']}/{kind}{match.group(2)}/commit/{oid}",
                                       "commitOid": oid})
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", path)
            if match:
                key = self.repo_key(match.group(1), match.group(2))
                from urllib.parse import parse_qs

                wanted = parse_qs(body.decode()).get("paths") or json.loads(body or b"{}").get("paths", [])
                files = state.repos.get(key, {})
                return self.send(200, [{"type": "file", "path": p, "size": len(files[p]),
                                        "oid": hashlib.sha1(files[p]).hexdigest()} for p in wanted if p in files])
            self.send(404, {"error": f"no route for {path}"})

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def start_hub() -> tuple[ThreadingHTTPServer, HubState]:
    state = HubState()
    server = make_hub(state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
