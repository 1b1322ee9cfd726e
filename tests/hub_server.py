"""A loopback HTTP server that speaks enough of the Hub protocol for the real huggingface_hub,
transformers and datasets clients: whoami, repo create, preupload, NDJSON commits (inline and LFS
files), the LFS batch API and PUT, model/dataset info (per revision, with `blobs=true` sizes and the
README's metadata as cardData), refs, commits, tree listing (recursive or not), paths-info, and resolve
(with X-Repo-Commit, ETag and X-Linked-Etag headers, and byte ranges for streaming). Repositories live
in memory: {"model:user/name" | "dataset:user/name": {path: bytes}}, with every commit's files kept so a
commit sha works as a revision. A missing repo answers 404 RepoNotFound (RepositoryNotFoundError), an
unknown revision RevisionNotFound, a missing file or folder EntryNotFound, as the Hub does.

Set HF_ENDPOINT to its url (and HF_HUB_DISABLE_XET=1) before importing the clients. tests/foreign.py
publishes ready-made repos straight into a HubState (`publish`)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

DATE = "2024-01-01T00:00:00.000Z"  # every timestamp the server reports
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".parquet", ".arrow", ".gguf", ".h5", ".msgpack",
                ".onnx", ".model", ".zip", ".gz", ".tar", ".png", ".jpg")  # as the Hub's default .gitattributes


def git_blob_sha1(data: bytes) -> str:
    """A file's git object id, what the Hub reports as `oid`/`blobId` and as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 10 * 1024 * 1024


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # "model:user/name" → files (the head of main)
        self.commits: dict[str, str] = {}  # → the head commit sha of main
        self.history: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # → [(sha, files)], oldest first
        self.lfs: dict[str, bytes] = {}
        self.log: list[str] = []
        self.validated: list[tuple[str, str]] = []  # (repoType, content) of each card sent to /api/validate-yaml

    def commit(self, key: str) -> str:
        """Record the files of `key` as a new commit of main (the same files give the same sha)."""
        digest = hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(d).hexdigest()) for p, d in
                                                self.repos[key].items())).encode()).hexdigest()
        self.commits[key] = digest
        history = self.history.setdefault(key, [])
        if not history or history[-1][0] != digest:
            history.append((digest, dict(self.repos[key])))
        return digest

    def at(self, key: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(sha, files) of `key` at a branch ("main") or a commit sha (full or at least 7 characters), else None."""
        if revision == "main":
            return self.commits[key], self.repos[key]
        for sha, files in reversed(self.history.get(key, [])):
            if len(revision) >= 7 and sha.startswith(revision):
                return sha, files
        return None


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

        def fail(self, status: int, code: str, message: str):
            """An error the clients map to their exceptions through X-Error-Code (hf_raise_for_status)."""
            return self.send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def repo_key(self, kind: str, repo: str) -> str:
            return f"{kind.rstrip('s') or 'model'}:{repo}"

        def lookup(self, kind: str, repo: str, revision: str | None = "main"):
            """(key, sha, files) of a repo at a revision; None after answering 404 when either is missing."""
            key = self.repo_key(kind, repo)
            if key not in state.repos:
                self.fail(404, "RepoNotFound", "Repository not found")
                return None
            found = state.at(key, revision or "main")
            if found is None:
                self.fail(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return key, *found

        def entry(self, path: str, data: bytes) -> dict:
            item = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if is_lfs(path, data):
                item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return item

        def folder_entry(self, path: str, files: dict[str, bytes]) -> dict:
            inside = sorted((p, git_blob_sha1(d)) for p, d in files.items() if p.startswith(path + "/"))
            return {"type": "directory", "path": path, "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}

        def repo_info(self, kind: str, repo: str, sha: str, files: dict[str, bytes], blobs: bool) -> dict:
            siblings = []
            for name, data in sorted(files.items()):
                sibling = {"rfilename": name}
                if blobs:
                    sibling |= {"size": len(data), "blobId": git_blob_sha1(data)}
                    if is_lfs(name, data):
                        sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                          "pointerSize": 134}
                siblings.append(sibling)
            card = card_data(files.get("README.md", b""))
            info = {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
                    "sha": sha, "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                    "lastModified": DATE, "createdAt": DATE, "tags": list(card.get("tags") or []),
                    "cardData": card, "siblings": siblings,
                    "usedStorage": sum(len(d) for d in files.values())}
            if kind == "models":
                info |= {"modelId": repo, "library_name": card.get("library_name"),
                         "pipeline_tag": card.get("pipeline_tag")}
                config = files.get("config.json")
                if config:
                    try:
                        parsed = json.loads(config)
                        info["config"] = {k: parsed[k] for k in ("architectures", "model_type") if k in parsed}
                    except ValueError:
                        pass
            return info

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            raw, query = url.path, parse_qs(url.query)
            path = unquote(raw)
            state.log.append(f"{self.command} {path}")
            if path == "/api/whoami-v2":
                return self.send(200, {"name": "tester", "type": "user", "orgs": [], "auth": {}})
            # revisions and paths arrive %-quoted (a branch "refs/convert/parquet" is one segment): match raw
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?/?", raw)
            if match:
                found = self.lookup(match.group(1), unquote(match.group(2)), unquote(match.group(3) or "main"))
                if found:
                    blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
                    return self.send(200, self.repo_info(match.group(1), unquote(match.group(2)), found[1],
                                                         found[2], blobs))
                return None
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/refs", raw)
            if match:
                found = self.lookup(match.group(1), unquote(match.group(2)))
                if found:
                    main = {"name": "main", "ref": "refs/heads/main", "targetCommit": found[1]}
                    return self.send(200, {"branches": [main], "converts": [], "tags": [], "pullRequests": []})
                return None
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commits/([^/]+)", raw)
            if match:
                found = self.lookup(match.group(1), unquote(match.group(2)), unquote(match.group(3)))
                if found:
                    shas = [sha for sha, _ in state.history[found[0]]]
                    shas = shas[:shas.index(found[1]) + 1][::-1]  # newest first, from the revision asked
                    return self.send(200, [{"id": sha, "title": f"commit {len(shas) - i}", "message": "",
                                            "authors": [{"user": "tester"}], "date": DATE}
                                           for i, sha in enumerate(shas)])
                return None
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", raw)
            if match:
                found = self.lookup(match.group(1), unquote(match.group(2)), unquote(match.group(3)))
                if not found:
                    return None
                files = found[2]
                prefix = unquote(match.group(4) or "").strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                if prefix and not any(name.startswith(prefix + "/") for name in files):
                    return self.fail(404, "EntryNotFound", f"{prefix} does not exist on {unquote(match.group(3))}")
                entries, folders = [], set()
                for name, data in sorted(files.items()):
                    if prefix and not name.startswith(prefix + "/"):
                        continue
                    rest = name[len(prefix) + 1:] if prefix else name
                    parts = rest.split("/")[:-1]
                    for depth in range(1, len(parts) + 1 if recursive else min(len(parts), 1) + 1):
                        folders.add("/".join(([prefix] if prefix else []) + parts[:depth]))
                    if "/" in rest and not recursive:
                        continue
                    entries.append(self.entry(name, data))
                entries += [self.folder_entry(f, files) for f in sorted(folders)]
                return self.send(200, entries)
            match = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", raw)
            if match:
                found = self.lookup(match.group(1) or "models", unquote(match.group(2)), unquote(match.group(3)))
                if not found:
                    return None
                name = unquote(match.group(4))
                data = found[2].get(name)
                if data is None:
                    return self.fail(404, "EntryNotFound", f"{name} does not exist on {unquote(match.group(3))}")
                return self.send_file(found[1], name, data)
            self.send(404, {"error": f"no route for {path}"})

        def send_file(self, sha: str, name: str, data: bytes):
            headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{git_blob_sha1(data)}"'}
            if is_lfs(name, data):
                headers |= {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))}
            wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
            if wanted and (wanted.group(1) or wanted.group(2)):
                if wanted.group(1):
                    start = int(wanted.group(1))
                    end = min(int(wanted.group(2)), len(data) - 1) if wanted.group(2) else len(data) - 1
                else:  # the last N bytes
                    start, end = max(len(data) - int(wanted.group(2)), 0), len(data) - 1
                if start >= len(data) or start > end:
                    return self.send(416, b"", headers | {"Content-Range": f"bytes */{len(data)}"},
                                     kind="application/octet-stream")
                return self.send(206, data[start:end + 1],
                                 headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                                 kind="application/octet-stream")
            return self.send(200, data, headers, kind="application/octet-stream")

        def do_PUT(self):  # noqa: N802 - LFS upload
            path = urlparse(self.path).path
            state.log.append(f"PUT {path}")
            state.lfs[path.rsplit("/", 1)[-1]] = self.body()
            self.send(200, {})

        def do_POST(self):  # noqa: N802
            raw = urlparse(self.path).path
            path = unquote(raw)
            state.log.append(f"POST {path}")
            body = self.body()
            if path == "/api/validate-yaml":  # a card's metadata check (RepoCard.validate): 400 with the errors
                request = json.loads(body or b"{}")
                state.validated.append((request.get("repoType"), request.get("content", "")))
                errors = card_errors(request.get("repoType"), request.get("content", ""))
                if errors:
                    return self.send(400, "\n".join(errors).encode(), kind="text/plain")
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
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/([^/]+)", raw)
            if match:
                if not self.lookup(match.group(1), unquote(match.group(2))):
                    return None
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
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/([^/]+)", raw)
            if match:
                repo = unquote(match.group(2))
                if not self.lookup(match.group(1), repo):
                    return None
                key = self.repo_key(match.group(1), repo)
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        state.repos[key][value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        state.repos[key][value["path"]] = state.lfs[value["oid"]]
                    elif item["key"] == "deletedFile":
                        state.repos[key].pop(value["path"], None)
                    elif item["key"] == "deletedFolder":
                        for name in [n for n in state.repos[key] if n.startswith(value["path"].rstrip("/") + "/")]:
                            del state.repos[key][name]
                oid = state.commit(key)
                kind = "datasets/" if match.group(1) == "datasets" else ""
                return self.send(200, {"commitUrl": f"http://{self.headers['Host']}/{kind}{repo}/commit/{oid}",
                                       "commitOid": oid})
            match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", raw)
            if match:
                found = self.lookup(match.group(1), unquote(match.group(2)), unquote(match.group(3)))
                if not found:
                    return None
                files = found[2]
                try:
                    wanted = parse_qs(body.decode()).get("paths") or json.loads(body or b"{}").get("paths", [])
                except ValueError:
                    wanted = []
                infos = []
                for name in wanted:
                    name = name.strip("/")
                    if name in files:
                        infos.append(self.entry(name, files[name]))
                    elif any(p.startswith(name + "/") for p in files):
                        infos.append(self.folder_entry(name, files))
                return self.send(200, infos)
            self.send(404, {"error": f"no route for {path}"})

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def card_data(readme: bytes) -> dict:
    """The YAML metadata block of a README.md, as the Hub reports it in `cardData` ({} without one)."""
    text = readme.decode("utf-8", "replace")
    if not text.startswith("---\n") or "\n---" not in text[3:]:
        return {}
    try:
        import yaml

        data = yaml.safe_load(text[4:text.index("\n---", 3)])
    except Exception:  # a broken card has no metadata, it is no server error
        return {}
    return data if isinstance(data, dict) else {}


PIPELINES = {"text-generation", "text-classification", "text2text-generation", "fill-mask", "feature-extraction",
             "token-classification", "question-answering", "summarization", "translation", "sentence-similarity"}


def card_errors(repo_type: str | None, content: str) -> list[str]:
    """What the Hub's metadata validation would refuse in a card, for the fields hfstack writes: a YAML
    block that is no mapping, a malformed license, pipeline_tag, tags, model-index or dataset configs."""
    if repo_type not in ("model", "dataset", "space"):
        return [f"unknown repoType {repo_type!r}"]
    if not content.startswith("---\n") or "\n---" not in content[3:]:
        return ["no YAML metadata block"]
    data, errors = card_data(content.encode()), []
    if not data:
        return ["the metadata block is not a YAML mapping"]
    strings = lambda v: isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa
    for key in ("license", "language", "tags", "datasets", "base_model", "task_categories", "size_categories"):
        if key in data and not strings(data[key]):
            errors.append(f"'{key}' must be a string or a list of strings")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", str(data.get("license", "other"))):
        errors.append(f"'license' {data['license']!r} is no license id")
    if "pipeline_tag" in data and data["pipeline_tag"] not in PIPELINES:
        errors.append(f"'pipeline_tag' {data['pipeline_tag']!r} is no pipeline")
    for entry in data.get("model-index") or []:
        named = isinstance(entry, dict) and isinstance(entry.get("name"), str)
        for result in (entry.get("results") or [None]) if named else [None]:
            ok = isinstance(result, dict) and isinstance((result.get("task") or {}).get("type"), str)
            ok = ok and all(isinstance((result.get("dataset") or {}).get(k), str) for k in ("type", "name"))
            metrics = result.get("metrics") if ok else None
            if not ok or not metrics or not all(isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(
                    m.get("value"), (int, float, str)) and not isinstance(m.get("value"), bool) for m in metrics):
                errors.append(f"'model-index': malformed result {result!r}")
    for config in data.get("configs") or []:
        files = config.get("data_files") if isinstance(config, dict) and config.get("config_name") else None
        if not isinstance(files, (str, list)) or isinstance(files, list) and not all(
                isinstance(f, dict) and {"split", "path"} <= set(f) for f in files):
            errors.append(f"'configs': malformed config {config!r}")
    return errors


def start_hub() -> tuple[ThreadingHTTPServer, HubState]:
    state = HubState()
    server = make_hub(state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
