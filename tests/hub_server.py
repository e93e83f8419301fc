"""A loopback stand-in for the Hugging Face Hub's HTTP API, for tests that push and pull without a network.

`HubServer` runs `http.server` in a thread on 127.0.0.1 (a free port) and keeps repositories in a temporary
directory: file contents are content-addressed blobs on disk, each repository is a list of commits (a commit is a
full snapshot `{path: file record}`). Point `huggingface_hub` at it with `HF_ENDPOINT=server.url` (and
`HF_HUB_DISABLE_XET=1`, so uploads take the HTTP path this double implements, and `HF_HUB_OFFLINE=0`).

What it implements, request by request, as huggingface_hub 2.4 sends them:

- `POST /api/repos/create` (`create_repo`): 401 without an `Authorization` header, 409 if the repo exists.
- `POST /api/validate-yaml` (checked before a `README.md` is committed): always valid.
- `POST /api/{type}s/{repo}/preupload/{rev}`: `uploadMode` `lfs` for binary or > 1 MB files, else `regular`;
  `oid` of the current file (git SHA-1 for regular files, SHA-256 for LFS) so unchanged files are skipped.
- `POST /{prefix}{repo}.git/info/lfs/objects/batch` (LFS batch, "basic" transfer): an upload action pointing to
  `PUT /_lfs/{sha256}` for each blob the server lacks; no `verify` action.
- `PUT /_lfs/{sha256}`: stores the body after checking its SHA-256.
- `POST /api/{type}s/{repo}/commit/{rev}` (NDJSON: header, `file` (base64), `lfsFile`, `deletedFile`,
  `deletedFolder`): appends a commit; answers `commitUrl` / `commitOid`.
- `GET /api/{type}s/{repo}[/revision/{rev}]` (`model_info` / `repo_info`): `id`, `sha`, `siblings`, `private`.
- `GET /api/{type}s/{repo}/tree/{rev}[/{path}]` (`list_repo_tree`, used by `snapshot_download`): one page.
- `HEAD` / `GET /{prefix}{repo}/resolve/{rev}/{path}` (`hf_hub_download`): `X-Repo-Commit`, `ETag`, and for LFS
  files `X-Linked-Etag` / `X-Linked-Size`; `Content-Length`; 404s carry the `X-Error-Code` the client maps to
  `RepositoryNotFoundError` / `RevisionNotFoundError` / `EntryNotFoundError`.

What it does not implement: branches other than `main` (and commit hashes), pull requests, Xet storage, multipart
LFS, copies, authentication beyond "some bearer token is present", pagination, `Range` requests, redirects to a
CDN, rate limits. Unknown routes answer 404 and are recorded in `server.unhandled`, so a test can assert the
client asked for nothing this double does not know.

Failure injection: `server.fail(method, path_regex, status)` makes every matching request answer `status` (a
Hub-like JSON error) until cleared with `server.clear_failures()`.

It is a test double at the network boundary, not part of the library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1 << 20  # files larger than this (or binary) go through LFS, as .gitattributes would send them
DEFAULT_NAMESPACE = "tester"
TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubServer:
    """A thread serving the Hub HTTP subset above; use as a context manager or call `start()` / `stop()`."""

    def __init__(self, root: str | Path | None = None):
        self._tmp = None if root is not None else tempfile.mkdtemp(prefix="hub-server-")
        self.root = Path(root if root is not None else self._tmp)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], dict] = {}  # (type, repo_id) -> {"private": bool, "commits": [...]}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._failures: list[tuple[str, re.Pattern, int]] = []
        self.lock = threading.RLock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- test helpers -----

    def fail(self, method: str, path_regex: str, status: int = 500) -> None:
        """Answer `status` to every `method` request whose path matches `path_regex` (until `clear_failures`)."""
        self._failures.append((method.upper(), re.compile(path_regex), status))

    def clear_failures(self) -> None:
        self._failures.clear()

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The content of every file of a repo at `revision` (a commit index like -2 also works)."""
        repo = self.repos[(repo_type, repo_id)]
        commit = repo["commits"][revision] if isinstance(revision, int) else self._resolve(repo, revision)
        return {path: self.read_blob(rec) for path, rec in commit["files"].items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        return list(self.repos[(repo_type, repo_id)]["commits"])

    def read_blob(self, record: dict) -> bytes:
        return (self.root / "blobs" / record["sha256"]).read_bytes()

    # ----- storage -----

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def _resolve(self, repo: dict, revision: str) -> dict | None:
        commits = repo["commits"]
        if revision == "main":
            return commits[-1]
        return next((c for c in commits if c["oid"] == revision), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-server-test-double"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    # ----- plumbing -----

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None, head=False):
        extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self._json(status, {"error": message}, extra, head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self._body() if method in ("POST", "PUT") else b""
        self.hub.requests.append((method, path))
        for fail_method, pattern, status in self.hub._failures:
            if fail_method == method and pattern.search(path):
                return self._error(status, f"Injected failure ({status}) for {method} {path}")
        for route_method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if route_method == method or (route_method == "GET" and method == "HEAD"):
                if match:
                    with self.hub.lock:
                        return handler(self, method, body, query, **match.groupdict())
        self.hub.unhandled.append((method, path))
        self._error(404, f"hub-server does not implement {method} {path}")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ----- repo lookup -----

    def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> dict | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound", head=head)
        return repo

    def _commit(self, repo: dict, revision: str, head: bool = False) -> dict | None:
        commit = self.hub._resolve(repo, revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return commit

    # ----- write API -----

    def create_repo(self, method, body, query):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or DEFAULT_NAMESPACE}/{payload['name']}"
        url = f"{self.hub.url}/{TYPE_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        initial = {"oid": hashlib.sha1(f"init {repo_type} {repo_id}".encode()).hexdigest(), "files": {}, "title": ""}
        self.hub.repos[(repo_type, repo_id)] = {"private": payload.get("visibility") == "private", "commits": [initial]}
        self._json(200, {"url": url, "name": repo_id})

    def validate_yaml(self, method, body, query):
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, method, body, query, type, repo_id, rev):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(type, repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] > LFS_THRESHOLD or b"\0" in sample
            current = commit["files"].get(f["path"])
            oid = None if current is None else (current["sha256"] if current["lfs"] else current["git_oid"])
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files, "commitOid": commit["oid"]})

    def lfs_batch(self, method, body, query, prefix, repo_id):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        if self._repo(repo_type, repo_id) is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.hub.root / "blobs" / obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, method, body, query, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, f"Uploaded content does not match sha256 {oid}")
        self.hub._store(body)
        self._send(200)

    def commit(self, method, body, query, type, repo_id, rev):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(type, repo_id)
        parent = repo and self._commit(repo, rev)
        if parent is None:
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != parent["oid"]:
            return self._error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent["files"])
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = {
                    "sha256": self.hub._store(data),
                    "size": len(data),
                    "lfs": False,
                    "git_oid": git_blob_sha1(data),
                }
            elif key == "lfsFile":
                if not (self.hub.root / "blobs" / value["oid"]).exists():
                    return self._error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                size = (self.hub.root / "blobs" / value["oid"]).stat().st_size
                pointer = lfs_pointer(value["oid"], size)
                files[value["path"]] = {
                    "sha256": value["oid"],
                    "size": size,
                    "lfs": True,
                    "git_oid": git_blob_sha1(pointer),
                    "pointer_size": len(pointer),
                }
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: r for p, r in files.items() if not p.startswith(prefix)}
        oid = hashlib.sha1(
            json.dumps(
                [parent["oid"], header.get("summary"), sorted((p, r["sha256"]) for p, r in files.items())]
            ).encode()
        ).hexdigest()
        repo["commits"].append({"oid": oid, "files": files, "title": header.get("summary", ""), "time": time.time()})
        url = f"{self.hub.url}/{TYPE_PREFIX[type]}{repo_id}/commit/{oid}"
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None})

    # ----- read API -----

    def repo_info(self, method, body, query, type, repo_id, rev="main"):
        repo = self._repo(type, repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        info = {
            "id": repo_id,
            "_id": repo_id,
            "sha": commit["oid"],
            "private": repo["private"],
            "siblings": [{"rfilename": p} for p in sorted(commit["files"])],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.get("time", 0))),
        }
        self._json(200, info)

    def tree(self, method, body, query, type, repo_id, rev, path=None):
        path = path or ""
        repo = self._repo(type, repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for file_path, rec in sorted(commit["files"].items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            if "/" in rest:
                parts = rest.split("/")
                for depth in range(1, len(parts) if recursive else 2):
                    folders.add(prefix + "/".join(parts[:depth]))
                if not recursive:
                    continue
            entry = {"type": "file", "path": file_path, "size": rec["size"], "oid": rec["git_oid"]}
            if rec["lfs"]:
                entry["lfs"] = {"oid": rec["sha256"], "size": rec["size"], "pointerSize": rec["pointer_size"]}
            entries.append(entry)
        if prefix and not entries and not folders:
            return self._error(404, f"{path} does not exist", "EntryNotFound")
        dirs = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in sorted(folders)]
        self._json(200, dirs + entries)

    def resolve(self, method, body, query, prefix, repo_id, rev, path):
        head = method == "HEAD"
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        repo = self._repo(repo_type, repo_id, head=head)
        commit = repo and self._commit(repo, rev, head=head)
        if commit is None:
            return
        rec = commit["files"].get(path)
        if rec is None:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit["oid"]}, head=head)
        data = self.hub.read_blob(rec)
        headers = {"X-Repo-Commit": commit["oid"], "Content-Type": "application/octet-stream"}
        if rec["lfs"]:
            headers.update(
                {"ETag": f'"{rec["sha256"]}"', "X-Linked-Etag": f'"{rec["sha256"]}"', "X-Linked-Size": rec["size"]}
            )
        else:
            headers["ETag"] = f'"{rec["git_oid"]}"'
        self._send(200, data, headers, head=head)


_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_TYPE = r"(?P<type>model|dataset|space)s"
_PREFIX = r"(?P<prefix>datasets/|spaces/)?"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), _Handler.create_repo),
    ("POST", re.compile(r"/api/validate-yaml"), _Handler.validate_yaml),
    ("POST", re.compile(rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)"), _Handler.preupload),
    ("POST", re.compile(rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)"), _Handler.commit),
    ("POST", re.compile(rf"/{_PREFIX}{_REPO}\.git/info/lfs/objects/batch"), _Handler.lfs_batch),
    ("PUT", re.compile(r"/_lfs/(?P<oid>[0-9a-f]{64})"), _Handler.lfs_put),
    ("GET", re.compile(rf"/api/{_TYPE}/{_REPO}"), _Handler.repo_info),
    ("GET", re.compile(rf"/api/{_TYPE}/{_REPO}/revision/(?P<rev>[^/]+)"), _Handler.repo_info),
    ("GET", re.compile(rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), _Handler.tree),
    ("GET", re.compile(rf"/{_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), _Handler.resolve),
]
