"""A LOCAL STAND-IN for the Hugging Face Hub, used only by the tests.

This is not the Hub and not a mirror of it. No self-hostable server implements the Hub's upload API, so
the tests run genbackbones' `push`/`pull`/`list`/`info` end to end against this small loopback HTTP
server (127.0.0.1, a free port). It speaks the subset of the Hub's HTTP API that huggingface_hub 2.x
calls for model repos, with the headers and JSON shapes that client expects:

    POST /api/repos/create                              create a model repo (409 if it exists)
    POST /api/validate-yaml                             check a README's metadata (model-index, licence)
    POST /api/models/{repo}/preupload/{rev}             upload mode per file: "regular" or "lfs"
    POST /{repo}.git/info/lfs/objects/batch             LFS upload instructions (none if already stored)
    PUT  /_lfs/{repo}/{oid}                             the LFS upload itself (checked against its sha256)
    POST /_lfs-verify/{repo}                            LFS verify step
    POST /api/models/{repo}/commit/{rev}                NDJSON commit: base64 files and LFS pointers
    POST /api/models/{repo}/branch/{branch}             create a branch from main
    GET  /api/models/{repo}[/revision/{rev}]            model info: sha, siblings, cardData
    GET  /api/models/{repo}/tree/{rev}[/{path}]         file listing
    GET  /api/models?author=ORG                         list models
    GET  /api/whoami-v2                                 who the token belongs to
    HEAD/GET /{repo}/resolve/{rev}/{path}               download, with ETag, X-Repo-Commit, Content-Length

Everything lives in memory. A new repo gets an initial commit with `.gitattributes`, as on the Hub.
Every request is recorded (method, path, route, whether it carried the expected token; never the token
itself), so a test can assert that a dry run sent nothing. `drop_next(route)` makes the server read the
next such request and close the connection without answering: a network failure in the middle of a push.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".npz", ".pkl")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores large files in LFS whatever their type
KNOWN_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
                  "cc-by-sa-4.0", "openrail", "other"}
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One file's content as the Hub stores it: inline in git, or in LFS behind a pointer."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def git_oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer file for LFS files."""
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    route: str
    authorized: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def card_metadata(readme: bytes) -> dict:
    match = FRONT_MATTER.match(readme.decode("utf-8", errors="replace"))
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else {}


class HubState:
    """The repos, their commits and LFS objects, and the request log."""

    def __init__(self, token: str, user: str = "tester"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._drops: dict[str, int] = {}
        self._counter = 0

    # -- used by tests ---------------------------------------------------------
    def drop_next(self, route: str, times: int = 1) -> None:
        """Close the connection without answering the next `times` requests of this route."""
        with self.lock:
            self._drops[route] = self._drops.get(route, 0) + times

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            return {path: blob.data for path, blob in commit.files.items()}

    def routes(self) -> list[str]:
        return [r.route for r in self.requests]

    # -- used by the handler ---------------------------------------------------
    def take_drop(self, route: str) -> bool:
        with self.lock:
            if self._drops.get(route, 0) > 0:
                self._drops[route] -= 1
                return True
            return False

    def create_repo(self, repo_id: str, private: bool) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(repo_id, private, _now())
            self.repos[repo_id] = repo
            attributes = Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
            self._add_commit(repo, "main", {".gitattributes": attributes}, "initial commit")
            return True

    def commit(self, repo: Repo, branch: str, changes: dict[str, Blob | None], message: str) -> Commit:
        with self.lock:
            files = dict(repo.resolve(branch).files)
            for path, blob in changes.items():
                if blob is None:
                    files = {p: b for p, b in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
                else:
                    files[path] = blob
            return self._add_commit(repo, branch, files, message)

    def _add_commit(self, repo: Repo, branch: str, files: dict[str, Blob], message: str) -> Commit:
        self._counter += 1
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{message}\n{self._counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].git_oid}\n".encode())
        commit = Commit(digest.hexdigest(), files, message, _now())
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit


class HubHandler(BaseHTTPRequestHandler):
    """Routes one request; HTTP/1.0, so every response ends with the connection closed."""

    server_version = "hub-stand-in/1"
    state: HubState  # set on the subclass made by HubServer

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # -- plumbing -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.state.token}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))  # a HEAD answer states the size it would send
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _repo(self, org: str, name: str, write: bool, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(f"{org}/{name}")
        if write and not self._authorized():
            self._error(401, "Invalid username or password.", head=head)
            return None
        if repo is None or (repo.private and not self._authorized()):
            self._error(401 if not self._authorized() else 404, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    def _revision(self, org: str, name: str, revision: str, write: bool,
                  head: bool = False) -> tuple[Repo, Commit] | None:
        """The repo and the commit a revision names, or None once a 401/404 has been sent."""
        repo = self._repo(org, name, write=write, head=head)
        if repo is None:
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            return None
        return repo, commit

    # -- dispatch -------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route, handler, args = self._route(method, parts)
        self.state.requests.append(Request(method, url.path, route, self._authorized()))
        body = self._body() if method in ("POST", "PUT") else b""
        if self.state.take_drop(route):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the connection die, no answer
            return
        if handler is None:
            self._error(404, f"no such endpoint: {method} {url.path}")
            return
        handler(*args, body=body, query=query, head=method == "HEAD")

    def _route(self, method: str, p: list[str]):
        n = len(p)
        if method == "POST" and p == ["api", "repos", "create"]:
            return "create", self.create_repo, ()
        if method == "POST" and p == ["api", "validate-yaml"]:
            return "validate-yaml", self.validate_yaml, ()
        if method == "GET" and p == ["api", "whoami-v2"]:
            return "whoami", self.whoami, ()
        if method == "GET" and p == ["api", "models"]:
            return "list", self.list_models, ()
        if n >= 4 and p[:2] == ["api", "models"]:
            org, name, rest = p[2], p[3], p[4:]
            if method == "GET" and not rest:
                return "info", self.model_info, (org, name, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return "info", self.model_info, (org, name, rest[1])
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return "tree", self.tree, (org, name, rest[1], "/".join(rest[2:]))
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return "preupload", self.preupload, (org, name, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return "commit", self.commit, (org, name, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return "branch", self.create_branch, (org, name, rest[1])
        if method == "POST" and n == 6 and p[1].endswith(".git") and p[2:] == ["info", "lfs", "objects", "batch"]:
            return "lfs-batch", self.lfs_batch, (p[0], p[1][:-4])
        if method == "PUT" and n == 4 and p[0] == "_lfs":
            return "lfs-upload", self.lfs_upload, (p[1], p[2], p[3])
        if method == "POST" and n == 3 and p[0] == "_lfs-verify":
            return "lfs-verify", self.lfs_verify, (p[1], p[2])
        if method in ("GET", "HEAD") and n >= 5 and p[2] == "resolve":
            return "resolve", self.resolve, (p[0], p[1], p[3], "/".join(p[4:]))
        return "unknown", None, ()

    # -- endpoints ------------------------------------------------------------
    def whoami(self, body, query, head):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        self._json({"type": "user", "name": self.state.user, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def create_repo(self, body, query, head):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") != "model":
            return self._error(400, "the stand-in only hosts model repos")
        org = payload.get("organization") or self.state.user
        repo_id = f"{org}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if not self.state.create_repo(repo_id, private):  # the Hub's 409 answer still carries the url
            return self._send(409, json.dumps({"error": "You already created this model repo",
                                               "url": f"{self.base_url}/{repo_id}"}).encode(),
                              {"Content-Type": "application/json",
                               "X-Error-Message": "You already created this model repo"})
        self._json({"url": f"{self.base_url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, body, query, head):
        content = json.loads(body or b"{}").get("content", "")
        errors, warnings = validate_metadata(content)
        self._json({"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]},
                   status=400 if errors else 200)

    def create_branch(self, org, name, branch, body, query, head):
        repo = self._repo(org, name, write=True)
        if repo is None:
            return
        if branch in repo.branches:
            return self._error(409, f"Branch {branch} already exists")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        commit = repo.resolve(start)
        if commit is None:
            return self._error(404, f"Invalid rev id: {start}", "RevisionNotFound")
        with self.state.lock:
            repo.branches[branch] = commit.sha
        self._json({})

    def preupload(self, org, name, revision, body, query, head):
        found = self._revision(org, name, revision, write=True)
        if found is None:
            return
        repo, commit = found
        files = []
        for item in json.loads(body)["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            existing = commit.files.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": commit.sha})

    def lfs_batch(self, org, name, body, query, head):
        repo = self._repo(org, name, write=True)
        if repo is None:
            return
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in repo.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.base_url}/_lfs/{org}/{name}/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.base_url}/_lfs-verify/{org}/{name}", "header": {}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, org, name, oid, body, query, head):
        repo = self.state.repos.get(f"{org}/{name}")  # a pre-signed URL: no token, as for S3
        if repo is None:
            return self._error(404, "no such upload")
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "uploaded content does not match its sha256")
        with self.state.lock:
            repo.lfs[oid] = body
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, org, name, body, query, head):
        repo = self._repo(org, name, write=True)
        if repo is None:
            return
        payload = json.loads(body)
        data = repo.lfs.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            return self._error(404, "LFS object not found")
        self._json({"success": True})

    def commit(self, org, name, revision, body, query, head):
        repo = self._repo(org, name, write=True)
        if repo is None:
            return
        if query.get("create_pr"):
            return self._error(400, "the stand-in does not do pull requests")
        if revision not in repo.branches:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header, changes = {}, {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, f"unsupported encoding for {value['path']}")
                changes[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = repo.lfs.get(value["oid"])
                if data is None or ("size" in value and len(data) != value["size"]):
                    return self._error(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                changes[value["path"]] = Blob(data, lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
            else:
                return self._error(400, f"unknown commit operation {key}")
        parent = header.get("parentCommit")
        if parent and not repo.branches[revision].startswith(parent):
            return self._error(412, "A commit has happened since. Please refresh and try again.")
        commit = self.state.commit(repo, revision, changes, header.get("summary") or "update")
        self._json({"success": True, "commitOid": commit.sha, "commitMessage": commit.message,
                    "commitUrl": f"{self.base_url}/{repo.repo_id}/commit/{commit.sha}", "hookOutput": "",
                    "pullRequestUrl": None})

    def model_info(self, org, name, revision, body, query, head):
        found = self._revision(org, name, revision, write=False)
        if found is None:
            return
        repo, commit = found
        self._json(self._model_json(repo, commit, blobs=query.get("blobs") in ("True", "true", "1")))

    def _model_json(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        readme = commit.files.get("README.md")
        meta = card_metadata(readme.data) if readme else {}
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=len(blob.data), blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.sha, "lastModified": commit.date,
            "createdAt": repo.created, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": list(meta.get("tags") or []),
            "pipeline_tag": meta.get("pipeline_tag"), "library_name": meta.get("library_name"),
            "cardData": meta, "siblings": siblings,
        }

    def list_models(self, body, query, head):
        author = query.get("author")
        models = []
        for repo_id, repo in sorted(self.state.repos.items()):
            if author and repo_id.split("/")[0] != author:
                continue
            if repo.private and not self._authorized():
                continue
            models.append(self._model_json(repo, repo.resolve("main"), blobs=False))
        self._json(models)

    def tree(self, org, name, revision, path, body, query, head):
        found = self._revision(org, name, revision, write=False)
        if found is None:
            return
        repo, commit = found
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        recursive = query.get("recursive") in ("True", "true", "1")
        entries: dict[str, dict] = {}
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                                "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                entry = {"type": "file", "path": file_path, "size": len(blob.data), "oid": blob.git_oid}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
                entries[file_path] = entry
        if prefix and not entries:
            return self._error(404, f"{path} does not exist", "EntryNotFound")
        self._json(list(entries.values()))

    def resolve(self, org, name, revision, path, body, query, head):
        found = self._revision(org, name, revision, write=False, head=head)
        if found is None:
            return
        repo, commit = found
        blob = commit.files.get(path)
        if blob is None:
            return self._error(404, "Entry not found", "EntryNotFound", head=head)
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.sha,
                   "Accept-Ranges": "none"}
        self._send(200, blob.data, headers, head=head)


def validate_metadata(readme: str) -> tuple[list[str], list[str]]:
    """What the Hub checks in a model card's YAML, in the stand-in's words: errors and warnings."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    match = FRONT_MATTER.match(readme)
    if not match:
        return [], ["Empty or missing yaml metadata in repo card"]
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return [f"metadata is not valid YAML: {err}"], []
    if not isinstance(meta, dict):
        return ["metadata must be a YAML mapping"], []
    errors = []
    license = meta.get("license")
    if license is not None and license not in KNOWN_LICENSES:
        errors.append(f'"license" must be a license identifier or "other", got {license!r}')
    if license == "other" and not meta.get("license_name"):
        errors.append('"license_name" is required when "license" is "other"')
    if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
        errors.append('"tags" must be a list of strings')
    for key in ("library_name", "pipeline_tag"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    base = meta.get("base_model")
    for item in ([base] if isinstance(base, str) else base or []):
        if not (isinstance(item, str) and item.count("/") == 1):
            errors.append(f'"base_model" must be Hub model ids (org/name), got {item!r}')
    if "model-index" in meta:
        try:
            model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError) as err:
            errors.append(f'"model-index" is invalid: {type(err).__name__} {err}')
    return errors, []


class HubServer:
    """Start/stop the stand-in on 127.0.0.1 with a free port; `url` is what HF_ENDPOINT should be."""

    def __init__(self, token: str):
        self.state = HubState(token)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
