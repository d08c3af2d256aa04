"""The one GitHub client: real PyGithub against a local server that speaks GitHub's API."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ekka.bot.signatures import sign, verify
from ekka.errors import GitHubError
from ekka.forge.client import GitHubClient
from tests.bot.github_server import FakeGitHub

pytestmark = pytest.mark.bot
REPO = "acme/vllm"


def client(github, **kw):
    return GitHubClient(github.url, token="t0k", backoff=0.01, throttle=False, **kw)


def test_comments_reactions_permission_and_pulls(github):
    gh = client(github)
    first = gh.create_comment(REPO, 5, "hello")
    gh.edit_comment(REPO, first, "hello, edited")
    gh.add_reaction(REPO, first, "eyes")
    assert [(c.id, c.body) for c in gh.list_comments(REPO, 5)] == [(first, "hello, edited")]
    github.permissions[(REPO, "alice")] = "write"
    assert gh.permission(REPO, "alice") == "write" and gh.permission(REPO, "bob") == "read"
    github.commit_pulls[(REPO, "abc123")] = [
        {"number": 3, "merged_at": None},
        {"number": 4, "merged_at": "2026-01-01T00:00:00Z"},
    ]
    assert gh.commit_pulls(REPO, "abc123") == [4, 3]
    assert github.reactions[0]["content"] == "eyes"
    assert {r.headers["Authorization"] for r in github.requests} == {"Bearer t0k"}


def test_500_then_200_is_retried(github):
    gh = client(github)
    github.fail("POST", r"/issues/5/comments$", 500)
    github.fail("POST", r"/issues/5/comments$", 502)
    gh.create_comment(REPO, 5, "once")
    assert len(github.seen("POST", r"/issues/5/comments$")) == 3
    assert [c["body"] for c in github.comments_on(REPO, 5)] == ["once"]


def test_secondary_rate_limit_is_waited_out(github):
    waits = []
    gh = client(github, sleep=waits.append)
    github.fail(
        "GET",
        r"/permission$",
        403,
        body={"message": "You have exceeded a secondary rate limit. Please wait a few minutes."},
    )
    github.fail(
        "PATCH", r"/comments/\d+$", 403, body={"message": "x"}, headers={"Retry-After": "3"}
    )
    assert gh.permission(REPO, "carol") == "read"
    comment = gh.create_comment(REPO, 1, "a")
    gh.edit_comment(REPO, comment, "b")
    assert waits == [0.01, 3.0]


def test_a_time_out_is_retried(github):
    gh = client(github, timeout=1)
    github.fail("GET", r"/pulls$", 200, delay=1.6, body=[])
    assert gh.commit_pulls(REPO, "abc") == []
    assert len(github.seen("GET", r"/pulls$")) == 2


def test_a_refusal_is_not_retried_and_persistent_failure_gives_up(github):
    gh = client(github, retries=2)
    with pytest.raises(GitHubError, match="HTTP 404") as refused:
        gh.edit_comment(REPO, 99999, "x")
    assert refused.value.status == 404 and len(github.seen("PATCH", "99999")) == 1
    github.fail("POST", r"/comments$", 503, times=5)
    with pytest.raises(GitHubError, match="kept failing .* after 3 attempts: HTTP 503"):
        gh.create_comment(REPO, 5, "x")
    bad = GitHubClient(github.url, token="wrong", backoff=0.01, throttle=False)
    with pytest.raises(GitHubError, match="401"):
        bad.create_comment(REPO, 5, "x")


def test_a_github_app_acts_with_installation_tokens():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = FakeGitHub(tokens=(), app_public_key=public)
    server.start()
    try:
        app = GitHubClient(server.url, app_id="4242", private_key=pem, backoff=0.01, throttle=False)
        acting = app.for_installation(77)
        assert app.for_installation(77) is acting  # the token is reused until it expires
        acting.create_comment(REPO, 1, "as the app")
        assert server.issued == [(77, "4242")]
        assert server.comments_on(REPO, 1)[0]["body"] == "as the app"
        with pytest.raises(GitHubError, match="no installation"):
            app.for_installation(None)
    finally:
        server.stop()


def test_signatures():
    body = b'{"zen": "Keep it logically awesome."}'
    header = sign("s3cret", body)
    assert header.startswith("sha256=") and verify("s3cret", body, header)
    assert not verify("other", body, header)
    assert not verify("s3cret", body + b" ", header)
    assert not verify("s3cret", body, None) and not verify("s3cret", body, "sha1=abc")
