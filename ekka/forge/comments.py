"""Ekka's own comments (the bot's, the nightly sweep's), found by their hidden marker: edit the
one that exists, post one only when there is none (so a worker that died after posting never
posts twice); and the GitHub addresses the comments link to."""

from __future__ import annotations

from ekka.forge.client import GitHubClient


def find_marked(github: GitHubClient, repository: str, issue: int, marker: str) -> int | None:
    """The id of the comment on the issue that carries `marker`, if any."""
    for comment in github.list_comments(repository, issue):
        if marker in comment.body:
            return comment.id
    return None


def upsert_comment(
    github: GitHubClient,
    repository: str,
    issue: int,
    marker: str,
    body: str,
    known: int | None = None,
) -> int:
    """Edit the bot's comment carrying `marker` (the `known` id, else the one found on the
    issue) to `body`, or post it; its id. `body` must contain the marker."""
    assert marker in body, "a bot comment carries its marker"
    comment = known if known is not None else find_marked(github, repository, issue, marker)
    if comment is not None:
        github.edit_comment(repository, comment, body)
        return comment
    return github.create_comment(repository, issue, body)


def commit_url(repository: str, sha: str) -> str:
    return f"https://github.com/{repository}/commit/{sha}"


def pull_url(repository: str, number: int) -> str:
    return f"https://github.com/{repository}/pull/{number}"


def issue_url(repository: str, issue: int, comment: int | None = None) -> str:
    anchor = f"#issuecomment-{comment}" if comment else ""
    return f"https://github.com/{repository}/issues/{issue}{anchor}"
