"""Faults: random payloads never make a 5xx, a worker killed in the middle of a job is resumed
by the next one with no comment posted twice, a reply posted just before a crash is found by
its marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekka.bot.db import Store
from ekka.bot.jobs import JobRunner
from ekka.bot.messages import job_marker
from ekka.bot.queue import JobState
from ekka.forge.client import GitHubClient
from ekka.request import JobParams, Request
from tests.bot.conftest import (
    ORACLE,
    REPO,
    SECRET,
    TOKEN,
    bot_config,
    comment_payload,
    wait_for,
)

pytestmark = pytest.mark.bot

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
EVENTS = ["issue_comment", "ping", "push", "pull_request", "installation", "issues", "x" * 64]
PATHS = [
    ("action",),
    ("comment",),
    ("comment", "body"),
    ("comment", "id"),
    ("comment", "user"),
    ("comment", "user", "login"),
    ("comment", "user", "type"),
    ("issue",),
    ("issue", "number"),
    ("repository",),
    ("repository", "full_name"),
    ("changes",),
    ("installation",),
]


def mutated(payload: dict, path: tuple[str, ...], value: object) -> dict:
    payload = json.loads(json.dumps(payload))
    node = payload
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return payload


def test_random_and_mutated_payloads_never_make_a_5xx(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    statuses: set[int] = set()

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        event=st.sampled_from(EVENTS),
        payload=JSON,
        path=st.sampled_from(PATHS),
        value=JSON,
        whole=st.booleans(),
    )
    def check(event, payload, path, value, whole):
        body = payload if whole else mutated(comment_payload("/ekka diagnose good=v1"), path, value)
        answer = bot.deliver(event, body)
        statuses.add(answer.status_code)
        assert answer.status_code < 500, (event, body, answer.text)

    check()
    assert statuses <= {200, 202, 400} and 400 in statuses and 202 in statuses
    assert bot.http.get("/healthz").status_code == 200


def write_config(tmp_path: Path, github, history) -> Path:
    config = bot_config(tmp_path, github, history)
    text = f"""
[github]
throttle = false
[server]
database_url = "{config.database_url}"
workdir = "{config.workdir}"
[executor]
kind = "command"
command = '{ORACLE}'
[worker]
poll_seconds = 0.1
lease_seconds = 2
[[repositories]]
name = "{REPO}"
path = "{history.repo}"
bad = "main"
[[models]]
name = "tiny-llama"
path = "{tmp_path / "model"}"
prompt = "Hello"
"""
    path = tmp_path / "ekka.toml"
    path.write_text(text)
    return path


def start_worker(config: Path, github, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "EKKA_WEBHOOK_SECRET": SECRET,
        "EKKA_GITHUB_TOKEN": TOKEN,
        "EKKA_GITHUB_API_URL": github.url,
        "EKKA_TEST_SLEEP": "0.7",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ekka.cli", "worker", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_worker_killed_mid_job_is_resumed_without_duplicate_comments(
    tmp_path, github, history, start_bot
):
    config_file = write_config(tmp_path, github, history)
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    bot.command(github, f"/ekka diagnose good={history.good}")
    log = tmp_path / "worker.log"
    first = start_worker(config_file, github, log)
    try:
        wait_for(
            lambda: (j := bot.store.job(1)) is not None and "probed 3 of" in j.progress,
            timeout=60,
            what="three verdicts (the endpoints are cached once both are known)",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean-up of any kind
        first.wait()
    killed = bot.store.job(1)
    assert killed.state is JobState.RUNNING and killed.attempts == 1
    second = start_worker(config_file, github, log)
    try:
        job = wait_for(
            lambda: (j := bot.store.job(1)) is not None and j.state is JobState.DONE and j,
            timeout=90,
            what="the resumed job",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    assert job.attempts == 2, log.read_text()
    replies = github.bot_comments(REPO, 12)
    assert len(replies) == 1, [c["body"] for c in replies]  # the one reply, edited throughout
    assert history.bug[:10] in replies[0]["body"]
    assert len(github.bot_comments(REPO, history.bug_pr)) == 1
    # the verdicts probed before the kill came from the cache the second time
    bisection = json.loads((Path(job.report_dir) / "bisection.json").read_text())
    assert bisection["cached"] >= 2
    assert "resuming it" in log.read_text()


def test_a_reply_posted_just_before_a_crash_is_found_and_edited(tmp_path, github, history):
    config = bot_config(tmp_path, github, history)
    store = Store(config.database_url)
    job = store.create_job(
        repository=REPO,
        issue=12,
        command_comment=1,
        command="/ekka diagnose",
        requested_by="alice",
        installation=None,
        params=JobParams(
            Request(model="/models/tiny-llama", prompt_ids=(1, 2)),
            good=history.good,
            bad="main",
            model_name="tiny-llama",
        ).to_json(),
    )
    # the worker posted the reply, then died before storing its id
    github.add_comment(REPO, 12, f"{job_marker(job.id)}\nqueued", github.bot_login)
    store.update_job(job.id, state=JobState.QUEUED)
    claimed = store.claim("w1")
    client = GitHubClient(github.url, token=TOKEN, backoff=0.01, throttle=False)
    assert JobRunner(config, store, client, "w1").run(claimed) is JobState.DONE
    [reply] = github.bot_comments(REPO, 12)
    assert reply["_edits"] >= 2 and "first bad commit found" in reply["body"]
    assert store.job(job.id).reply_comment == reply["id"]
    assert [c["kind"] for c in store.comments_of(job.id)] == ["reply", "pr"]
    store.close()
