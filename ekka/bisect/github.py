"""Pull-request lookup through GitHub's REST API (`GET /repos/{owner}/{repo}/commits/{sha}/pulls`).

Used as `commit_range(..., pr_lookup=GitHubPrLookup(...))` when a GitHub repository is
configured; without one (or when the API has no answer) the PR comes from the commit message.
Lookups are cached per sha; an API failure falls back to the message, never stops a bisection.
"""

from __future__ import annotations

from typing import Any

import httpx

from ekka.errors import UsageError

DEFAULT_API = "https://api.github.com"


class GitHubPrLookup:
    """Maps a commit sha to the number of the merged pull request that introduced it."""

    def __init__(
        self,
        repository: str,
        *,
        token: str | None = None,
        api: str = DEFAULT_API,
        timeout: float = 10,
    ) -> None:
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise UsageError(
                f"GitHub repository {repository!r}: give it as OWNER/NAME, e.g. vllm-project/vllm."
            )
        self.repository = repository
        headers = {"Accept": "application/vnd.github+json", "User-Agent": "ekka"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=timeout)
        self.cache: dict[str, int | None] = {}
        self.errors: list[str] = []

    def __call__(self, sha: str) -> int | None:
        if sha not in self.cache:
            self.cache[sha] = self._lookup(sha)
        return self.cache[sha]

    def _lookup(self, sha: str) -> int | None:
        try:
            response = self.client.get(f"/repos/{self.repository}/commits/{sha}/pulls")
        except httpx.HTTPError as exc:
            self.errors.append(f"{sha[:10]}: {exc}")
            return None
        if response.status_code != 200:
            self.errors.append(f"{sha[:10]}: HTTP {response.status_code}")
            return None
        pulls: list[dict[str, Any]] = response.json()
        merged = [p for p in pulls if p.get("merged_at")] or pulls
        return int(merged[0]["number"]) if merged else None

    def close(self) -> None:
        self.client.close()
