"""A local stand-in for the Hugging Face Hub, so that tests download without the internet.

`LocalHub` serves repositories over HTTP on 127.0.0.1 with the part of the Hub API that
``huggingface_hub.hf_hub_download`` uses: ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}``
answering with ``ETag``, ``X-Repo-Commit``, ``Content-Length`` (and byte ranges), the Hub's error
codes (``X-Error-Code``: ``RepoNotFound`` with 401 for a missing or private repository read
without its token, ``RevisionNotFound``, ``EntryNotFound`` with 404), relative 307 redirects
for renamed repositories (as the Hub answers for its legacy names) and, on demand, server errors. Every request is recorded
(`LocalHub.requests`, `LocalHub.count`).

`local_hub_environment` points ``huggingface_hub`` at such a server: ``HF_ENDPOINT`` and the
module constants ``huggingface_hub`` read from the environment when it was imported (the
endpoint and URL template, the cache, offline mode, the token files; and HF transformers' copies
of the offline switch and cache when it is loaded), a fresh ``HF_HOME`` and no token from the
environment. The ``local_hub`` fixture of ``tests/conftest.py`` is both together.

    with LocalHub() as hub, local_hub_environment(hub, tmp_path / "hf-home"):
        hub.add_repo("org/tiny", checkpoint_dir)
        XLMRobertaXLModel.from_pretrained("org/tiny")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

import pytest

__all__ = ["LocalHub", "Request", "local_hub_environment", "offline_environment"]


@dataclass(frozen=True)
class Request:
    """One request the server answered: method, repository, revision and file as asked, status."""

    method: str
    repo_id: str
    revision: str
    filename: str
    status: int


@dataclass
class _Repo:
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: content}
    refs: Dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    token: Optional[str] = None  # a private repository answers only to this token


class LocalHub:
    """A threaded HTTP server holding Hub repositories (see the module docstring)."""

    def __init__(self) -> None:
        self._repos: Dict[str, _Repo] = {}
        self._redirects: Dict[str, str] = {}
        self._failures: Dict[str, int] = {}
        self._lock = threading.Lock()
        self.requests: List[Request] = []
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- content --------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: Union[Path, Mapping[str, bytes]], *, revision: str = "main",
                 token: Optional[str] = None) -> str:
        """Publish ``files`` (a directory, read recursively, or ``{path in repo: bytes}``) as a
        commit of ``repo_id`` that ``revision`` (a branch or tag) points to; ``token`` makes the
        repository private. Returns the commit hash (40 hex digits, from the content)."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        content = dict(files)
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(content):
            digest.update(name.encode() + b"\0" + hashlib.sha256(content[name]).digest())
        commit = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[commit] = content
            repo.refs[revision] = commit
            if token is not None:
                repo.token = token
        return commit

    def fail(self, repo_id: str, status: int = 429) -> None:
        """Answer every request for ``repo_id`` with ``status`` (the Hub having trouble)."""
        self._failures[repo_id] = status

    def add_redirect(self, old_repo_id: str, new_repo_id: str) -> None:
        """Answer requests for ``old_repo_id`` with a relative 307 to ``new_repo_id`` (a renamed repository)."""
        self._redirects[old_repo_id] = new_repo_id

    # -- the request log ------------------------------------------------------------------------
    def count(self, method: Optional[str] = None, *, filename: Optional[str] = None,
              repo_id: Optional[str] = None, status: Optional[int] = None) -> int:
        """How many recorded requests match every given field."""
        with self._lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and (filename is None or r.filename == filename)
                       and (repo_id is None or r.repo_id == repo_id) and (status is None or r.status == status))

    def files_fetched(self) -> List[str]:
        """The files served by successful ``GET`` requests, in order."""
        with self._lock:
            return [r.filename for r in self.requests if r.method == "GET" and r.status in (200, 206)]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- answering ------------------------------------------------------------------------------
    def answer(self, method: str, path: str, authorization: Optional[str]) -> Tuple[int, Dict[str, str], bytes]:
        """Status, headers and body (the whole file; ranges are cut by the handler) for a request."""
        repo_id, revision, filename = _parse_resolve(path)
        if repo_id is None:
            return 404, {"X-Error-Message": "Not a resolve URL"}, b""
        status, headers, body = self._resolve(repo_id, revision, filename, authorization)
        with self._lock:
            self.requests.append(Request(method, repo_id, revision, filename, status))
        return status, headers, body

    def _resolve(self, repo_id: str, revision: str, filename: str,
                 authorization: Optional[str]) -> Tuple[int, Dict[str, str], bytes]:
        if repo_id in self._failures:
            return self._failures[repo_id], {}, b""
        if repo_id in self._redirects:
            location = f"/{self._redirects[repo_id]}/resolve/{revision}/{filename}"
            return 307, {"Location": location}, b""
        repo = self._repos.get(repo_id)
        if repo is None or (repo.token is not None and authorization != f"Bearer {repo.token}"):
            return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        commit = repo.refs.get(revision) or (revision if revision in repo.commits else None)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
        content = repo.commits[commit].get(filename)
        if content is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                         "X-Repo-Commit": commit}, b""
        return 200, {"ETag": f'"{hashlib.sha256(content).hexdigest()}"', "X-Repo-Commit": commit,
                     "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, content


def _parse_resolve(path: str) -> Tuple[Optional[str], str, str]:
    """(repo id, revision, file path) of ``/{repo_id}/resolve/{revision}/{path}``; repo None otherwise."""
    parts = urlsplit(path).path.lstrip("/").split("/")
    if "resolve" not in parts:
        return None, "", ""
    at = parts.index("resolve")
    if at == 0 or len(parts) < at + 3:
        return None, "", ""
    return "/".join(parts[:at]), unquote(parts[at + 1]), unquote("/".join(parts[at + 2:]))


class _Handler(BaseHTTPRequestHandler):
    server_hub: LocalHub

    def do_HEAD(self) -> None:
        self._reply("HEAD")

    def do_GET(self) -> None:
        self._reply("GET")

    def _reply(self, method: str) -> None:
        status, headers, body = self.server_hub.answer(method, self.path, self.headers.get("Authorization"))
        start, end = 0, len(body)
        wanted = self.headers.get("Range") if method == "GET" and status == 200 else None
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end = int(first or 0), min(len(body), int(last) + 1 if last else len(body))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body[start:end])

    def log_message(self, format: str, *args: object) -> None:
        pass


# --------------------------------------------------------------------------- huggingface_hub's settings
def _hub_settings(monkeypatch: pytest.MonkeyPatch, home: Path, *, endpoint: Optional[str], offline: bool) -> None:
    """Point huggingface_hub (its environment and import-time constants) at ``home`` and ``endpoint``."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import reset_sessions

    home.mkdir(parents=True, exist_ok=True)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    values = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": offline,
              "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}
    if endpoint is not None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        for name in ("NO_PROXY", "no_proxy"):  # requests reads both
            monkeypatch.setenv(name, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(name)])))
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        values.update(ENDPOINT=endpoint, HUGGINGFACE_CO_URL_TEMPLATE=template)
        # file_download copied the URL template at import
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    _transformers_settings(monkeypatch, values)
    reset_sessions()  # huggingface_hub's per-thread sessions keep the offline setting they were made with


def _transformers_settings(monkeypatch: pytest.MonkeyPatch, values: Dict[str, object]) -> None:
    """HF transformers, when imported, copied the offline switch and the cache folder too."""
    module = sys.modules.get("transformers.utils.hub")
    copies = {"_is_offline_mode": values["HF_HUB_OFFLINE"], "TRANSFORMERS_CACHE": values["HF_HUB_CACHE"]}
    for name, value in copies.items():
        if module is not None and hasattr(module, name):
            monkeypatch.setattr(module, name, value)


@contextlib.contextmanager
def local_hub_environment(hub: LocalHub, home: Path) -> Iterator[Path]:
    """huggingface_hub online against ``hub``, caching under ``home`` (yielded: the cache folder)."""
    from huggingface_hub.utils import reset_sessions

    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _hub_settings(monkeypatch, home, endpoint=hub.url, offline=False)
            yield home / "hub"
    finally:
        reset_sessions()  # no session made for the local hub outlives it


def offline_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """huggingface_hub offline (``HF_HUB_OFFLINE=1``, its sessions remade so) with an empty cache
    under ``home`` and no token, until ``monkeypatch`` is undone."""
    _hub_settings(monkeypatch, home, endpoint=None, offline=True)
