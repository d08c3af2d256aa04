"""The bot's queue: the jobs (claimed with a conditional UPDATE, so several workers never run
the same job; leases renewed by a heartbeat, a dead worker's job requeued), the inbox of
command lines the webhook received for the worker, and the comments the bot posted per job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ekka.storage.database import Database, aware, now


class JobState(str, Enum):
    """Where a job is."""

    NEW = "new"  # created; its reply comment is being posted, then it is queued
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


metadata = sa.MetaData()

jobs = sa.Table(
    "bot_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("issue", sa.Integer, nullable=False),
    sa.Column("command_comment", sa.BigInteger, nullable=False),
    sa.Column("command_key", sa.String(64), nullable=False),
    sa.Column("requested_by", sa.String(256), nullable=False),
    sa.Column("installation", sa.BigInteger, nullable=True),
    sa.Column("params_json", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Text, nullable=False, default=""),
    sa.Column("reply_comment", sa.BigInteger, nullable=True),
    sa.Column("pr_number", sa.Integer, nullable=True),
    sa.Column("pr_comment", sa.BigInteger, nullable=True),
    sa.Column("result_json", sa.Text, nullable=True),
    sa.Column("report_dir", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("worker", sa.String(128), nullable=True),
    sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("repository", "command_comment", "command_key", name="uq_bot_jobs_command"),
)

inbox = sa.Table(
    "bot_commands",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery", sa.String(64), nullable=False),
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("issue", sa.Integer, nullable=False),
    sa.Column("comment", sa.BigInteger, nullable=False),
    sa.Column("command_key", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),  # set when the line is not a valid command
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("installation", sa.BigInteger, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # pending, done
    sa.Column("outcome", sa.Text, nullable=False, default=""),
    sa.Column("reply_comment", sa.BigInteger, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("repository", "comment", "command_key", name="uq_bot_commands_line"),
)

comments = sa.Table(
    "bot_comments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "reply" (on the issue), "pr"
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("issue", sa.Integer, nullable=False),
    sa.Column("github_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("job", "kind", name="uq_bot_comments_job_kind"),
)


@dataclass(frozen=True)
class Job:
    """A row of the job queue."""

    id: int
    repository: str
    issue: int
    command_comment: int
    requested_by: str
    installation: int | None
    params: dict[str, Any]
    state: JobState
    progress: str
    reply_comment: int | None
    pr_number: int | None
    pr_comment: int | None
    result: dict[str, Any] | None
    report_dir: str | None
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repository": self.repository,
            "issue": self.issue,
            "requested_by": self.requested_by,
            "params": self.params,
            "state": self.state.value,
            "progress": self.progress,
            "reply_comment": self.reply_comment,
            "pr_number": self.pr_number,
            "pr_comment": self.pr_comment,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class InboxCommand:
    """A command line the webhook received, waiting for the worker (permission, reply, job)."""

    id: int
    repository: str
    issue: int
    comment: int
    text: str
    error: str | None
    author: str
    installation: int | None
    state: str
    outcome: str
    reply_comment: int | None
    attempts: int


def command_key(text: str) -> str:
    """What identifies a command within its comment: the sha256 of its normalized text."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        repository=row.repository,
        issue=row.issue,
        command_comment=row.command_comment,
        requested_by=row.requested_by,
        installation=row.installation,
        params=json.loads(row.params_json),
        state=JobState(row.state),
        progress=row.progress or "",
        reply_comment=row.reply_comment,
        pr_number=row.pr_number,
        pr_comment=row.pr_comment,
        result=json.loads(row.result_json) if row.result_json else None,
        report_dir=row.report_dir,
        error=row.error,
        attempts=row.attempts,
        cancel_requested=bool(row.cancel_requested),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


class JobQueue(Database):
    """The jobs, the inbox of commands and the comments posted, on one engine."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = (metadata,)

    # --- jobs ------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        repository: str,
        issue: int,
        command_comment: int,
        command: str,
        requested_by: str,
        installation: int | None,
        params: dict[str, Any],
    ) -> Job | None:
        """Make a job (state new: queue it once its reply is posted); None when this
        command of this comment already has one."""
        stamp = now()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.insert(jobs).values(
                        repository=repository,
                        issue=issue,
                        command_comment=command_comment,
                        command_key=command_key(command),
                        requested_by=requested_by,
                        installation=installation,
                        params_json=json.dumps(params, sort_keys=True),
                        state=JobState.NEW.value,
                        progress="queued",
                        attempts=0,
                        cancel_requested=False,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                job_id = int(key[0])
        except IntegrityError:
            return None
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else _job(row)

    def job_for_command(self, repository: str, comment: int, text: str) -> Job | None:
        """The job a command line of a comment started, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(jobs).where(
                    jobs.c.repository == repository,
                    jobs.c.command_comment == comment,
                    jobs.c.command_key == command_key(text),
                )
            ).first()
        return None if row is None else _job(row)

    def jobs(
        self, *, limit: int = 50, repository: str | None = None, issue: int | None = None
    ) -> list[Job]:
        """The newest jobs first."""
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if repository is not None:
            query = query.where(jobs.c.repository == repository)
        if issue is not None:
            query = query.where(jobs.c.issue == issue)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query)]

    def update_job(self, job_id: int, **values: Any) -> None:
        if "state" in values and isinstance(values["state"], JobState):
            values["state"] = values["state"].value
        if "result" in values:
            values["result_json"] = json.dumps(values.pop("result"), sort_keys=True)
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(updated_at=now(), **values)
            )

    def claim(self, worker: str) -> Job | None:
        """Take the oldest queued job for `worker` (state running, attempts + 1)."""
        while True:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.state == JobState.QUEUED.value)
                    .order_by(jobs.c.id)
                    .limit(1)
                ).first()
            if row is None:
                return None
            stamp = now()
            with self.engine.begin() as conn:
                taken = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == row.id, jobs.c.state == JobState.QUEUED.value)
                    .values(
                        state=JobState.RUNNING.value,
                        worker=worker,
                        heartbeat=stamp,
                        updated_at=stamp,
                        attempts=jobs.c.attempts + 1,
                    )
                ).rowcount
            if taken:
                return self.job(row.id)

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Renew the lease; False when the job is no longer this worker's."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(jobs)
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.worker == worker,
                        jobs.c.state == JobState.RUNNING.value,
                    )
                    .values(heartbeat=now())
                ).rowcount
            )

    def recover(self, lease_seconds: float, max_attempts: int) -> list[int]:
        """Requeue running jobs whose worker stopped renewing its lease (it died): no job is
        lost; one interrupted `max_attempts` times ends failed. Returns the requeued ids."""
        cutoff = now() - timedelta(seconds=lease_seconds)
        requeued: list[int] = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.attempts, jobs.c.heartbeat).where(
                    jobs.c.state == JobState.RUNNING.value
                )
            ).all()
            for row in rows:
                if row.heartbeat is not None and aware(row.heartbeat) > cutoff:
                    continue
                if row.attempts >= max_attempts:
                    conn.execute(
                        sa.update(jobs)
                        .where(jobs.c.id == row.id)
                        .values(
                            state=JobState.FAILED.value,
                            error=f"the job was interrupted {row.attempts} times",
                            updated_at=now(),
                        )
                    )
                    continue
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == row.id, jobs.c.state == JobState.RUNNING.value)
                    .values(state=JobState.QUEUED.value, worker=None, updated_at=now())
                )
                requeued.append(row.id)
        return requeued

    def request_cancel(self, job_id: int) -> JobState:
        """A queued job is cancelled at once; a running one is told to stop. The new state."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value)
                .values(state=JobState.CANCELLED.value, progress="cancelled", updated_at=now())
            )
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value)
                .values(cancel_requested=True, updated_at=now())
            )
        job = self.job(job_id)
        assert job is not None
        return job.state

    # --- the inbox of commands -----------------------------------------------------------------

    def add_command(
        self,
        *,
        delivery: str,
        repository: str,
        issue: int,
        comment: int,
        text: str,
        error: str | None,
        author: str,
        installation: int | None,
    ) -> int | None:
        """Queue a command line for the worker; None when this line of this comment is known."""
        stamp = now()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.insert(inbox).values(
                        delivery=delivery,
                        repository=repository,
                        issue=issue,
                        comment=comment,
                        command_key=command_key(text),
                        text=text,
                        error=error,
                        author=author,
                        installation=installation,
                        state="pending",
                        outcome="",
                        attempts=0,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                return int(key[0])
        except IntegrityError:
            return None

    def pending_commands(self, limit: int = 20) -> list[InboxCommand]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(inbox).where(inbox.c.state == "pending").order_by(inbox.c.id).limit(limit)
            ).all()
        return [
            InboxCommand(
                id=r.id,
                repository=r.repository,
                issue=r.issue,
                comment=r.comment,
                text=r.text,
                error=r.error,
                author=r.author,
                installation=r.installation,
                state=r.state,
                outcome=r.outcome,
                reply_comment=r.reply_comment,
                attempts=r.attempts,
            )
            for r in rows
        ]

    def update_command(self, command: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(inbox).where(inbox.c.id == command).values(updated_at=now(), **values)
            )

    def commands(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(inbox).order_by(inbox.c.id))]

    # --- comments --------------------------------------------------------------------------

    def record_comment(
        self, job_id: int, kind: str, repository: str, issue: int, github_id: int
    ) -> None:
        """Remember a comment the bot posted for a job (one per job and kind: recording the
        same again is a no-op)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(comments).values(
                        job=job_id,
                        kind=kind,
                        repository=repository,
                        issue=issue,
                        github_id=github_id,
                        created_at=now(),
                    )
                )
        except IntegrityError:
            pass

    def comments_of(self, job_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(comments).where(comments.c.job == job_id).order_by(comments.c.id)
            )
            return [dict(r._mapping) for r in rows]
