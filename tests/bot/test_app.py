"""The real server on loopback with signed deliveries: signatures, replays, malformed payloads,
commands, permissions, and a whole job with the command oracle against a local history."""

from __future__ import annotations

import pytest

from ekka.bot.queue import JobState
from ekka.request import JobParams
from tests.bot.conftest import (
    MAINTAINER,
    REPO,
    bot_config,
    comment_payload,
    wait_for,
)

pytestmark = pytest.mark.bot


def test_ping_healthz_and_signatures(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    assert bot.deliver("ping", {"zen": "Design for failure.", "hook_id": 1}).status_code == 202
    assert bot.http.get("/healthz").json() == {"status": "ok", "database": True, "worker": True}
    missing = bot.deliver("ping", {"zen": "x"}, secret=None)
    wrong = bot.deliver("ping", {"zen": "x"}, secret="not-the-secret")
    assert missing.status_code == 401 and wrong.status_code == 401
    from ekka.bot.facts import deliveries

    assert bot.store.count(deliveries) == 1  # refused deliveries are not even recorded


def test_a_replayed_delivery_is_ignored_across_restarts(tmp_path, github, history, start_bot):
    config = bot_config(tmp_path, github, history)
    bot = start_bot(config, with_worker=False)
    payload = comment_payload("/ekka help")
    first = bot.deliver("issue_comment", payload, delivery="d-1")
    again = bot.deliver("issue_comment", payload, delivery="d-1")
    assert first.status_code == 202 and first.json()["outcome"] == "1 command(s) queued"
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    bot.stop()
    restarted = start_bot(config, with_worker=False)
    assert (
        restarted.deliver("issue_comment", payload, delivery="d-1").json()["status"] == "duplicate"
    )
    # a new delivery of the same comment (GitHub's "redeliver" keeps the id; a new id is a
    # new event) still queues the line once
    assert restarted.deliver("issue_comment", payload, delivery="d-2").json()["outcome"] == (
        "0 command(s) queued"
    )
    assert len(restarted.store.commands()) == 1


@pytest.mark.parametrize(
    ("event", "payload", "message"),
    [
        ("issue_comment", {"action": "created"}, "comment.body is missing"),
        (
            "issue_comment",
            {**comment_payload("/ekka help"), "issue": {"number": "12"}},
            "issue.number is not a int",
        ),
        (
            "issue_comment",
            {**comment_payload("/ekka help"), "comment": []},
            "comment.body is missing",
        ),
        ("push", {"ref": 3}, "ref is not a str"),
        (
            "pull_request",
            {"action": "opened", "repository": {"full_name": REPO}},
            "pull_request.number",
        ),
        ("installation", {"action": "created", "installation": {"id": True}}, "installation.id"),
        ("ping", {}, "zen is missing"),
    ],
)
def test_a_payload_that_is_not_what_the_event_says_is_400(
    tmp_path, github, history, start_bot, event, payload, message
):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    answer = bot.deliver(event, payload)
    assert answer.status_code == 400 and message in answer.json()["error"]


def test_bodies_that_are_not_json_objects_are_400(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    for body in (b"", b"not json", b"[1, 2]", b"\xff\xfe", b'"text"', b"null"):
        assert bot.deliver("issue_comment", None, body=body).status_code == 400
    headerless = bot.http.post(
        "/webhook", content=b"{}", headers={"X-Hub-Signature-256": "sha256=0"}
    )
    assert headerless.status_code == 401
    assert bot.http.get("/healthz").status_code == 200


def test_commands_in_code_blocks_quotes_and_from_bots_queue_nothing(
    tmp_path, github, history, start_bot
):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    for body, kw in [
        ("```\n/ekka diagnose\n```", {}),
        ("> /ekka diagnose", {}),
        ("we could run `/ekka diagnose` later", {}),
        ("/ekka diagnose", {"user_type": "Bot", "user": "ekka-bot[bot]"}),
        ("/ekka diagnose", {"repository": "someone/else"}),
        ("/ekka diagnose", {"action": "deleted"}),
    ]:
        assert bot.deliver("issue_comment", comment_payload(body, **kw)).status_code == 202
    assert bot.store.commands() == []


def test_an_edit_counts_only_when_the_commands_change(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    edited = comment_payload("typo fixed\n/ekka help", action="edited", before="typo\n/ekka help")
    assert bot.deliver("issue_comment", edited).json()["outcome"].startswith("ignored: the edit")
    changed = comment_payload("/ekka help\n/ekka status", action="edited", before="/ekka help")
    assert bot.deliver("issue_comment", changed).json()["outcome"] == "1 command(s) queued"
    assert [c["text"] for c in bot.store.commands()] == ["/ekka status"]


def test_push_pull_request_and_installation_are_recorded(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history), with_worker=False)
    repo = {"full_name": REPO}
    bot.deliver("push", {"ref": "refs/heads/main", "after": "a" * 40, "repository": repo})
    bot.deliver("push", {"ref": "refs/tags/v1", "after": "b" * 40, "repository": repo})
    pull = {"number": 9006, "state": "closed", "title": "Llama norms", "merged": True,
            "head": {"sha": "c" * 40}, "merge_commit_sha": "d" * 40}  # fmt: skip
    bot.deliver("pull_request", {"action": "closed", "pull_request": pull, "repository": repo})
    install = {"id": 77, "account": {"login": "acme"}}
    bot.deliver(
        "installation", {"action": "created", "installation": install, "repositories": [repo]}
    )
    assert bot.store.head(REPO, "main") == "a" * 40 and bot.store.head(REPO, "v1") is None
    assert bot.store.pull(REPO, 9006)["merge_commit_sha"] == "d" * 40
    assert bot.store.installation(77)["account"] == "acme"


def test_a_non_collaborator_gets_a_polite_refusal_and_no_job(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, "/ekka diagnose good=HEAD~3", user="mallory")
    wait_for(lambda: github.bot_comments(REPO, 12), what="the refusal")
    [refusal] = github.bot_comments(REPO, 12)
    assert "@mallory" in refusal["body"] and "write access" in refusal["body"]
    assert bot.store.jobs() == [] and github.reactions == []
    assert github.seen("GET", "/collaborators/mallory/permission")


def test_the_allow_list_admits_without_write_access(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, f"/ekka diagnose good={history.good}", user="trusted-bob")
    job = wait_for(lambda: bot.store.jobs(), what="a job")[0]
    assert job.requested_by == "trusted-bob"
    assert not github.seen("GET", "/collaborators/trusted-bob/permission")


def test_help_status_and_bad_commands_get_replies(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, "/ekka help\n/ekka status")
    bot.command(github, "/ekka diagnose colour=red")
    bot.command(github, "/ekka diagnose model=gpt-9 good=x")
    bot.command(github, "/ekka diagnose scenario=prefix-hit")
    replies = wait_for(
        lambda: len(github.bot_comments(REPO, 12)) >= 5 and github.bot_comments(REPO, 12)
    )
    bodies = [c["body"] for c in replies]
    assert any("/ekka diagnose [model=NAME]" in b and "<!-- ekka-command:" in b for b in bodies)
    assert any("no Ekka job on this issue" in b for b in bodies)
    assert any("unknown key 'colour'" in b and "```text" in b for b in bodies)
    assert any("no model `gpt-9`" in b and "`tiny-llama`" in b for b in bodies)
    assert any("no scenario `prefix-hit`" in b and "(none)" in b for b in bodies)
    assert bot.store.jobs() == []


def test_diagnose_end_to_end_with_the_command_oracle(tmp_path, github, history, start_bot):
    """A maintainer's command: eyes, one reply edited with progress and then the report, one
    comment on the first bad commit's PR (its number from the squash message: the API has
    none), the job's JSON and report over HTTP."""
    bot = start_bot(bot_config(tmp_path, github, history))
    body = f"Bisect please.\n/ekka diagnose good={history.good[:12]} bad=main max-tokens=3"
    answer = bot.command(github, body)
    assert answer.status_code == 202
    job = wait_for(
        lambda: (j := bot.store.job(1)) is not None and j.state is JobState.DONE and j,
        what="the job to finish",
    )
    replies = github.bot_comments(REPO, 12)
    assert len(replies) == 1, [c["body"] for c in replies]
    final = replies[0]["body"]
    assert final.startswith("<!-- ekka-job:1 -->") and replies[0]["_edits"] >= 2
    assert f"[`{history.bug[:10]}`](https://github.com/{REPO}/commit/{history.bug})" in final
    assert f"[PR #{history.bug_pr}](https://github.com/{REPO}/pull/{history.bug_pr})" in final
    assert "--good " + history.good[:12] in final and "http://ekka.test/jobs/1/report" in final
    [pr_comment] = github.comments_on(REPO, history.bug_pr)
    assert "<!-- ekka-job:1 pr -->" in pr_comment["body"] and "#12" in pr_comment["body"]
    assert [r["content"] for r in github.reactions] == ["eyes"]
    assert (
        JobParams.from_json(job.params).request.max_tokens == 3 and job.pr_number == history.bug_pr
    )
    data = bot.http.get("/jobs/1").json()
    assert data["state"] == "done" and data["result"]["first_bad"]["sha"] == history.bug
    assert data["links"]["report"] == "http://ekka.test/jobs/1/report"
    # the job's parameters: one versioned shape; the executor's settings are not shown
    assert data["params"]["version"] == 1 and data["params"]["executor"] == {"kind": "command"}
    assert data["params"]["request"]["max_tokens"] == 3
    report = bot.http.get("/jobs/1/report")
    assert report.status_code == 200 and history.bug[:10] in report.text
    assert "jobs/1" in bot.http.get("/").text
    assert bot.http.get("/jobs/99").status_code == 404
    # /ekka status afterwards names the job and its state
    bot.command(github, "/ekka status")
    status = wait_for(
        lambda: len(github.bot_comments(REPO, 12)) == 2 and github.bot_comments(REPO, 12)[1]
    )
    assert "Job #1" in status["body"] and "**done**" in status["body"]
    assert MAINTAINER


def test_github_500_then_200_during_a_job_is_retried(tmp_path, github, history, start_bot):
    github.fail("POST", r"/issues/12/comments$", 500)
    github.fail("PATCH", r"/issues/comments/\d+$", 502)
    github.fail("POST", r"/reactions$", 500)
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, f"/ekka diagnose good={history.good}")
    wait_for(lambda: (j := bot.store.job(1)) is not None and j.state is JobState.DONE)
    assert len(github.bot_comments(REPO, 12)) == 1
    # the user's comment is made directly; the bot's: the 500, then the comment
    assert len(github.seen("POST", r"/issues/12/comments$")) == 2
    assert github.failures == []


def test_a_job_whose_github_calls_keep_failing_ends_failed(tmp_path, github, history, start_bot):
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.worker.github.retries = 2
    bot.command(github, f"/ekka diagnose good={history.good}")
    wait_for(lambda: bot.store.jobs() and bot.store.jobs()[0].reply_comment, what="the reply")
    github.fail("PATCH", r"/issues/comments/\d+$", 503, times=10_000)
    job = wait_for(lambda: (j := bot.store.job(1)) is not None and j.state is JobState.FAILED and j)
    assert "GitHub" in job.error and "503" in job.error
    assert bot.http.get("/healthz").status_code == 200
    github.failures.clear()


def test_cancel_stops_a_running_job(tmp_path, github, history, start_bot, monkeypatch):
    monkeypatch.setenv("EKKA_TEST_SLEEP", "0.5")
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, f"/ekka diagnose good={history.good}")
    wait_for(lambda: (j := bot.store.job(1)) is not None and "probed" in j.progress)
    bot.command(github, "/ekka cancel")
    job = wait_for(
        lambda: (j := bot.store.job(1)) is not None and j.state is JobState.CANCELLED and j
    )
    assert job.cancel_requested
    bodies = [c["body"] for c in github.bot_comments(REPO, 12)]
    assert any("was cancelled by @alice" in b for b in bodies)
    assert any("stopping after the current probe" in b for b in bodies)


def test_as_a_github_app_the_bot_acts_with_the_installations_token(tmp_path, history, start_bot):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ekka.bot.config import from_mapping
    from tests.bot.conftest import SECRET
    from tests.bot.github_server import FakeGitHub

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    github = FakeGitHub(tokens=(), app_public_key=public.decode())
    github.start()
    try:
        github.permissions[(REPO, MAINTAINER)] = "admin"
        config = from_mapping(
            {
                "github": {"throttle": False},
                "server": {"database_url": f"sqlite:///{tmp_path / 'bot.db'}"},
                "worker": {"poll_seconds": 0.05},
                "repositories": [{"name": REPO}],
            },
            {
                "EKKA_WEBHOOK_SECRET": SECRET,
                "EKKA_GITHUB_APP_ID": "4242",
                "EKKA_GITHUB_PRIVATE_KEY_PATH": str(pem),
                "EKKA_GITHUB_API_URL": github.url,
            },
            "the App's configuration",
        )
        bot = start_bot(config)
        comment = github.add_comment(REPO, 3, "/ekka help", MAINTAINER)
        payload = comment_payload("/ekka help", issue=3, comment=comment["id"])
        payload["installation"] = {"id": 77}
        assert bot.deliver("issue_comment", payload).status_code == 202
        [reply] = wait_for(lambda: github.bot_comments(REPO, 3), what="the App's reply")
        assert "/ekka diagnose" in reply["body"]
        assert github.issued == [(77, "4242")]  # a JWT signed with the App's key, verified
        [post] = github.seen("POST", r"/issues/3/comments$")[-1:]
        assert post.headers["Authorization"] == "Bearer ghs_installation_77_0"
    finally:
        github.stop()


def test_missing_values_without_defaults_are_asked_for(tmp_path, github, history, start_bot):
    models = [
        {"name": "a", "path": str(tmp_path / "a")},
        {"name": "b", "path": str(tmp_path / "b"), "prompt_ids": [1, 2, 3]},
    ]
    config = bot_config(tmp_path, github, history, models=models)
    bot = start_bot(config)
    bot.command(github, "/ekka diagnose good=v1")  # two models: which one?
    bot.command(github, "/ekka diagnose model=a good=v1")  # a has no default prompt
    replies = wait_for(
        lambda: len(github.bot_comments(REPO, 12)) == 2 and github.bot_comments(REPO, 12)
    )
    bodies = sorted(r["body"] for r in replies)
    assert any("needs a model" in b and "`a`, `b`" in b for b in bodies)
    assert any('needs a prompt: write `prompt="TEXT"`' in b for b in bodies)
    assert bot.store.jobs() == []


@pytest.mark.postgres
def test_a_whole_job_with_the_queue_on_postgresql(tmp_path, github, history, start_bot):
    import os

    import sqlalchemy as sa

    from ekka.bot.db import Store
    from ekka.storage.sweeps import SweepStore

    url = os.environ.get("EKKA_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("EKKA_REQUIRE_POSTGRES"):
            pytest.fail("EKKA_TEST_POSTGRES_URL is not set, and CI requires PostgreSQL")
        pytest.skip("EKKA_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server)")
    engine = sa.create_engine(url)
    for tables in (*Store.metadata, *SweepStore.metadata):
        tables.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS verdicts"))
    engine.dispose()
    bot = start_bot(bot_config(tmp_path, github, history, database_url=url))
    bot.command(github, f"/ekka diagnose good={history.good}")
    bot.deliver("ping", {"zen": "x"}, delivery="pg-1")
    assert bot.deliver("ping", {"zen": "x"}, delivery="pg-1").json()["status"] == "duplicate"
    job = wait_for(lambda: (j := bot.store.job(1)) is not None and j.state is JobState.DONE and j)
    assert job.result["first_bad"]["sha"] == history.bug and job.pr_number == history.bug_pr
    [reply] = github.bot_comments(REPO, 12)
    assert history.bug[:10] in reply["body"]


def test_one_job_per_issue_at_a_time(tmp_path, github, history, start_bot, monkeypatch):
    monkeypatch.setenv("EKKA_TEST_SLEEP", "0.3")
    bot = start_bot(bot_config(tmp_path, github, history))
    bot.command(github, f"/ekka diagnose good={history.good}")
    wait_for(lambda: (j := bot.store.job(1)) is not None and j.state is JobState.RUNNING)
    bot.command(github, f"/ekka diagnose good={history.good} max-tokens=2")
    busy = wait_for(
        lambda: [c for c in github.bot_comments(REPO, 12) if "already running" in c["body"]]
    )
    assert "job #1 is already running" in busy[0]["body"] and len(bot.store.jobs()) == 1
    wait_for(lambda: bot.store.job(1).state is JobState.DONE)
    bot.command(github, f"/ekka diagnose good={history.good} max-tokens=2")  # now it may
    wait_for(lambda: len(bot.store.jobs()) == 2)
