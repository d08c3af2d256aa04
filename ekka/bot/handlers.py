"""The webhook's handlers: one per event, each `handler(event, context) -> outcome`. They only
read the payload and record or enqueue (no GitHub call, no long work): the worker does the rest.

A payload that is not what its event says raises `MalformedPayload` (the server answers 400).
Events of other kinds, and actions a handler does not act on, are acknowledged and ignored; the
returned outcome says why, and the delivery log keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ekka.bot.commands import Command, command_lines, parse_line
from ekka.bot.config import BotConfig
from ekka.bot.db import Store


class MalformedPayload(Exception):
    """Raised when a webhook's payload lacks a field its event has, or holds the wrong kind."""


@dataclass(frozen=True)
class Event:
    """One webhook delivery: the event's name (X-GitHub-Event), its id (X-GitHub-Delivery)
    and the parsed JSON payload."""

    name: str
    delivery: str
    payload: dict[str, Any]

    @property
    def action(self) -> str | None:
        action = self.payload.get("action")
        return action if isinstance(action, str) else None

    @property
    def repository(self) -> str | None:
        repo = self.payload.get("repository")
        if isinstance(repo, dict) and isinstance(repo.get("full_name"), str):
            return str(repo["full_name"])
        return None


@dataclass(frozen=True)
class Context:
    """What a handler may use: the configuration and the database."""

    config: BotConfig
    store: Store


Handler = Callable[[Event, Context], str]


def field(payload: Any, path: str, kind: type | tuple[type, ...], event: str) -> Any:
    """payload["a"]["b"] for path "a.b", checked to be of `kind` (bool is never an int)."""
    value = payload
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise MalformedPayload(f"{event}: {path} is missing")
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise MalformedPayload(f"{event}: {path} is not a {_name(kind)}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def installation_id(payload: dict[str, Any]) -> int | None:
    value = payload.get("installation")
    if isinstance(value, dict) and isinstance(value.get("id"), int):
        return int(value["id"])
    return None


def on_ping(event: Event, context: Context) -> str:
    field(event.payload, "zen", str, "ping")
    return "pong"


def on_issue_comment(event: Event, context: Context) -> str:
    """Commands of a new comment, or of an edited one whose commands changed: to the inbox."""
    payload = event.payload
    action = field(payload, "action", str, "issue_comment")
    body = field(payload, "comment.body", (str, type(None)), "issue_comment") or ""
    comment = field(payload, "comment.id", int, "issue_comment")
    issue = field(payload, "issue.number", int, "issue_comment")
    author = field(payload, "comment.user.login", str, "issue_comment")
    author_type = payload["comment"]["user"].get("type")
    repository = field(payload, "repository.full_name", str, "issue_comment")
    if action not in ("created", "edited"):
        return f"ignored: action {action}"  # deleted comments take nothing back
    if author_type == "Bot":
        return "ignored: a bot's comment"  # never answer a bot, the bot itself included
    if context.config.repository(repository) is None:
        return f"ignored: {repository} is not configured"
    lines = command_lines(body)
    if action == "edited":
        changes = payload.get("changes")
        body_change = changes.get("body") if isinstance(changes, dict) else None
        before = body_change.get("from") if isinstance(body_change, dict) else None
        old = command_lines(before) if isinstance(before, str) else []
        if lines == old:
            return "ignored: the edit did not change the commands"
        lines = [line for line in lines if line not in old]
    if not lines:
        return "no command"
    queued = 0
    for line in lines:
        parsed = parse_line(line)
        added = context.store.add_command(
            delivery=event.delivery,
            repository=repository,
            issue=issue,
            comment=comment,
            text=line,
            error=None if isinstance(parsed, Command) else parsed.message,
            author=author,
            installation=installation_id(payload),
        )
        queued += added is not None
    return f"{queued} command(s) queued"


def on_installation(event: Event, context: Context) -> str:
    payload = event.payload
    action = field(payload, "action", str, "installation")
    installation = field(payload, "installation.id", int, "installation")
    account = field(payload, "installation.account.login", str, "installation")
    repos = payload.get("repositories") or []
    if not isinstance(repos, list):
        raise MalformedPayload("installation: repositories is not a list")
    names = [
        r["full_name"] for r in repos if isinstance(r, dict) and isinstance(r.get("full_name"), str)
    ]
    context.store.record_installation(installation, account, action, names)
    return f"installation {installation} {action}"


def on_pull_request(event: Event, context: Context) -> str:
    payload = event.payload
    action = field(payload, "action", str, "pull_request")
    repository = field(payload, "repository.full_name", str, "pull_request")
    number = field(payload, "pull_request.number", int, "pull_request")
    pull = payload["pull_request"]
    state = field(payload, "pull_request.state", str, "pull_request")
    head = pull["head"].get("sha") if isinstance(pull.get("head"), dict) else None
    merge = pull.get("merge_commit_sha")
    context.store.record_pull(
        repository,
        number,
        state=state,
        title=str(pull.get("title") or ""),
        head_sha=head if isinstance(head, str) else None,
        merge_commit_sha=merge if isinstance(merge, str) else None,
        merged=bool(pull.get("merged")),
    )
    return f"pull request #{number} {action}"


def on_push(event: Event, context: Context) -> str:
    payload = event.payload
    ref = field(payload, "ref", str, "push")
    after = field(payload, "after", str, "push")
    repository = field(payload, "repository.full_name", str, "push")
    if not ref.startswith("refs/heads/"):
        return f"ignored: {ref} is not a branch"  # tags do not move a branch head
    if set(after) == {"0"}:
        return f"ignored: {ref} was deleted"
    context.store.record_head(repository, ref.removeprefix("refs/heads/"), after)
    return f"head of {ref} is {after[:10]}"


HANDLERS: dict[str, Handler] = {
    "ping": on_ping,
    "issue_comment": on_issue_comment,
    "installation": on_installation,
    "pull_request": on_pull_request,
    "push": on_push,
}


def dispatch(event: Event, context: Context) -> str:
    """Run the event's handler; the outcome for the delivery log."""
    handler = HANDLERS.get(event.name)
    if handler is None:
        return f"ignored: event {event.name}"  # the App may send more events than the bot needs
    if not isinstance(event.payload, dict):
        raise MalformedPayload(f"{event.name}: the payload is not a JSON object")
    return handler(event, context)
