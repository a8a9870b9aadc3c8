"""A loopback stand-in for the Hugging Face hub's download API, with faults on request.

It answers what ``huggingface_hub`` asks (read from its installed source, 2.x):

- ``GET /api/models/{org}/{name}[/revision/{rev}]`` (``?blobs=True``: sizes, blob ids, LFS
  SHA-256): the repository's commit (``sha``) and files (``siblings``);
- ``GET /api/models/{org}/{name}/tree/{rev}?recursive=True``: the file list ``snapshot_download``
  filters with its patterns;
- ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the git blob
  id) or, for LFS files, ``X-Linked-Etag`` (the SHA-256) and ``X-Linked-Size``, ``Content-Length``,
  and ``Range: bytes=N-`` answered with 206;
- unknown repositories and files: 404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``.

Faults (:attr:`HubStandIn.faults`, by file path, or ``"api"`` for the listing routes):
``"drop_once"`` sends the full ``Content-Length`` but half the body and closes the connection, once;
``"short"`` sends half the file as if it were all of it; ``"corrupt"`` sends the right size with one
byte flipped; ``"hang"`` answers nothing until the server stops.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote, urlsplit

Fault = Literal["drop_once", "short", "corrupt", "hang"]
LFS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".model", ".msgpack")


def git_blob_id(content: bytes) -> str:
    """The git blob SHA-1 of ``content``, as the hub lists it for every file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def is_lfs(path: str) -> bool:
    """Whether the stand-in keeps a file in LFS (weights and other binaries)."""
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    range: str | None


@dataclass
class HubStandIn:
    """Repositories to serve, the faults to inject and the requests received.

    Attributes:
        repos: ``org/name`` -> file path -> content.
        commits: ``org/name`` -> the commit the repository is at.
        faults: File path (or ``"api"``) -> the fault to inject.
        requests: Every request, in arrival order.
        url: ``http://127.0.0.1:PORT`` once started.
    """

    repos: dict[str, dict[str, bytes]]
    commits: dict[str, str] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    stopping: threading.Event = field(default_factory=threading.Event)
    dropped: set[str] = field(default_factory=set)

    def commit(self, repo_id: str) -> str:
        """The repository's commit (a stable fake hash per repository)."""
        return self.commits.setdefault(repo_id, hashlib.sha1(repo_id.encode()).hexdigest())

    def file_gets(self, path: str) -> list[Request]:
        """The ``GET`` requests for one file of any repository."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(f"/{path}")]


def _sibling(path: str, content: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "rfilename": path,
        "size": len(content),
        "blobId": git_blob_id(content),
    }
    if is_lfs(path):
        sha = hashlib.sha256(content).hexdigest()
        entry["lfs"] = {"sha256": sha, "size": len(content), "pointerSize": 134}
        entry["blobId"] = git_blob_id(f"oid sha256:{sha}\nsize {len(content)}\n".encode())
    return entry


def _tree_entry(path: str, content: bytes) -> dict[str, object]:
    sibling = _sibling(path, content)
    entry: dict[str, object] = {
        "type": "file",
        "path": path,
        "size": len(content),
        "oid": sibling["blobId"],
    }
    if "lfs" in sibling:
        lfs = sibling["lfs"]
        assert isinstance(lfs, Mapping)
        entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": 134}
    return entry


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads :attr:`HubStandIn.requests` instead."""

        def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
            headers = headers or {}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(
            self, status: int, value: object, headers: Mapping[str, str] | None = None
        ) -> None:
            body = json.dumps(value).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _not_found(self, code: str) -> None:
            self._json(404, {"error": f"{code}: not found"}, {"X-Error-Code": code})

        def _hang(self) -> None:
            hub.stopping.wait()
            self.close_connection = True

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            target = unquote(urlsplit(self.path).path)
            hub.requests.append(Request(self.command, target, self.headers.get("Range")))
            parts = target.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                self._api(parts[2:])
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._file("/".join(parts[:2]), "/".join(parts[4:]))
            else:
                self._not_found("RepoNotFound")

        def _api(self, parts: list[str]) -> None:
            if hub.faults.get("api") == "hang":
                self._hang()
                return
            repo_id = "/".join(parts[:2])
            files = hub.repos.get(repo_id)
            if files is None:
                self._not_found("RepoNotFound")
            elif len(parts) > 3 and parts[2] == "tree":
                self._json(200, [_tree_entry(p, c) for p, c in sorted(files.items())])
            else:
                siblings = [_sibling(p, c) for p, c in sorted(files.items())]
                self._json(200, {"id": repo_id, "sha": hub.commit(repo_id), "siblings": siblings})

        def _file(self, repo_id: str, path: str) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                self._not_found("RepoNotFound")
                return
            if path not in files:
                self._not_found("EntryNotFound")
                return
            content = files[path]
            fault = hub.faults.get(path)
            if fault == "hang" and self.command == "GET":
                self._hang()
                return
            sibling = _sibling(path, content)
            headers = {"X-Repo-Commit": hub.commit(repo_id), "Accept-Ranges": "bytes"}
            if "lfs" in sibling:
                lfs = sibling["lfs"]
                assert isinstance(lfs, Mapping)
                headers |= {
                    "X-Linked-Etag": f'"{lfs["sha256"]}"',
                    "X-Linked-Size": str(len(content)),
                    "ETag": f'"{sibling["blobId"]}"',
                }
            else:
                headers["ETag"] = f'"{sibling["blobId"]}"'
            if self.command == "GET" and fault == "corrupt":
                content = bytes([content[0] ^ 0xFF]) + content[1:]
            start = 0
            wanted = self.headers.get("Range")
            if self.command == "GET" and wanted and wanted.startswith("bytes="):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
            body = content[start:]
            status = 206 if start else 200
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            if self.command == "GET" and fault == "short":
                body = body[: len(body) // 2]
            if self.command == "GET" and fault == "drop_once" and path not in hub.dropped:
                hub.dropped.add(path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, body, headers)

    return Handler


@contextmanager
def running_hub(hub: HubStandIn) -> Iterator[HubStandIn]:
    """Serves ``hub`` on a free loopback port for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    server.block_on_close = False
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
