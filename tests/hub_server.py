"""A loopback stand-in for the Hugging Face Hub: the few endpoints push_to_hub and from_pretrained call.

In-memory model repos on 127.0.0.1 (random free port): repo create, whoami-v2, README metadata validation,
preupload (always "regular" uploads, so no LFS/xet transfer), ndjson commits, model info / revision, and
resolve downloads (GET and HEAD)
with the headers huggingface_hub reads (X-Repo-Commit, ETag, X-Error-Code on 404). Anything else answers 404
and is recorded in `unknown_requests` so a test can show which endpoint a new client version needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

USER = "user"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REVISION = r"(?P<revision>[^/]+)"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class HubState:
    """Everything the server holds, shared by its handler threads."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.unknown_requests: list[str] = []
        self.validated_metadata: list[dict] = []


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

        # ------------------------------------------------------------------ plumbing
        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head=False):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict[str, str] | None = None):
            self._send(
                status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
            )

        def _not_found(self, code: str, message: str, head=False):
            body = json.dumps({"error": message}).encode()
            self._send(
                404,
                body,
                {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                head,
            )

        def _base_url(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

        # ------------------------------------------------------------------ dispatch
        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def _dispatch(self, method: str):
            path = unquote(urlparse(self.path).path)
            state.requests.append(f"{method} {path}")
            routes = (
                ("GET", r"/api/whoami-v2", self._whoami),
                ("GET", r"/api/agent-harnesses", self._agent_registry),
                ("POST", r"/api/validate-yaml", self._validate_yaml),
                ("POST", r"/api/repos/create", self._create_repo),
                ("POST", rf"/api/models/{_REPO}/preupload/{_REVISION}", self._preupload),
                ("POST", rf"/api/models/{_REPO}/commit/{_REVISION}", self._commit),
                ("GET", rf"/api/models/{_REPO}/revision/{_REVISION}", self._model_info),
                ("GET", rf"/api/models/{_REPO}", self._model_info),
                ("GET", rf"/{_REPO}/resolve/{_REVISION}/(?P<file>.+)", self._resolve),
                ("HEAD", rf"/{_REPO}/resolve/{_REVISION}/(?P<file>.+)", self._resolve),
            )
            for route_method, pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if route_method == method and match:
                    handler(method=method, **match.groupdict())
                    return
            state.unknown_requests.append(f"{method} {path}")
            if method == "POST":
                self._body()
            self._not_found("NotImplemented", f"loopback hub: no route for {method} {path}", method == "HEAD")

        # ------------------------------------------------------------------ endpoints
        def _whoami(self, method):
            self._json(
                200, {"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}}
            )

        def _agent_registry(self, method):
            # The client's agent-detection registry; empty = detection off, as when the Hub is unreachable.
            self._json(200, {"standardEnvVars": [], "harnesses": {}})

        def _validate_yaml(self, method):
            """README metadata must be a YAML mapping, as the Hub requires."""
            content = json.loads(self._body())["content"]
            match = re.match(r"^---\n(.*?)\n---", content, flags=re.DOTALL)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as error:
                self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
                return
            if not isinstance(metadata, dict):
                self._json(400, {"errors": [{"message": "metadata is not a mapping"}]})
                return
            state.validated_metadata.append(metadata)
            self._json(200, {"errors": [], "warnings": []})

        def _create_repo(self, method):
            request = json.loads(self._body() or b"{}")
            repo_id = f"{request.get('organization') or USER}/{request['name']}"
            with state.lock:
                exists = repo_id in state.repos
                state.repos.setdefault(repo_id, Repo())
            url = f"{self._base_url()}/{repo_id}"
            if exists:
                self._json(409, {"error": "You already created this model repo", "url": url})
            else:
                self._json(200, {"url": url, "name": repo_id})

        def _repo(self, repo: str, method: str) -> Repo | None:
            found = state.repos.get(repo)
            if found is None:
                self._not_found("RepoNotFound", f"Repository {repo} not found", method == "HEAD")
            return found

        def _preupload(self, method, repo, revision):
            request = json.loads(self._body())
            if self._repo(repo, method) is None:
                return
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in request["files"]
            ]
            self._json(200, {"files": files, "commitOid": state.repos[repo].sha})

        def _commit(self, method, repo, revision):
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            target = self._repo(repo, method)
            if target is None:
                return
            unsupported = sorted({line["key"] for line in lines} - {"header", "file", "deletedFile"})
            if unsupported:
                self._json(400, {"error": f"loopback hub supports regular files only, got {unsupported}"})
                return
            with state.lock:
                for line in lines:
                    value = line["value"]
                    if line["key"] == "file":
                        target.files[value["path"]] = base64.b64decode(value["content"])
                    elif line["key"] == "deletedFile":
                        target.files.pop(value["path"], None)
                digest = hashlib.sha1(
                    json.dumps(
                        sorted((k, hashlib.sha1(v).hexdigest()) for k, v in target.files.items())
                    ).encode()
                )
                target.commits.append(digest.hexdigest())
            self._json(200, {
                "commitUrl": f"{self._base_url()}/{repo}/commit/{target.sha}",
                "commitOid": target.sha,
                "pullRequestUrl": None,
            })  # fmt: skip

        def _model_info(self, method, repo, revision="main"):
            target = self._repo(repo, method)
            if target is None:
                return
            self._json(200, {
                "id": repo, "modelId": repo, "sha": target.sha, "private": False, "disabled": False,
                "gated": False, "tags": [], "siblings": [{"rfilename": name} for name in sorted(target.files)],
            })  # fmt: skip

        def _resolve(self, method, repo, revision, file):
            target = self._repo(repo, method)
            if target is None:
                return
            if file not in target.files:
                self._not_found("EntryNotFound", f"{file} does not exist on {revision}", method == "HEAD")
                return
            content = target.files[file]
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                "X-Repo-Commit": target.sha,
            }
            self._send(200, content, headers, head=method == "HEAD")

    return Handler


class LoopbackHub:
    """Start with `with LoopbackHub() as hub:`; `hub.endpoint` is the URL to put in HF_ENDPOINT."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
