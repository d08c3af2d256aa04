"""Fixtures of the bot's tests: a local GitHub API server, configurations, stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bot.github_server import FakeGitHub

pytestmark = pytest.mark.bot


@pytest.fixture()
def github() -> Iterator[FakeGitHub]:
    server = FakeGitHub()
    server.start()
    yield server
    server.stop()
