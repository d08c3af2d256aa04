"""The worker: answers the commands the webhook queued (permission, reaction, reply, a job)
and runs the jobs, one at a time, resuming those whose worker died.

Two loops: commands (quick: a reply or a new job) and jobs (minutes: `ekka.bot.jobs`), so that
`/ekka status` and `/ekka cancel` are answered while a job runs. `ekka serve` runs both in its
process; `ekka worker` runs them apart. Each command handler has one shape:
`handler(command, parsed, context) -> outcome`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ekka.bot import messages
from ekka.bot.commands import Action, Command, CommandError, parse_line
from ekka.bot.config import BotConfig
from ekka.bot.db import Store
from ekka.bot.queue import FINAL_STATES, InboxCommand, JobState
from ekka.errors import GitHubError
from ekka.forge.client import GitHubClient, connect
from ekka.forge.comments import issue_url, upsert_comment
from ekka.frameworks import framework
from ekka.request import DEFAULT_FRAMEWORK, JobParams

log = logging.getLogger("ekka.bot")
WRITE_PERMISSIONS = ("admin", "maintain", "write")


@dataclass(frozen=True)
class CommandContext:
    """What a command handler may use: configuration, database, the repository's client."""

    config: BotConfig
    store: Store
    github: GitHubClient


CommandHandler = Callable[[InboxCommand, Command, CommandContext], str]


def reply(context: CommandContext, command: InboxCommand, body: str) -> int:
    """Post (or edit, after a crash) the reply to a command; its comment id."""
    marker = messages.command_marker(command.id)
    comment = upsert_comment(
        context.github,
        command.repository,
        command.issue,
        marker,
        body,
        command.reply_comment,
    )
    context.store.update_command(command.id, reply_comment=comment)
    return comment


def may_start_work(context: CommandContext, repository: str, user: str) -> bool:
    """Write access to the repository (GitHub's collaborator permission) or the allow-list."""
    if user.lower() in context.config.allow:
        return True
    return context.github.permission(repository, user) in WRITE_PERMISSIONS


def on_diagnose(command: InboxCommand, parsed: Command, context: CommandContext) -> str:
    marker = messages.command_marker(command.id)
    user = command.author
    if not may_start_work(context, command.repository, user):
        reply(context, command, messages.REFUSED.format(marker=marker, user=user))
        return f"refused: {user} has no write access"
    config = context.config
    repository = config.repository(command.repository)
    assert repository is not None  # the webhook queues commands of configured repositories only
    options = parsed.options
    names = ", ".join(f"`{m.name}`" for m in config.models) or "(none)"
    name = options.get("model") or (config.models[0].name if len(config.models) == 1 else None)
    if name is None:
        what = "a model"
        how = f"write `model=NAME`; the configured models are {names}."
        reply(context, command, messages.NEEDS.format(marker=marker, user=user, what=what, how=how))
        return "no model"
    model = config.model(name)
    if model is None:
        body = messages.UNKNOWN_MODEL.format(marker=marker, user=user, model=name, models=names)
        reply(context, command, body)
        return f"unknown model {name}"
    scenario = None
    if options.get("scenario") is not None:
        scenario = config.scenario(options["scenario"])
        if scenario is None:
            known = ", ".join(f"`{s.name}`" for s in config.scenarios) or "(none)"
            body = messages.UNKNOWN_SCENARIO.format(
                marker=marker, user=user, scenario=options["scenario"], scenarios=known
            )
            reply(context, command, body)
            return f"unknown scenario {options['scenario']}"
    if repository.path is None:
        reply(context, command, messages.NO_CLONE.format(marker=marker, user=user))
        return "no clone"
    good = options.get("good") or repository.good
    bad = options.get("bad") or repository.bad
    if not good or not bad:
        missing = " and ".join(k for k, v in (("good", good), ("bad", bad)) if not v)
        how = f"write `{missing}=REF` (a commit, branch or tag); the bot has no default for it."
        reply(
            context, command, messages.NEEDS.format(marker=marker, user=user, what=missing, how=how)
        )
        return f"no {missing}"
    current = context.store.job_for_command(command.repository, command.comment, command.text)
    busy = [
        j
        for j in context.store.jobs(repository=command.repository, issue=command.issue, limit=5)
        if j.state not in FINAL_STATES and (current is None or j.id != current.id)
    ]
    if busy:
        other = busy[0]
        link = issue_url(command.repository, command.issue, other.reply_comment)
        body = messages.BUSY.format(
            marker=marker, user=user, job=other.id, state=other.state.value, link=link
        )
        reply(context, command, body)
        return f"busy: job {other.id}"
    prompt = options.get("prompt")
    if prompt is None and model.prompt is None and not model.prompt_ids and scenario is None:
        how = f'write `prompt="TEXT"`; the model `{model.name}` has no default prompt.'
        reply(
            context,
            command,
            messages.NEEDS.format(marker=marker, user=user, what="a prompt", how=how),
        )
        return "no prompt"
    params = JobParams(
        request=model.request(
            framework=repository.framework,
            prompt=prompt,
            dtype=options.get("dtype"),
            max_tokens=options.get("max-tokens"),
            engine=parsed.engine,
            scenario=scenario,
        ),
        good=good,
        bad=bad,
        model_name=model.name,
        executor=config.executor,
        command=command.text,
    )
    job = context.store.create_job(
        repository=command.repository,
        issue=command.issue,
        command_comment=command.comment,
        command=command.text,
        requested_by=user,
        installation=command.installation,
        params=params.to_json(),
    ) or context.store.job_for_command(command.repository, command.comment, command.text)
    assert job is not None
    try:
        context.github.add_reaction(command.repository, command.comment, "eyes")
    except GitHubError as exc:  # the reaction is a courtesy: the reply says the same
        log.warning("command %s: no reaction: %s", command.id, exc)
    if job.state is JobState.NEW:
        body = messages.QUEUED.format(
            marker=messages.job_marker(job.id),
            job=job.id,
            framework=framework(repository.framework).title,
            repository=command.repository,
            good=good,
            bad=bad,
            model=model.name,
        )
        comment = upsert_comment(
            context.github,
            command.repository,
            command.issue,
            messages.job_marker(job.id),
            body,
            job.reply_comment,
        )
        context.store.record_comment(job.id, "reply", command.repository, command.issue, comment)
        context.store.update_job(job.id, reply_comment=comment, state=JobState.QUEUED)
    return f"job {job.id}"


def on_status(command: InboxCommand, parsed: Command, context: CommandContext) -> str:
    marker = messages.command_marker(command.id)
    jobs = context.store.jobs(repository=command.repository, issue=command.issue, limit=1)
    if not jobs:
        reply(context, command, messages.NO_JOB.format(marker=marker))
        return "no job"
    job = jobs[0]
    link = issue_url(command.repository, command.issue, job.reply_comment)
    detail = job.error if job.state is JobState.FAILED and job.error else job.progress
    body = messages.STATUS.format(
        marker=marker, job=job.id, link=link, state=job.state.value, progress=detail
    )
    reply(context, command, body)
    return f"status of job {job.id}"


def on_cancel(command: InboxCommand, parsed: Command, context: CommandContext) -> str:
    marker = messages.command_marker(command.id)
    if not may_start_work(context, command.repository, command.author):
        reply(context, command, messages.REFUSED.format(marker=marker, user=command.author))
        return f"refused: {command.author} has no write access"
    jobs = context.store.jobs(repository=command.repository, issue=command.issue, limit=1)
    if not jobs or jobs[0].state in FINAL_STATES:
        reply(context, command, messages.NO_JOB.format(marker=marker))
        return "nothing to cancel"
    job = jobs[0]
    state = context.store.request_cancel(job.id)
    context.store.update_job(job.id, error=f"cancelled by {command.author}")
    what = "cancelled" if state is JobState.CANCELLED else "stopping after the current probe"
    reply(context, command, messages.CANCEL_ACK.format(marker=marker, job=job.id, what=what))
    if state is JobState.CANCELLED and job.reply_comment is not None:
        body = messages.CANCELLED.format(
            marker=messages.job_marker(job.id), job=job.id, user=command.author
        )
        context.github.edit_comment(command.repository, job.reply_comment, body)
    return f"cancel job {job.id}: {state.value}"


def on_help(command: InboxCommand, parsed: Command, context: CommandContext) -> str:
    marker = messages.command_marker(command.id)
    repository = context.config.repository(command.repository)
    name = repository.framework if repository is not None else DEFAULT_FRAMEWORK
    body = messages.HELP.format(
        marker=marker, framework=framework(name).title, usage=messages.usage()
    )
    reply(context, command, body)
    return "help"


COMMANDS: dict[Action, CommandHandler] = {
    Action.DIAGNOSE: on_diagnose,
    Action.STATUS: on_status,
    Action.CANCEL: on_cancel,
    Action.HELP: on_help,
}


class Worker:
    """Runs queued commands and jobs from the database until told to stop."""

    def __init__(self, config: BotConfig, store: Store, github: GitHubClient) -> None:
        self.config = config
        self.store = store
        self.github = github
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    # --- commands ------------------------------------------------------------------------------

    def process_commands(self) -> int:
        """Answer every pending command; how many were handled."""
        handled = 0
        for command in self.store.pending_commands():
            if self.stop.is_set():
                break
            self.process_command(command)
            handled += 1
        return handled

    def process_command(self, command: InboxCommand) -> None:
        try:
            context = CommandContext(
                self.config, self.store, self.github.for_installation(command.installation)
            )
            parsed = parse_line(command.text)
            if isinstance(parsed, CommandError) or command.error:
                message = command.error or (
                    parsed.message if isinstance(parsed, CommandError) else ""
                )
                body = messages.BAD_COMMAND.format(
                    marker=messages.command_marker(command.id),
                    user=command.author,
                    text=command.text,
                    message=message,
                    usage=messages.usage(),
                )
                reply(context, command, body)
                outcome = f"malformed: {message}"
            else:
                outcome = COMMANDS[parsed.action](command, parsed, context)
            self.store.update_command(command.id, state="done", outcome=outcome)
        except GitHubError as exc:  # retried at the next poll, up to max_attempts
            attempts = command.attempts + 1
            state = "failed" if attempts >= self.config.worker.max_attempts else "pending"
            log.warning("command %s: %s (attempt %s)", command.id, exc, attempts)
            self.store.update_command(command.id, state=state, outcome=str(exc), attempts=attempts)
        except Exception as exc:  # a bug or a database failure: logged, never retried forever
            log.exception("command %s", command.id)
            self.store.update_command(
                command.id, state="failed", outcome=f"internal error: {type(exc).__name__}: {exc}"
            )

    # --- jobs ----------------------------------------------------------------------------------

    def run_next_job(self) -> bool:
        """Resume what a dead worker left, claim the oldest queued job and run it; False when
        there was none."""
        settings = self.config.worker
        for job_id in self.store.recover(settings.lease_seconds, settings.max_attempts):
            log.warning("job %s: its worker stopped; resuming it", job_id)
        job = self.store.claim(self.name)
        if job is None:
            return False
        from ekka.bot.jobs import JobRunner

        JobRunner(self.config, self.store, self.github, self.name).run(job)
        return True

    # --- the loops -----------------------------------------------------------------------------

    def start(self) -> None:
        """Both loops in daemon threads."""
        for target, name in ((self._commands_loop, "commands"), (self._jobs_loop, "jobs")):
            thread = threading.Thread(target=target, name=f"ekka-worker-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)

    def _commands_loop(self) -> None:
        while not self.stop.is_set():
            try:
                if self.process_commands():
                    continue
            except Exception:  # the loop outlives any one failure; the log has it
                log.exception("processing commands")
            self.stop.wait(self.config.worker.poll_seconds)

    def _jobs_loop(self) -> None:
        while not self.stop.is_set():
            try:
                if self.run_next_job():
                    continue
            except Exception:
                log.exception("running a job")
            self.stop.wait(self.config.worker.poll_seconds)


def run_worker(config: BotConfig) -> None:
    """`ekka worker`: both loops until SIGINT or SIGTERM."""
    import signal

    from ekka.bot.db import Store

    store = Store(config.database_url)
    github = connect(config.github)
    worker = Worker(config, store, github)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    log.info("worker %s: database %s, GitHub %s", worker.name, store.engine.url, config.api_url)
    worker.start()
    try:
        while not worker.stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        worker.shutdown()
        github.close()
        store.close()
