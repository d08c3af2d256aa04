"""The one GitHub client of the project, on PyGithub: issues (open, edit, close), issue
comments (create, edit, list), reactions, a collaborator's permission, a commit's pull requests, installation tokens of a
GitHub App.

Every call retries with exponential backoff on 5xx answers, secondary rate limits (403/429 with
Retry-After or GitHub's rate-limit message) and time-outs or dropped connections; PyGithub's
own retries are off so that this is the one policy. A call that keeps failing, or that GitHub
refuses, raises `GitHubError` (`ekka.errors`) with the status and GitHub's message.

`connect(GitHubSettings(...))` is the one place a client is built from configuration: the bot's
server and worker, the nightly sweep and the bisection's PR lookup (`ekka.forge.pulls`) all
call it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ekka.errors import GitHubError
from ekka.forge.settings import DEFAULT_API, GitHubSettings

try:
    import github as pygithub
    import requests
    from github import Auth
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the GitHub client needs PyGithub: pip install 'ekka[bot]'") from exc


T = TypeVar("T")


@dataclass(frozen=True)
class IssueComment:
    id: int
    body: str
    user: str


def connect(
    settings: GitHubSettings, *, timeout: float = 15, retries: int = 4, backoff: float = 1.0
) -> GitHubClient:
    """A client for these settings, with this retry policy (the defaults: the bot's)."""
    return GitHubClient(
        settings.api_url,
        token=settings.token,
        app_id=settings.app_id,
        private_key=settings.private_key,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        throttle=settings.throttle,
    )


class _Bearer(Auth.Token):
    """A token sent as `Authorization: Bearer ...` (what GitHub documents for every token)."""

    @property
    def token_type(self) -> str:
        return "Bearer"


class GitHubClient:
    """GitHub's REST API through PyGithub with one retry policy.

    With `token`, calls authenticate with it; with `app_id` and `private_key` (a GitHub App),
    `for_installation(id)` gives a client that authenticates with that installation's access
    token (fetched through PyGithub and renewed before it expires).
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API,
        *,
        token: str | None = None,
        app_id: str | None = None,
        private_key: str | None = None,
        timeout: float = 15,
        retries: int = 4,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        throttle: bool = True,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.app_id = app_id
        self.private_key = private_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep
        # PyGithub's pacing (0.25 s between requests, 1 s between writes), which GitHub asks
        # for to stay clear of secondary rate limits; off for a local test server
        self.throttle = throttle
        self.attempts = 0  # HTTP calls made (retries included): for tests and logs
        self._gh = self._github(_Bearer(token) if token else None)
        self._installations: dict[int, tuple[GitHubClient, datetime]] = {}
        self._lock = threading.Lock()

    def _github(self, auth: Auth.Auth | None) -> pygithub.Github:
        between_requests: float | None = 0.25 if self.throttle else None
        between_writes: float | None = 1.0 if self.throttle else None
        return pygithub.Github(
            auth=auth,
            base_url=self.api_url,
            timeout=int(max(1, self.timeout)),
            retry=None,
            lazy=True,
            seconds_between_requests=between_requests,
            seconds_between_writes=between_writes,
        )

    def close(self) -> None:
        self._gh.close()
        for client, _ in self._installations.values():
            client.close()

    # --- GitHub Apps -------------------------------------------------------------------------

    def for_installation(self, installation: int | None) -> GitHubClient:
        """The client to act on a repository: this one with a token, else an installation's."""
        if self.token or installation is None:
            if not self.token and self.app_id:
                raise GitHubError(
                    "the bot authenticates as a GitHub App, but the event names no installation"
                )
            return self
        with self._lock:
            cached = self._installations.get(installation)
            if cached is not None and cached[1] > datetime.now(UTC) + timedelta(minutes=5):
                return cached[0]
            if not (self.app_id and self.private_key):
                raise GitHubError("no GitHub credentials: a token or a GitHub App is needed")
            app = pygithub.GithubIntegration(
                auth=Auth.AppAuth(self.app_id, self.private_key),
                base_url=self.api_url,
                timeout=int(max(1, self.timeout)),
                retry=None,
            )
            try:
                grant = self._call(
                    f"an access token for installation {installation}",
                    lambda: app.get_access_token(installation),
                )
            finally:
                app.close()
            client = GitHubClient(
                self.api_url,
                token=grant.token,
                timeout=self.timeout,
                retries=self.retries,
                backoff=self.backoff,
                max_wait=self.max_wait,
                sleep=self.sleep,
                throttle=self.throttle,
            )
            expires = grant.expires_at or datetime.now(UTC) + timedelta(minutes=30)
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            self._installations[installation] = (client, expires)
            return client

    # --- the calls ---------------------------------------------------------------------------

    def create_comment(self, repository: str, issue: int, body: str) -> int:
        """Post a comment on an issue or pull request; its id."""
        comment = self._call(
            f"commenting on {repository}#{issue}",
            lambda: self._gh.get_repo(repository).get_issue(issue).create_comment(body),
        )
        return int(comment.id)

    def create_issue(self, repository: str, title: str, body: str) -> int:
        """Open an issue; its number."""
        issue = self._call(
            f"opening an issue in {repository}",
            lambda: self._gh.get_repo(repository).create_issue(title=title, body=body),
        )
        return int(issue.number)

    def edit_issue(
        self,
        repository: str,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
    ) -> None:
        """Change an issue's title, body or state ("open", "closed"); None leaves it."""
        fields: dict[str, Any] = {
            k: v for k, v in (("title", title), ("body", body), ("state", state)) if v is not None
        }
        self._call(
            f"editing {repository}#{number}",
            lambda: self._gh.get_repo(repository).get_issue(number).edit(**fields),
        )

    def edit_comment(self, repository: str, comment_id: int, body: str) -> None:
        self._call(
            f"editing comment {comment_id} in {repository}",
            lambda: self._comment(repository, comment_id).edit(body),
        )

    def list_comments(self, repository: str, issue: int) -> list[IssueComment]:
        """Every comment of an issue, oldest first."""

        def fetch() -> list[IssueComment]:
            issue_ = self._gh.get_repo(repository).get_issue(issue)
            return [
                IssueComment(int(c.id), c.body or "", c.user.login if c.user else "")
                for c in issue_.get_comments()
            ]

        return self._call(f"listing the comments of {repository}#{issue}", fetch)

    def add_reaction(self, repository: str, comment_id: int, content: str) -> None:
        """React to an issue comment ("eyes", "+1", "confused", ...)."""
        self._call(
            f"reacting to comment {comment_id} in {repository}",
            lambda: self._comment(repository, comment_id).create_reaction(content),
        )

    def permission(self, repository: str, user: str) -> str:
        """The user's permission on the repository: admin, maintain, write, triage, read, none."""
        return str(
            self._call(
                f"{user}'s permission on {repository}",
                lambda: self._gh.get_repo(repository).get_collaborator_permission(user),
            )
        )

    def commit_pulls(self, repository: str, sha: str) -> list[int]:
        """The numbers of the pull requests a commit belongs to, merged ones first."""

        def fetch() -> list[int]:
            pulls = list(self._gh.get_repo(repository).get_commit(sha).get_pulls())
            merged = [p for p in pulls if p.merged_at is not None]
            rest = [p for p in pulls if p.merged_at is None]
            return [int(p.number) for p in merged + rest]

        return self._call(f"the pull requests of {repository}@{sha[:10]}", fetch)

    def _comment(self, repository: str, comment_id: int) -> Any:
        repo = self._gh.get_repo(repository)
        from github.IssueComment import IssueComment as PyIssueComment

        return PyIssueComment(
            repo._requester, url=f"{repo.url}/issues/comments/{comment_id}", completed=False
        )

    # --- the retry policy ----------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """Run `call` (one or more PyGithub requests), retrying what is worth retrying."""
        last: str = ""
        status: int | None = None
        for attempt in range(self.retries + 1):
            self.attempts += 1
            wait: float | None
            try:
                return call()
            except pygithub.GithubException as exc:
                status = exc.status
                message = _message(exc)
                wait = self._retry_wait(exc, attempt)
                last = f"HTTP {status}: {message}"
                if wait is None:
                    raise GitHubError(f"GitHub refused {what}: {last}", status) from None
            except (requests.Timeout, requests.ConnectionError) as exc:
                status = None
                last = f"no answer ({type(exc).__name__})"
                wait = self.backoff * 2**attempt
            if attempt < self.retries:
                self.sleep(min(wait, self.max_wait))
        raise GitHubError(
            f"GitHub kept failing on {what} after {self.retries + 1} attempts: {last}", status
        )

    def _retry_wait(self, exc: pygithub.GithubException, attempt: int) -> float | None:
        """Seconds to wait before retrying `exc`, or None when it is not worth retrying."""
        status: int | None = exc.status
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        backoff = float(self.backoff * 2**attempt)
        if status is not None and status >= 500:
            return backoff
        if status in (403, 429):
            after = headers.get("retry-after")
            if after is not None and after.strip().isdigit():
                return max(float(after), backoff)
            message = _message(exc).lower()
            if "secondary rate limit" in message or headers.get("x-ratelimit-remaining") == "0":
                return backoff
        return None


def _message(exc: Any) -> str:
    data = exc.data
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return str(data) if data else type(exc).__name__
