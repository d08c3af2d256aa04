"""A local HTTP server that speaks the GitHub REST endpoints the bot uses, records what it is
sent, and can be told to fail. Real PyGithub talks to it through its base URL.

Endpoints: issues (open, get, edit), issue comments (list, create, get, edit), reactions on an issue comment, a
collaborator's permission, a commit's pull requests, installation access tokens (the JWT is
verified with the App's public key). Requests to repository endpoints need a token the server
knows (`tokens`), as `Authorization: Bearer TOKEN` or `token TOKEN`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"


@dataclass
class Failure:
    """Answer the next request matching `method` and `path` (a regex) with this status."""

    method: str
    path: str
    status: int
    body: dict[str, Any] = field(default_factory=lambda: {"message": "Server Error"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a time-out)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeGitHub:
    """The server's state; start() serves it on 127.0.0.1 in a thread."""

    def __init__(
        self, tokens: tuple[str, ...] = ("t0k",), app_public_key: str | None = None
    ) -> None:
        self.tokens = set(tokens)
        self.app_public_key = app_public_key
        self.lock = threading.Lock()
        self.comments: dict[int, dict[str, Any]] = {}
        self.issues: dict[tuple[str, int], dict[str, Any]] = {}
        self.next_issue = 1
        self.reactions: list[dict[str, Any]] = []
        self.permissions: dict[tuple[str, str], str] = {}
        self.commit_pulls: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.failures: list[Failure] = []
        self.requests: list[Seen] = []
        self.issued: list[tuple[int, str]] = []
        self.next_id = 1000
        self.bot_login = "ekka-bot[bot]"
        self.server: ThreadingHTTPServer | None = None

    # --- set-up -------------------------------------------------------------------------------

    def start(self) -> str:
        state = self

        class Handler(_Handler):
            github = state

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def fail(self, method: str, path: str, status: int, times: int = 1, **kw: Any) -> None:
        for _ in range(times):
            self.failures.append(Failure(method, path, status, **kw))

    def add_comment(self, repo: str, issue: int, body: str, login: str) -> dict[str, Any]:
        with self.lock:
            self.next_id += 1
            now = datetime.now(UTC).isoformat()
            comment = {
                "id": self.next_id,
                "body": body,
                "user": {"login": login, "id": 7, "type": "User"},
                "html_url": f"https://github.com/{repo}/issues/{issue}#issuecomment-{self.next_id}",
                "url": f"{self.url}/repos/{repo}/issues/comments/{self.next_id}",
                "issue_url": f"{self.url}/repos/{repo}/issues/{issue}",
                "created_at": now,
                "updated_at": now,
                "_repo": repo,
                "_issue": issue,
                "_edits": 0,
            }
            self.comments[self.next_id] = comment
            return comment

    def add_issue(self, repo: str, title: str, body: str, login: str) -> dict[str, Any]:
        with self.lock:
            number = self.next_issue
            self.next_issue += 1
            now = datetime.now(UTC).isoformat()
            issue = {
                "id": 50_000 + number,
                "number": number,
                "title": title,
                "body": body,
                "state": "open",
                "user": {"login": login, "id": 7, "type": "User"},
                "html_url": f"https://github.com/{repo}/issues/{number}",
                "url": f"{self.url}/repos/{repo}/issues/{number}",
                "created_at": now,
                "updated_at": now,
                "_repo": repo,
                "_edits": 0,
            }
            self.issues[(repo, number)] = issue
            return issue

    # --- what the tests read --------------------------------------------------------------------

    def comments_on(self, repo: str, issue: int) -> list[dict[str, Any]]:
        with self.lock:
            return [
                c for c in self.comments.values() if c["_repo"] == repo and c["_issue"] == issue
            ]

    def bot_comments(self, repo: str, issue: int) -> list[dict[str, Any]]:
        """The comments the bot posted there (its login), oldest first."""
        return [c for c in self.comments_on(repo, issue) if c["user"]["login"] == self.bot_login]

    def seen(self, method: str, pattern: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]


def _public(comment: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in comment.items() if not k.startswith("_")}


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        url = urlsplit(self.path)
        gh = self.github
        with gh.lock:
            gh.requests.append(Seen(method, url.path, dict(self.headers.items()), body))
            failure = next(
                (f for f in gh.failures if f.method == method and re.search(f.path, url.path)),
                None,
            )
            if failure is not None:
                gh.failures.remove(failure)
        if failure is not None:
            if failure.delay:
                import time

                time.sleep(failure.delay)
            return self._send(failure.status, failure.body, failure.headers)
        try:
            status, payload = self._route(method, url.path, body)
        except _Refused as exc:
            status, payload = exc.status, {"message": exc.message}
        self._send(status, payload)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _token(self) -> str:
        value = self.headers.get("Authorization") or ""
        kind, _, token = value.partition(" ")
        if kind.lower() not in ("bearer", "token") or not token:
            raise _Refused(401, "Requires authentication")
        return token

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        gh = self.github
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if m and method == "POST":
            return self._installation_token(int(m.group(1)))
        if path.startswith("/repos/") and self._token() not in gh.tokens:
            raise _Refused(401, "Bad credentials")
        m = re.fullmatch(REPO + r"/issues/(?P<issue>\d+)/comments", path)
        if m:
            repo, issue = f"{m['owner']}/{m['repo']}", int(m["issue"])
            if method == "GET":
                return 200, [_public(c) for c in gh.comments_on(repo, issue)]
            if method == "POST":
                if not isinstance(body, dict) or not isinstance(body.get("body"), str):
                    raise _Refused(422, "body is required")
                return 201, _public(gh.add_comment(repo, issue, body["body"], gh.bot_login))
        m = re.fullmatch(REPO + r"/issues", path)
        if m and method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("title"), str):
                raise _Refused(422, "title is required")
            repo = f"{m['owner']}/{m['repo']}"
            return 201, _public(
                gh.add_issue(repo, body["title"], body.get("body") or "", gh.bot_login)
            )
        m = re.fullmatch(REPO + r"/issues/(?P<issue>\d+)", path)
        if m and method in ("GET", "PATCH"):
            with gh.lock:
                issue = gh.issues.get((f"{m['owner']}/{m['repo']}", int(m["issue"])))
                if issue is None:
                    raise _Refused(404, "Not Found")
                if method == "PATCH":
                    if not isinstance(body, dict):
                        raise _Refused(422, "a JSON object is required")
                    for key in ("title", "body", "state"):
                        if isinstance(body.get(key), str):
                            issue[key] = body[key]
                    issue["_edits"] += 1
                    issue["updated_at"] = datetime.now(UTC).isoformat()
                return 200, _public(issue)
        m = re.fullmatch(REPO + r"/issues/comments/(?P<id>\d+)", path)
        if m:
            with gh.lock:
                comment = gh.comments.get(int(m["id"]))
                if comment is None:
                    raise _Refused(404, "Not Found")
                if method == "PATCH":
                    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
                        raise _Refused(422, "body is required")
                    comment["body"] = body["body"]
                    comment["_edits"] += 1
                    comment["updated_at"] = datetime.now(UTC).isoformat()
                return 200, _public(comment)
        m = re.fullmatch(REPO + r"/issues/comments/(?P<id>\d+)/reactions", path)
        if m and method == "POST":
            with gh.lock:
                if int(m["id"]) not in gh.comments:
                    raise _Refused(404, "Not Found")
                reaction = {
                    "id": len(gh.reactions) + 1,
                    "content": (body or {}).get("content"),
                    "user": {"login": gh.bot_login},
                    "_comment": int(m["id"]),
                }
                gh.reactions.append(reaction)
            return 201, _public(reaction)
        m = re.fullmatch(REPO + r"/collaborators/(?P<user>[^/]+)/permission", path)
        if m and method == "GET":
            repo = f"{m['owner']}/{m['repo']}"
            permission = gh.permissions.get((repo, m["user"]), "read")
            return 200, {"permission": permission, "user": {"login": m["user"]}}
        m = re.fullmatch(REPO + r"/commits/(?P<sha>[0-9a-f]+)/pulls", path)
        if m and method == "GET":
            return 200, gh.commit_pulls.get((f"{m['owner']}/{m['repo']}", m["sha"]), [])
        return 404, {"message": "Not Found"}

    def _installation_token(self, installation: int) -> tuple[int, Any]:
        import jwt

        gh = self.github
        value = self.headers.get("Authorization") or ""
        if not value.startswith("Bearer ") or gh.app_public_key is None:
            raise _Refused(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(value[7:], gh.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            raise _Refused(401, f"A JSON web token could not be decoded: {exc}") from None
        token = f"ghs_installation_{installation}_{len(gh.issued)}"
        with gh.lock:
            gh.tokens.add(token)
            gh.issued.append((installation, str(claims.get("iss"))))
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {"token": token, "expires_at": expires, "permissions": {}}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
