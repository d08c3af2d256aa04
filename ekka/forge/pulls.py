"""Pull-request lookup through GitHub's REST API (`GET /repos/{owner}/{repo}/commits/{sha}/pulls`).

Used as `commit_range(..., pr_lookup=GitHubPrLookup(...))` when a GitHub repository is
configured; without one (or when the API has no answer) the PR comes from the commit message.
Lookups are cached per sha; an API failure falls back to the message, never stops a bisection.
The calls go through the project's one GitHub client (`ekka.forge.client`, PyGithub with its
retries), imported when a lookup is made, so that a bisection without GitHub loads no PyGithub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ekka.errors import EkkaError, UsageError
from ekka.forge.settings import DEFAULT_API

if TYPE_CHECKING:
    from ekka.forge.client import GitHubClient


class GitHubPrLookup:
    """Maps a commit sha to the number of the merged pull request that introduced it."""

    def __init__(
        self,
        repository: str,
        *,
        token: str | None = None,
        api: str = DEFAULT_API,
        timeout: float = 10,
        client: GitHubClient | None = None,
    ) -> None:
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise UsageError(
                f"GitHub repository {repository!r}: give it as OWNER/NAME, e.g. vllm-project/vllm."
            )
        self.repository = repository
        if client is None:
            from ekka.forge.client import connect
            from ekka.forge.settings import GitHubSettings

            settings = GitHubSettings(api_url=api, token=token)
            client = connect(settings, timeout=timeout, retries=2, backoff=0.25)
        self.client = client
        self.cache: dict[str, int | None] = {}
        self.errors: list[str] = []

    def __call__(self, sha: str) -> int | None:
        if sha not in self.cache:
            self.cache[sha] = self._lookup(sha)
        return self.cache[sha]

    def _lookup(self, sha: str) -> int | None:
        try:
            pulls = self.client.commit_pulls(self.repository, sha)
        except EkkaError as exc:  # GitHubError: refused, or no answer after the retries
            self.errors.append(f"{sha[:10]}: {exc}")
            return None
        return pulls[0] if pulls else None

    def close(self) -> None:
        self.client.close()
