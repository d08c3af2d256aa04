"""Fixtures of the bot's tests: a local GitHub API server, a git history with a regression,
configurations, and the real server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from ekka.bisect.framework_repo import BugHistory
from ekka.bot.app import build
from ekka.bot.config import BotConfig, from_mapping
from ekka.bot.signatures import sign
from tests.bot.github_server import FakeGitHub

SECRET = "s3cret-for-tests"
TOKEN = "t0k"
REPO = "acme/vllm"
MAINTAINER = "alice"
# the oracle: good while value.txt says "good"; EKKA_TEST_SLEEP slows each probe down
ORACLE = 'sleep "${EKKA_TEST_SLEEP:-0}"; test "$(cat value.txt)" = good'


@dataclass(frozen=True)
class History:
    repo: Path
    good: str
    bad: str
    bug: str
    bug_pr: int
    commits: int


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.org",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.org",
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "HOME": str(repo),
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.strip()


def make_history(root: Path, commits: int = 8, bug_at: int = 5) -> History:
    """A repository: a good base, then `commits` squash-merged PRs (#101 ...), the one at
    `bug_at` breaks value.txt."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "value.txt").write_text("good\n")
    (repo / "notes.txt").write_text("0\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    good = git(repo, "rev-parse", "HEAD")
    bug = ""
    for i in range(1, commits + 1):
        pr = 100 + i
        if i == bug_at:
            (repo / "value.txt").write_text("bad\n")
            message = f"[Core] Compute the value differently (#{pr})"
        else:
            (repo / "notes.txt").write_text(f"{i}\n")
            message = f"[Misc] Tidy notes ({i}) (#{pr})"
        git(repo, "commit", "-q", "-am", message)
        if i == bug_at:
            bug = git(repo, "rev-parse", "HEAD")
    return History(repo, good, git(repo, "rev-parse", "HEAD"), bug, 100 + bug_at, commits)


@dataclass(frozen=True)
class FrameworkHistory:
    """A local history of a framework's release sources with a planted regression, and the
    database (the bot's, the verdict cache's, the sweeps') the tests on it share."""

    framework: str
    history: BugHistory
    model: Path
    database_url: str


@pytest.fixture(scope="session")
def sglang_history(
    tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[..., Path]
) -> FrameworkHistory:
    """SGLang's history for the bot's tests (once per session): release, a harmless commit, the
    regression of `ekka demo --framework sglang` (#9002), a harmless commit; the bot's
    end-to-end test and the nightly sweep's share it and its verdicts (each probe starts
    SGLang), so whichever runs second probes only what it is about."""
    from tests.sglang.conftest import demo_history, demo_model

    root = tmp_path_factory.mktemp("sglang-bot")
    history = demo_history(root, before=1, after=1)
    model = demo_model(zoo_model)
    return FrameworkHistory("sglang", history, model, f"sqlite:///{root / 'bot.db'}")


@pytest.fixture()
def github() -> Iterator[FakeGitHub]:
    server = FakeGitHub(tokens=(TOKEN,))
    server.start()
    server.permissions[(REPO, MAINTAINER)] = "write"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("history"))


def bot_config(
    tmp_path: Path,
    github: FakeGitHub,
    history: History,
    models: list[dict[str, object]] | None = None,
    **server: object,
) -> BotConfig:
    data = {
        "github": {"throttle": False},
        "server": {
            "base_url": "http://ekka.test",
            "database_url": f"sqlite:///{tmp_path / 'bot.db'}",
            "workdir": str(tmp_path / "work"),
            **server,
        },
        "executor": {"kind": "command", "command": ORACLE, "timeout": 60},
        "worker": {"poll_seconds": 0.05, "lease_seconds": 2, "max_attempts": 3},
        "permissions": {"allow": ["trusted-bob"]},
        "repositories": [{"name": REPO, "path": str(history.repo), "bad": "main"}],
        "models": models
        if models is not None
        else [{"name": "tiny-llama", "path": str(tmp_path / "model"), "prompt": "Hello"}],
    }
    env = {
        "EKKA_WEBHOOK_SECRET": SECRET,
        "EKKA_GITHUB_TOKEN": TOKEN,
        "EKKA_GITHUB_API_URL": github.url,
    }
    return from_mapping(data, env, "the test configuration")


class RunningBot:
    """The real app under uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, config: BotConfig, with_worker: bool = True) -> None:
        self.config = config
        self.app, self.store, self.worker = build(config, with_worker=with_worker)
        if self.worker is not None:
            self.worker.github.backoff = 0.01
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def deliver(
        self,
        event: str,
        payload: object,
        *,
        delivery: str | None = None,
        secret: str | None = SECRET,
        body: bytes | None = None,
    ) -> httpx.Response:
        raw = body if body is not None else json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "Content-Type": "application/json",
        }
        if secret is not None:
            headers["X-Hub-Signature-256"] = sign(secret, raw)
        return self.http.post("/webhook", content=raw, headers=headers)

    def command(
        self,
        github: FakeGitHub,
        body: str,
        *,
        user: str = MAINTAINER,
        issue: int = 12,
        **kw: object,
    ) -> httpx.Response:
        """A user's comment, made on the GitHub server, then delivered as GitHub would."""
        comment = github.add_comment(REPO, issue, body, user)
        payload = comment_payload(body, user=user, issue=issue, comment=comment["id"], **kw)  # type: ignore[arg-type]
        return self.deliver("issue_comment", payload)

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


@pytest.fixture()
def start_bot() -> Iterator[object]:
    running: list[RunningBot] = []

    def start(config: BotConfig, with_worker: bool = True) -> RunningBot:
        bot = RunningBot(config, with_worker)
        running.append(bot)
        return bot

    yield start
    for bot in running:
        bot.stop()


def comment_payload(
    body: str,
    *,
    user: str = MAINTAINER,
    issue: int = 12,
    comment: int = 555,
    action: str = "created",
    repository: str = REPO,
    before: str | None = None,
    user_type: str = "User",
) -> dict[str, object]:
    payload: dict[str, object] = {
        "action": action,
        "issue": {"number": issue, "title": "Llama answers are off"},
        "comment": {"id": comment, "body": body, "user": {"login": user, "type": user_type}},
        "repository": {"full_name": repository},
        "sender": {"login": user},
    }
    if before is not None:
        payload["changes"] = {"body": {"from": before}}
    return payload


def wait_for(predicate, timeout: float = 20.0, what: str = "the condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
