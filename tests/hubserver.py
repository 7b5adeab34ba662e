"""A Hugging Face Hub server on loopback: the smallest server that speaks the Hub's HTTP protocol as
`huggingface_hub` (1.17) uses it, so tests download and upload through the real client with `HF_ENDPOINT`
pointed here, and no internet.

No package on PyPI serves both directions (olah is a download-only mirror of a real hub; kohakuhub is not
published), hence this module. It implements what `snapshot_download`, `hf_hub_download`,
`transformers.from_pretrained`, `HfApi.create_repo / create_branch / upload_folder / create_commit / model_info /
list_repo_files / list_repo_tree / whoami` send, with the responses and headers those functions read
(huggingface_hub's file_download.py, _snapshot_download.py, hf_api.py, _commit_api.py, lfs.py, utils/_http.py):

  downloads   GET /api/models/{repo}[/revision/{rev}]   model info: sha, private, gated, siblings (?blobs=1: sizes, lfs)
              GET /api/models/{repo}/tree/{rev}[/{path}] the file tree (?recursive=true)
              GET /api/models/{repo}/refs                 branches
              HEAD|GET /{repo}/resolve/{rev}/{path}       regular files: 200, ETag (git blob sha1), X-Repo-Commit,
                                                          Content-Length; LFS files: 302 to a signed absolute blob
                                                          URL (the "CDN"), X-Linked-Etag (sha256), X-Linked-Size;
                                                          Range requests (resume) answered with 206
  uploads     POST /api/repos/create                      409 {"url"} when it exists (exist_ok reads it)
              POST /api/models/{repo}/branch/{branch}
              POST /api/validate-yaml                     the model card's front matter
              POST /api/models/{repo}/preupload/{rev}     uploadMode lfs|regular per file, the remote oid
              POST /{repo}.git/info/lfs/objects/batch     git-lfs batch API, basic transfer only: `xet` and
                                                          `multipart` are offered by the client and declined, so
                                                          huggingface_hub falls back to plain LFS (no Xet server)
              PUT  /lfs-upload/{id}                       the upload URL (unauthenticated, like a presigned URL;
                                                          size and sha256 checked)
              POST /{repo}.git/info/lfs/objects/verify
              POST /api/models/{repo}/commit/{rev}        the ndjson payload: header, file (base64), lfsFile (oid),
                                                          deletedFile, deletedFolder; parentCommit checked
  account     GET  /api/whoami-v2
  errors      X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo and X-Error-Message, the
              headers hf_raise_for_status maps to RepositoryNotFoundError, GatedRepoError, ...; an unknown token
              is refused with 401 "Invalid credentials in Authorization header" on every route, as the Hub does.

Repos live on disk under `root/repos/<namespace>/<name>/`: meta.json (private, gated, owner, granted users),
refs.json (branch -> commit), commits/<sha>.json (parents, title, the whole file table) and objects/<sha256>
(content-addressed blobs). Writes need `Authorization: Bearer <token>` with a write token of the namespace's
owner; private repos are visible to their owner only (404, as the Hub answers), gated ones serve files to users
they were granted to (401 without a token, 403 with another).

Every request is logged (`requests`, and `root/requests.jsonl`) without its token; the server looks for each
known token in every request line, header other than Authorization, and body (uploads included, as streamed) and
records where one appears in `leaks`, so a test can assert that a client sent its token nowhere else.

In a test: `with HubServer(tmp_path) as hub: hub.add_token(...); hub.serve_folder(...)` then HF_ENDPOINT=hub.url
(a thread on 127.0.0.1, port 0). From a shell: `python -m tests.hubserver ROOT --model REPO=FOLDER --token
USER:TOKEN` prints the URL and serves until killed.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# A new repo on the Hub starts with this .gitattributes (abridged): the patterns stored with LFS.
GITATTRIBUTES_LFS = ["*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib",
                     "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
                     "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
                     "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
                     "*.zst", "*tfevents*"]
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in GITATTRIBUTES_LFS)
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores bigger files with LFS whatever their name
UPLOAD_URL_TTL = 3600
INVALID_TOKEN = "Invalid credentials in Authorization header"
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int, sample: bytes = b"") -> bool:
    """Would the Hub store this file with LFS: a .gitattributes pattern, over 10 MB, or binary content."""
    name = path.rsplit("/", 1)[-1]
    return (any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in GITATTRIBUTES_LFS)
            or size > LFS_THRESHOLD or b"\0" in sample)


class HubError(Exception):
    """An HTTP error answer: status, the X-Error-Code the client maps, a message (X-Error-Message + JSON body)."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class Token:
    user: str
    role: str = "write"  # "read" or "write", as Hub access tokens


@dataclass
class Logged:
    """One request as the server saw it (no token: `user` names whose token it was, `auth` how it came)."""

    method: str
    path: str
    status: int = 0
    auth: str = "none"  # none | valid | invalid
    user: str | None = None
    headers: dict = field(default_factory=dict)


class Repo:
    """One model repo on disk."""

    def __init__(self, folder: Path, repo_id: str):
        self.folder, self.repo_id = folder, repo_id

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    def refs(self) -> dict[str, str]:
        return json.loads((self.folder / "refs.json").read_text())

    def commit(self, sha: str) -> dict:
        return json.loads((self.folder / "commits" / f"{sha}.json").read_text())

    def resolve(self, rev: str) -> str:
        """Commit sha of a branch name or a full commit id; RevisionNotFound otherwise."""
        refs = self.refs()
        if rev in refs:
            return refs[rev]
        if SHA1_RE.match(rev) and (self.folder / "commits" / f"{rev}.json").is_file():
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def files(self, sha: str) -> dict[str, dict]:
        return self.commit(sha)["files"]

    def object_path(self, sha256: str) -> Path:
        return self.folder / "objects" / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        p = self.object_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)


class HubServer:
    """The loopback Hub (see the module docstring). Use as a context manager, or start()/stop()."""

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(exist_ok=True)
        self.tokens: dict[str, Token] = {}
        self.requests: list[Logged] = []
        self.leaks: list[str] = []
        self._secret = secrets.token_bytes(32)  # signs blob URLs (the CDN) and upload URLs
        self._uploads: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._httpd = http.server.ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ set-up
    def add_token(self, token: str, user: str, role: str = "write") -> None:
        """Accept `token` as `user`'s access token (role read or write)."""
        self.tokens[token] = Token(user, role)

    def create_repo(self, repo_id: str, owner: str | None = None, private: bool = False, gated: bool = False,
                    granted: list[str] | None = None) -> Repo:
        """A new repo with the Hub's first commit (.gitattributes); owner defaults to the namespace."""
        ns, name = _split_repo(repo_id)
        folder = self.root / "repos" / ns / name
        with self._lock:
            if folder.exists():
                raise HubError(409, "You already created this model repo")
            tmp = Path(tempfile.mkdtemp(dir=self.root / "repos", prefix=".new-"))
            (tmp / "commits").mkdir()
            (tmp / "objects").mkdir()
            (tmp / "meta.json").write_text(json.dumps({"id": repo_id, "owner": owner or ns, "private": private,
                                                       "gated": gated, "granted": granted or [],
                                                       "created": _now()}))
            (tmp / "refs.json").write_text("{}")
            repo = Repo(tmp, repo_id)
            sha = self._write_commit(repo, None, "initial commit", {}, {".gitattributes": GITATTRIBUTES.encode()})
            (tmp / "refs.json").write_text(json.dumps({"main": sha}))
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, folder)
        return Repo(folder, repo_id)

    def serve_folder(self, repo_id: str, folder: str | os.PathLike, *, private: bool = False, gated: bool = False,
                     granted: list[str] | None = None, owner: str | None = None) -> str:
        """Publish a local model folder as `repo_id` (one commit on main, blobs hard-linked when possible);
        returns the commit sha."""
        repo = self.repo(repo_id) or self.create_repo(repo_id, owner, private, gated, granted)
        files = {}
        for p in sorted(Path(folder).rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(folder).as_posix()
            sha256 = _sha256_file(p)
            dest = repo.object_path(sha256)
            if not dest.exists():
                try:
                    os.link(p, dest)
                except OSError:
                    shutil.copyfile(p, dest)
            with open(p, "rb") as fh:
                sample = fh.read(512)
            files[rel] = _entry(repo, sha256, p.stat().st_size, is_lfs(rel, p.stat().st_size, sample))
        with self._lock:
            head = repo.refs()["main"]
            table = {**repo.files(head), **files}
            sha = self._write_commit(repo, head, f"Upload {Path(folder).name}", table, {})
            self._set_ref(repo, "main", sha)
        return sha

    def repo(self, repo_id: str) -> Repo | None:
        try:
            ns, name = _split_repo(repo_id)
        except HubError:
            return None
        folder = self.root / "repos" / ns / name
        return Repo(folder, repo_id) if (folder / "meta.json").is_file() else None

    def read_files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of a revision, as stored (for tests; through the protocol, use huggingface_hub)."""
        repo = self.repo(repo_id)
        sha = repo.resolve(revision)
        return {p: repo.object_path(e["sha256"]).read_bytes() for p, e in repo.files(sha).items()}

    def commits(self, repo_id: str, branch: str = "main") -> list[dict]:
        """The commits of a branch, newest first."""
        repo = self.repo(repo_id)
        out, sha = [], repo.refs().get(branch)
        while sha:
            c = repo.commit(sha)
            out.append(c)
            sha = (c.get("parents") or [None])[0]
        return out

    # ------------------------------------------------------------------------------------------ storage
    def _write_commit(self, repo: Repo, parent: str | None, title: str, table: dict, new_files: dict[str, bytes],
                      description: str = "", author: str | None = None) -> str:
        table = dict(table)
        for path, data in new_files.items():  # regular files: store the bytes
            sha256 = hashlib.sha256(data).hexdigest()
            dest = repo.object_path(sha256)
            if not dest.exists():
                _write_atomic(dest, data)
            table[path] = _entry(repo, sha256, len(data), False, data)
        body = {"parents": [parent] if parent else [], "title": title, "message": description,
                "author": author, "date": _now(), "files": dict(sorted(table.items()))}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode() + secrets.token_bytes(8)).hexdigest()
        _write_atomic(repo.folder / "commits" / f"{sha}.json", json.dumps({"id": sha, **body}, indent=1).encode())
        return sha

    def _set_ref(self, repo: Repo, branch: str, sha: str) -> None:
        refs = repo.refs()
        refs[branch] = sha
        _write_atomic(repo.folder / "refs.json", json.dumps(refs).encode())

    # ------------------------------------------------------------------------------------------ signing
    def _sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def blob_url(self, repo_id: str, sha256: str) -> str:
        expires = str(int(time.time()) + UPLOAD_URL_TTL)
        return (f"{self.url}/lfs-objects/{repo_id}/{sha256}?Expires={expires}"
                f"&Signature={self._sign(repo_id, sha256, expires)}")

    # ------------------------------------------------------------------------------------------ leak check
    def scan(self, where: str, data: bytes | str) -> None:
        """Record `where` if any known token appears in `data`."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        for tok in self.tokens:
            if tok.encode() in data or quote(tok).encode() in data:
                with self._lock:
                    self.leaks.append(f"{where}: token of {self.tokens[tok].user}")

    def log(self, entry: Logged) -> None:
        with self._lock:
            self.requests.append(entry)
            with open(self.root / "requests.jsonl", "a") as fh:
                fh.write(json.dumps(entry.__dict__) + "\n")


# ---------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _split_repo(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", p) for p in parts) \
            or "--" in repo_id or ".." in repo_id:
        raise HubError(400, f"Invalid repo name {repo_id!r}: namespace/name, letters, digits, '-', '_', '.'")
    return parts[0], parts[1]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _entry(repo: Repo, sha256: str, size: int, lfs: bool, data: bytes | None = None) -> dict:
    """A file-table entry: where its bytes are (sha256), its size, whether LFS, and its git oid (the Hub's
    blobId: the oid of the LFS pointer for LFS files, of the content otherwise)."""
    if lfs:
        pointer = lfs_pointer(sha256, size)
        return {"sha256": sha256, "size": size, "lfs": True, "oid": git_blob_oid(pointer),
                "pointer_size": len(pointer)}
    if data is None:
        data = repo.object_path(sha256).read_bytes()
    return {"sha256": sha256, "size": size, "lfs": False, "oid": git_blob_oid(data)}


def _sibling(path: str, e: dict, blobs: bool) -> dict:
    out = {"rfilename": path}
    if blobs:
        out.update(size=e["size"], blobId=e["oid"])
        if e["lfs"]:
            out["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": e["pointer_size"]}
    return out


def _tree_entry(path: str, e: dict) -> dict:
    out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["lfs"]:
        out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
    return out


# ---------------------------------------------------------------------------------------------- HTTP
ROUTES = [  # (method(s), pattern, handler name); repo ids are namespace/name
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/refs", "refs"),
    ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)", "branch"),
    ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", r"/lfs-upload/(?P<upload>[A-Za-z0-9_-]+)", "lfs_put"),
    ("GET HEAD", r"/lfs-objects/(?P<repo>[^/]+/[^/]+)/(?P<sha>[0-9a-f]{64})", "blob"),
    ("GET HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
ROUTES = [(m.split(), re.compile(p + "$"), h) for m, p, h in ROUTES]


def _handler_for(hub: HubServer):
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, fmt, *args):  # the request log is `hub.requests`, not stderr
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---------------------------------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        entry = Logged(method, self.path, headers=headers)
        hub.scan(f"{method} {self.path} (request line)", unquote(self.path))
        for k, v in headers.items():
            hub.scan(f"{method} {self.path} (header {k})", v)
        self._body_read = False
        self.entry = entry
        try:
            self.user = self._authenticate(entry)
            for methods, pattern, name in ROUTES:
                m = pattern.match(path)
                if m and method in methods:
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    getattr(self, f"h_{name}")(**args)
                    break
            else:
                raise HubError(404, f"Sorry, we can't find the page you are looking for ({method} {path})")
        except HubError as err:
            self._drain()
            body = json.dumps({"error": err.message}).encode()
            extra = {"X-Error-Message": err.message}
            if err.code:
                extra["X-Error-Code"] = err.code
            if err.commit:
                extra["X-Repo-Commit"] = err.commit
            self._send(err.status, body, "application/json", extra)
        except (BrokenPipeError, ConnectionResetError):
            entry.status = entry.status or 499
        finally:
            hub.log(entry)

    def _authenticate(self, entry: Logged) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip() in self.hub.tokens:
            tok = self.hub.tokens[value.strip()]
            entry.auth, entry.user = "valid", tok.user
            self.role = tok.role
            return tok.user
        entry.auth = "invalid"
        raise HubError(401, INVALID_TOKEN)

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json", headers: dict | None = None,
              length: int | None = None, stream: Path | None = None, offset: int = 0) -> None:
        self.entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if stream is not None:
            with open(stream, "rb") as fh:
                fh.seek(offset)
                left = length
                while left > 0:
                    block = fh.read(min(1 << 20, left))
                    if not block:
                        break
                    self.wfile.write(block)
                    left -= len(block)
        else:
            self.wfile.write(body)

    def _json(self, data, status: int = 200, ctype: str = "application/json", headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), ctype, headers)

    def _chunks(self):
        """The request body, in blocks (Content-Length or chunked transfer encoding), each scanned for tokens."""
        self._body_read = True
        tail = b""
        where = f"{self.command} {self.path} (body)"
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                block = self.rfile.read(size)
                self.rfile.readline()
                self.hub.scan(where, tail + block)
                tail = block[-256:]
                yield block
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                block = self.rfile.read(min(1 << 20, left))
                if not block:
                    break
                left -= len(block)
                self.hub.scan(where, tail + block)
                tail = block[-256:]
                yield block

    def _body(self) -> bytes:
        return b"".join(self._chunks())

    def _drain(self) -> None:
        if not self._body_read:
            for _ in self._chunks():
                pass

    def _json_body(self):
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON body") from None

    # ---------------------------------------------------------------------------------------- access
    def _repo(self, repo_id: str, write: bool = False, files: bool = False) -> Repo:
        """The repo if this request may see it (and write it, or read its files when gated)."""
        repo = self.hub.repo(repo_id)
        meta = repo.meta if repo else None
        if repo is None or (meta["private"] and self.user != meta["owner"]):
            # The Hub hides private repos: the same answer as a missing one (401 without a token).
            raise HubError(401 if self.user is None else 404, "Repository not found", "RepoNotFound")
        if write:
            self._need_write(meta["owner"])
        if files and meta["gated"] and self.user != meta["owner"] and self.user not in meta["granted"]:
            if self.user is None:
                raise HubError(401, f"You must be authenticated to access it. Access to model {repo_id} is "
                                    "restricted.", "GatedRepo")
            raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                                f"Visit {self.hub.url}/{repo_id} to ask for access.", "GatedRepo")
        return repo

    def _need_write(self, owner: str) -> None:
        if self.user is None:
            raise HubError(401, "You must be authenticated to do this: send a write token "
                                "(Authorization: Bearer ...)")
        if self.role != "write":
            raise HubError(403, "This action requires a token with write access (this one is read-only)")
        if self.user != owner:
            raise HubError(403, f"You don't have the rights to write to the namespace {owner!r}")

    # ---------------------------------------------------------------------------------------- account
    def h_whoami(self):
        if self.user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        self._json({"type": "user", "id": hashlib.sha1(self.user.encode()).hexdigest()[:24], "name": self.user,
                    "fullname": self.user, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": self.role}}})

    # ---------------------------------------------------------------------------------------- downloads
    def h_info(self, repo, rev="main"):
        r = self._repo(repo)
        sha = r.resolve(rev)
        commit, meta = r.commit(sha), r.meta
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        files = commit["files"]
        card = {}
        if "README.md" in files:
            text = r.object_path(files["README.md"]["sha256"]).read_text(errors="replace")
            if text.startswith("---"):
                try:
                    card = yaml.safe_load(text.split("---", 2)[1]) or {}
                except yaml.YAMLError:
                    card = {}
        ns = repo.split("/")[0]
        self._json({"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                    "author": ns, "sha": sha, "lastModified": commit["date"], "createdAt": meta["created"],
                    "private": meta["private"], "gated": "auto" if meta["gated"] else False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": card.get("tags") or [],
                    "library_name": card.get("library_name"), "cardData": card or None,
                    "siblings": [_sibling(p, e, blobs) for p, e in files.items()]})

    def h_tree(self, repo, rev, path=""):
        r = self._repo(repo)
        files = r.files(r.resolve(rev))
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        out, folders = [], set()
        for p, e in files.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/", 1)[0])
                continue
            if recursive:  # the folders on the way, as the Hub lists them
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            out.append(_tree_entry(p, e))
        out += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                for f in sorted(folders)]
        self._json(sorted(out, key=lambda x: x["path"]))

    def h_refs(self, repo):
        r = self._repo(repo)
        self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                                 for b, s in r.refs().items()], "converts": [], "tags": []})

    def h_resolve(self, repo, rev, path):
        r = self._repo(repo, files=True)
        sha = r.resolve(rev)
        e = r.files(sha).get(path)
        if e is None:
            raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound", commit=sha)
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if e["lfs"]:
            # As the Hub: a redirect to the storage (an absolute, signed URL on another path), the ETag of the
            # pointer file, and the linked file's sha256 and size, which the client uses as its cache key.
            headers = {**common, "ETag": f'"{e["oid"]}"', "X-Linked-Etag": f'"{e["sha256"]}"',
                       "X-Linked-Size": e["size"], "Location": self.hub.blob_url(repo, e["sha256"])}
            return self._send(302, b"", "text/plain", headers)
        self._serve_object(r.object_path(e["sha256"]), e["size"], {**common, "ETag": f'"{e["oid"]}"'})

    def h_blob(self, repo, sha):
        expires, sig = self.query.get("Expires", "0"), self.query.get("Signature", "")
        if not hmac.compare_digest(sig, self.hub._sign(repo, sha, expires)) or int(expires) < time.time():
            raise HubError(403, "Request has expired or its signature does not match")
        r = self.hub.repo(repo)
        if r is None or not r.has_object(sha):
            raise HubError(404, "No such object")
        path = r.object_path(sha)
        self._serve_object(path, path.stat().st_size, {"ETag": f'"{sha}"'}, "application/octet-stream")

    def _serve_object(self, path: Path, size: int, headers: dict, ctype: str = "application/octet-stream"):
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else size - 1, size - 1)
            if start >= size:
                raise HubError(416, "Requested range not satisfiable")
            return self._send(206, ctype=ctype, length=end - start + 1, stream=path, offset=start,
                              headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"})
        self._send(200, ctype=ctype, length=size, stream=path, headers=headers)

    # ---------------------------------------------------------------------------------------- uploads
    def h_create(self):
        body = self._json_body()
        if body.get("type") not in (None, "model"):
            raise HubError(400, "This server holds model repos only")
        ns = body.get("organization") or self.user
        repo_id = f"{ns}/{body.get('name')}"
        self._need_write(ns)
        _split_repo(repo_id)
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        url = f"{self.hub.url}/{repo_id}"
        try:
            self.hub.create_repo(repo_id, owner=self.user, private=private)
        except HubError as err:
            if err.status == 409:  # create_repo(exist_ok=True) reads the url of the answer
                return self._json({"error": "You already created this model repo", "url": url}, 409)
            raise
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def h_branch(self, repo, branch):
        r = self._repo(repo, write=True)
        body = self._json_body()
        with self.hub._lock:
            if branch in r.refs():
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            self.hub._set_ref(r, branch, r.resolve(body.get("startingPoint") or "main"))
        self._json({})

    def h_validate_yaml(self):
        body = self._json_body()
        text = body.get("content") or ""
        errors = []
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1])
                if front is not None and not isinstance(front, dict):
                    errors.append({"message": "metadata must be a mapping"})
            except yaml.YAMLError as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        self._json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def h_preupload(self, repo, rev):
        r = self._repo(repo, write=True)
        files = r.files(r.resolve(rev))
        out = []
        for f in self._json_body().get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            lfs = is_lfs(f["path"], int(f.get("size") or 0), sample)
            old = files.get(f["path"])
            # The oid the client compares with its own (sha256 for LFS, git sha1 otherwise) to skip unchanged files
            oid = (old["sha256"] if old["lfs"] else old["oid"]) if old and old["lfs"] == lfs else None
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        self._json({"files": out, "commitOid": r.resolve(rev)})

    def h_lfs_batch(self, repo):
        r = self._repo(repo, write=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is served here (downloads go through /resolve)")
        if "basic" not in (body.get("transfers") or ["basic"]):
            raise HubError(400, "This server speaks the basic LFS transfer only")
        objects = []
        for o in body.get("objects", []):
            oid, size = str(o.get("oid", "")), o.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}})
            elif r.has_object(oid, size):
                objects.append({"oid": oid, "size": size, "authenticated": True})  # no actions: already stored
            else:
                upload = secrets.token_urlsafe(24)
                with self.hub._lock:
                    self.hub._uploads[upload] = {"repo": repo, "oid": oid, "size": size,
                                                 "expires": time.time() + UPLOAD_URL_TTL}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{upload}", "header": {},
                               "expires_in": UPLOAD_URL_TTL},
                    "verify": {"href": f"{self.hub.url}/{repo}.git/info/lfs/objects/verify", "header": {}}}})
        # "transfer": the client offered basic, multipart and (hf_xet installed) xet: basic is chosen.
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   ctype="application/vnd.git-lfs+json")

    def h_lfs_put(self, upload):
        with self.hub._lock:
            job = self.hub._uploads.pop(upload, None)
        if job is None or job["expires"] < time.time():
            raise HubError(403, "Unknown or expired upload URL")
        r = self.hub.repo(job["repo"])
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.hub.root / "uploads")
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in self._chunks():
                    h.update(block)
                    size += len(block)
                    fh.write(block)
            if size != job["size"] or h.hexdigest() != job["oid"]:
                raise HubError(400, f"Uploaded content does not match: got {size} bytes with sha256 "
                                    f"{h.hexdigest()}, expected {job['size']} bytes with sha256 {job['oid']}")
            os.replace(tmp, r.object_path(job["oid"]))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._send(200, b"", "text/plain", {"ETag": f'"{job["oid"]}"'})

    def h_lfs_verify(self, repo):
        r = self._repo(repo, write=True)
        body = self._json_body()
        if not r.has_object(str(body.get("oid")), body.get("size")):
            raise HubError(404, f"Object {body.get('oid')} of size {body.get('size')} was not uploaded")
        self._json({"success": True}, ctype="application/vnd.git-lfs+json")

    def h_commit(self, repo, rev):
        r = self._repo(repo, write=True)
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not served here")
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            raise HubError(400, "The commit payload must be application/x-ndjson")
        lines = []
        for raw in self._body().splitlines():
            if raw.strip():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    raise HubError(400, "Invalid ndjson line in the commit payload") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        if not header.get("summary"):
            raise HubError(400, "The commit needs a summary")
        with self.hub._lock:
            head = r.resolve(rev)
            if rev not in r.refs():
                raise HubError(400, f"Cannot commit to {rev}: not a branch", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, f"A commit has happened since {parent}: the head of {rev} is {head}")
            table, new_files = dict(r.files(head)), {}
            for op in lines[1:]:
                key, v = op.get("key"), op.get("value") or {}
                path = str(v.get("path", ""))
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in the commit: {path!r}")
                if key == "file":
                    if v.get("encoding") != "base64":
                        raise HubError(400, "file content must be base64")
                    new_files[path] = base64.b64decode(v.get("content") or "")
                    table.pop(path, None)
                elif key == "lfsFile":
                    oid = str(v.get("oid", ""))
                    if v.get("algo", "sha256") != "sha256" or not r.has_object(oid):
                        raise HubError(422, f"Your push was rejected: the LFS object {oid} for {path} was not "
                                            "uploaded")
                    size = r.object_path(oid).stat().st_size
                    table[path] = _entry(r, oid, size, True)
                elif key == "deletedFile":
                    if path not in table:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del table[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in table if p.startswith(prefix)]:
                        del table[p]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            sha = self.hub._write_commit(r, head, header["summary"], table, new_files,
                                         header.get("description") or "", self.user)
            self.hub._set_ref(r, rev, sha)
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo}/commit/{sha}",
                    "hookOutput": "", "pullRequestUrl": None})


def point_huggingface_hub(monkeypatch, url: str, home: str | os.PathLike) -> None:
    """Point this process's huggingface_hub at `url`, as `HF_ENDPOINT=url HF_HUB_OFFLINE=0 HF_HOME=home` would
    have at its import (it reads them once then; tests/conftest.py sets HF_HUB_OFFLINE=1 for the whole session).
    Subprocesses get the variables themselves."""
    from huggingface_hub import constants

    home = Path(home)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hubserver", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder for the repos and the request log")
    p.add_argument("--model", action="append", default=[], metavar="REPO=FOLDER", help="serve FOLDER as REPO")
    p.add_argument("--token", action="append", default=[], metavar="USER:TOKEN[:read]")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    hub = HubServer(args.root, port=args.port)
    for t in args.token:
        user, token, *role = t.split(":")
        hub.add_token(token, user, role[0] if role else "write")
    for m in args.model:
        repo_id, _, folder = m.partition("=")
        hub.serve_folder(repo_id, folder)
    print(hub.url, flush=True)
    try:
        hub._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
