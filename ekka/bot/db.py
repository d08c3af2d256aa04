"""The bot's database: the delivery log, the job queue, the comments posted, what webhooks
recorded (branch heads, pull requests, installations), and the sweeps (`ekka sweep`: each
run, each (model, dtype) result, the regressions they track, the architecture sweep's rows).

SQLAlchemy Core on any URL: SQLite by default (WAL, a busy timeout, so the server's threads
and a worker process share the file), PostgreSQL by URL. Jobs are claimed with a conditional
UPDATE, so several workers never run the same job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from ekka.bot.config import ConfigError


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

deliveries = sa.Table(
    "bot_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # X-GitHub-Delivery
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=True),
    sa.Column("repository", sa.String(256), nullable=True),
    sa.Column("outcome", sa.String(256), nullable=False, default=""),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

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

heads = sa.Table(
    "bot_heads",
    metadata,
    sa.Column("repository", sa.String(256), primary_key=True),
    sa.Column("ref", sa.String(256), primary_key=True),
    sa.Column("sha", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

pulls = sa.Table(
    "bot_pulls",
    metadata,
    sa.Column("repository", sa.String(256), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("head_sha", sa.String(64), nullable=True),
    sa.Column("merge_commit_sha", sa.String(64), nullable=True),
    sa.Column("merged", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

installations = sa.Table(
    "bot_installations",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("account", sa.String(256), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("repositories_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


sweep_runs = sa.Table(
    "sweep_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sweep", sa.String(256), nullable=False),
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("branch", sa.String(256), nullable=False),
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running, done, failed
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("report_dir", sa.Text, nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)

sweep_results = sa.Table(
    "sweep_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run", sa.Integer, nullable=False),
    sa.Column("sweep", sa.String(256), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("dtype", sa.String(16), nullable=False),
    sa.Column("commit", sa.String(64), nullable=False),
    sa.Column("verdict", sa.String(8), nullable=False),  # good, bad, skip
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("regression", sa.Integer, nullable=True),
    sa.Column("report_dir", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("run", "model", "dtype", name="uq_sweep_results_run"),
)

regressions = sa.Table(
    "sweep_regressions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sweep", sa.String(256), nullable=False),
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("dtype", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # open, closed
    sa.Column("good", sa.String(64), nullable=False),
    sa.Column("first_bad", sa.String(64), nullable=True),
    sa.Column("pr", sa.Integer, nullable=True),
    sa.Column("issue", sa.Integer, nullable=True),  # the tracking issue (None: reported locally)
    sa.Column("pr_comment", sa.BigInteger, nullable=True),
    sa.Column("last_head", sa.String(64), nullable=False),
    sa.Column("fixed_at", sa.String(64), nullable=True),
    sa.Column("summary", sa.Text, nullable=False, default=""),
    sa.Column("report_dir", sa.Text, nullable=True),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

arch_rows = sa.Table(
    "sweep_arch_rows",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),  # the framework versions and settings
    sa.Column("architecture", sa.String(256), primary_key=True),
    sa.Column("dtype", sa.String(16), primary_key=True),
    sa.Column("row_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class SweepResult:
    """One (model, dtype) of a nightly sweep run: the head's verdict."""

    run: int
    sweep: str
    model: str
    dtype: str
    commit: str
    verdict: str
    reason: str
    regression: int | None
    report_dir: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dtype": self.dtype,
            "commit": self.commit,
            "verdict": self.verdict,
            "reason": self.reason,
            "regression": self.regression,
            "report_dir": self.report_dir,
        }


@dataclass(frozen=True)
class Regression:
    """A (model, dtype) of a sweep that went from good to bad, and where it is reported."""

    id: int
    sweep: str
    repository: str
    model: str
    dtype: str
    state: str
    good: str
    first_bad: str | None
    pr: int | None
    issue: int | None
    pr_comment: int | None
    last_head: str
    fixed_at: str | None
    summary: str
    report_dir: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "dtype": self.dtype,
            "state": self.state,
            "good": self.good,
            "first_bad": self.first_bad,
            "pr": self.pr,
            "issue": self.issue,
            "last_head": self.last_head,
            "fixed_at": self.fixed_at,
            "summary": self.summary,
            "report_dir": self.report_dir,
        }


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


def now() -> datetime:
    return datetime.now(UTC)


def command_key(text: str) -> str:
    """What identifies a command within its comment: the sha256 of its normalized text."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


class Store:
    """The bot's tables on one SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except ArgumentError:
            raise ConfigError(
                f"database URL {url!r} is not one; use sqlite:///path/ekka.db or "
                "postgresql+psycopg://user@host/db."
            ) from None
        args: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            name = parsed.database
            if name and name != ":memory:" and not name.startswith("file:"):
                Path(name).expanduser().parent.mkdir(parents=True, exist_ok=True)
            args["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(parsed, **args)
            if parsed.get_backend_name() == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            metadata.create_all(self.engine)
        except NoSuchModuleError:
            raise ConfigError(
                f"no SQLAlchemy dialect for {url!r}; check the URL's scheme."
            ) from None
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the database driver for {parsed.get_backend_name()} is not installed "
                f"({exc.name}); install it (psycopg for PostgreSQL)."
            ) from None
        except SQLAlchemyError as exc:
            raise ConfigError(
                f"cannot open the database {parsed!r}: {exc.__cause__ or exc}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    # --- deliveries -----------------------------------------------------------------------

    def record_delivery(
        self, delivery: str, event: str, action: str | None, repository: str | None
    ) -> bool:
        """Remember a delivery; False when it was seen before (a replay)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(deliveries).values(
                        id=delivery,
                        event=event,
                        action=action,
                        repository=repository,
                        outcome="received",
                        received_at=now(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def delivery_outcome(self, delivery: str, outcome: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == delivery)
                .values(outcome=outcome[:256])
            )

    def delivery(self, delivery: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery)).first()
        return None if row is None else dict(row._mapping)

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

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
                if row.heartbeat is not None and _aware(row.heartbeat) > cutoff:
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

    # --- what webhooks record ----------------------------------------------------------------

    def record_head(self, repository: str, ref: str, sha: str) -> None:
        self._upsert(heads, {"repository": repository, "ref": ref}, {"sha": sha})

    def head(self, repository: str, ref: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(heads.c.sha).where(heads.c.repository == repository, heads.c.ref == ref)
            ).scalar()
        return None if value is None else str(value)

    def record_pull(self, repository: str, number: int, **values: Any) -> None:
        self._upsert(pulls, {"repository": repository, "number": number}, values)

    def pull(self, repository: str, number: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(pulls).where(pulls.c.repository == repository, pulls.c.number == number)
            ).first()
        return None if row is None else dict(row._mapping)

    def record_installation(
        self, installation: int, account: str, action: str, repositories: list[str]
    ) -> None:
        self._upsert(
            installations,
            {"id": installation},
            {"account": account, "action": action, "repositories_json": json.dumps(repositories)},
        )

    def installation(self, installation: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(installations).where(installations.c.id == installation)
            ).first()
        return None if row is None else dict(row._mapping)

    def _upsert(self, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        values = {**values, "updated_at": now()}
        where = sa.and_(*(table.c[k] == v for k, v in key.items()))
        for _ in range(2):  # a concurrent insert of the same key: the second try updates
            try:
                with self.engine.begin() as conn:
                    if conn.execute(sa.update(table).where(where).values(**values)).rowcount == 0:
                        conn.execute(sa.insert(table).values(**key, **values))
                return
            except IntegrityError:
                continue

    # --- sweeps --------------------------------------------------------------------------------

    def start_sweep_run(self, sweep: str, repository: str, branch: str, head: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.insert(sweep_runs).values(
                    sweep=sweep,
                    repository=repository,
                    branch=branch,
                    head=head,
                    state="running",
                    started_at=now(),
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def finish_sweep_run(
        self, run: int, state: str, *, error: str | None = None, report_dir: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(sweep_runs)
                .where(sweep_runs.c.id == run)
                .values(state=state, error=error, report_dir=report_dir, finished_at=now())
            )

    def record_sweep_result(self, result: SweepResult) -> None:
        """Store (or replace) a (model, dtype) result of a run."""
        key = {"run": result.run, "model": result.model, "dtype": result.dtype}
        values = {
            "sweep": result.sweep,
            "commit": result.commit,
            "verdict": result.verdict,
            "reason": result.reason,
            "regression": result.regression,
            "report_dir": result.report_dir,
            "created_at": now(),
        }
        where = sa.and_(*(sweep_results.c[k] == v for k, v in key.items()))
        with self.engine.begin() as conn:
            if conn.execute(sa.update(sweep_results).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(sweep_results).values(**key, **values))

    def last_sweep_result(
        self, sweep: str, model: str, dtype: str, *, verdict: str | None = None, before: int
    ) -> SweepResult | None:
        """The newest result of (model, dtype) in this sweep's runs before run `before` (of
        that verdict when given)."""
        t = sweep_results
        query = (
            sa.select(t)
            .where(t.c.sweep == sweep, t.c.model == model, t.c.dtype == dtype, t.c.run < before)
            .order_by(t.c.run.desc())
            .limit(1)
        )
        if verdict is not None:
            query = query.where(t.c.verdict == verdict)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _sweep_result(row)

    def sweep_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The newest runs first, each with its results."""
        with self.engine.connect() as conn:
            runs = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(sweep_runs).order_by(sweep_runs.c.id.desc()).limit(limit)
                )
            ]
            ids = [r["id"] for r in runs]
            rows = conn.execute(
                sa.select(sweep_results)
                .where(sweep_results.c.run.in_(ids))
                .order_by(sweep_results.c.id)
            ).all()
        results: dict[int, list[SweepResult]] = {}
        for row in rows:
            results.setdefault(row.run, []).append(_sweep_result(row))
        for run in runs:
            run["results"] = results.get(run["id"], [])
        return runs

    def open_regression(
        self,
        *,
        sweep: str,
        repository: str,
        model: str,
        dtype: str,
        good: str,
        head: str,
        first_bad: str | None,
        pr: int | None,
        summary: str,
        report_dir: str | None,
    ) -> Regression:
        stamp = now()
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.insert(regressions).values(
                    sweep=sweep,
                    repository=repository,
                    model=model,
                    dtype=dtype,
                    state="open",
                    good=good,
                    first_bad=first_bad,
                    pr=pr,
                    last_head=head,
                    summary=summary,
                    report_dir=report_dir,
                    opened_at=stamp,
                    updated_at=stamp,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
        found = self.regression(int(key[0]))
        assert found is not None
        return found

    def regression(self, regression: int) -> Regression | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(regressions).where(regressions.c.id == regression)).first()
        return None if row is None else _regression(row)

    def open_regression_of(self, sweep: str, model: str, dtype: str) -> Regression | None:
        """The regression of (model, dtype) in this sweep that is still open, if any."""
        t = regressions
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t)
                .where(t.c.sweep == sweep, t.c.model == model, t.c.dtype == dtype)
                .where(t.c.state == "open")
                .order_by(t.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _regression(row)

    def update_regression(self, regression: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(regressions)
                .where(regressions.c.id == regression)
                .values(updated_at=now(), **values)
            )

    def arch_row(self, key: str, architecture: str, dtype: str) -> dict[str, Any] | None:
        """A finished row of an architecture sweep (None: not swept yet under this key)."""
        t = arch_rows
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(t.c.row_json).where(
                    t.c.key == key, t.c.architecture == architecture, t.c.dtype == dtype
                )
            ).scalar()
        return None if value is None else dict(json.loads(value))

    def record_arch_row(self, key: str, architecture: str, dtype: str, row: dict[str, Any]) -> None:
        self._upsert(
            arch_rows,
            {"key": key, "architecture": architecture, "dtype": dtype},
            {"row_json": json.dumps(row, sort_keys=True)},
        )

    def tables(self) -> Iterator[sa.Table]:
        yield from metadata.sorted_tables


def _sweep_result(row: Any) -> SweepResult:
    return SweepResult(
        run=row.run,
        sweep=row.sweep,
        model=row.model,
        dtype=row.dtype,
        commit=row.commit,
        verdict=row.verdict,
        reason=row.reason,
        regression=row.regression,
        report_dir=row.report_dir,
    )


def _regression(row: Any) -> Regression:
    return Regression(
        id=row.id,
        sweep=row.sweep,
        repository=row.repository,
        model=row.model,
        dtype=row.dtype,
        state=row.state,
        good=row.good,
        first_bad=row.first_bad,
        pr=row.pr,
        issue=row.issue,
        pr_comment=row.pr_comment,
        last_head=row.last_head,
        fixed_at=row.fixed_at,
        summary=row.summary or "",
        report_dir=row.report_dir,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL: a commit survives the process dying (what the queue needs);
    # only a power loss can take back the last commits. One fsync per checkpoint, not per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
