"""What a GitHub client is built from (`ekka.forge.client.connect`): a record that loads
without PyGithub, so that a configuration can hold one."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_API = "https://api.github.com"


@dataclass(frozen=True)
class GitHubSettings:
    """Where GitHub is and how to authenticate: a token, or a GitHub App's id and private key
    (its installations' tokens are fetched per event). `throttle`: pace calls as GitHub asks
    (off only for a local test server)."""

    api_url: str = DEFAULT_API
    token: str | None = None
    app_id: str | None = None
    private_key: str | None = None
    throttle: bool = True

    def __repr__(self) -> str:  # never print a secret
        return f"GitHubSettings(api_url={self.api_url!r}, throttle={self.throttle})"
