"""One job, from claim to final comment: fetch the clone, run the full diagnosis (or the
operator's command oracle) with the progress in the reply comment, write the reports, post the
final report in the reply and one comment on the first bad commit's pull request.

A heartbeat renews the job's lease while it runs; a worker that dies stops renewing, and the
next worker resumes the job (the verdicts already probed come from the verdict cache, the
comments are found by their markers and edited). `/ekka cancel` is honoured between probes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ekka.bisect.history import CommitInfo, CommitRange
from ekka.bisect.search import BisectResult, BisectStep, describe_step
from ekka.bot import messages
from ekka.bot.config import BotConfig
from ekka.bot.db import Store
from ekka.bot.queue import Job, JobState
from ekka.containers.spec import ExecutorSpec
from ekka.errors import EkkaError, GitHubError
from ekka.forge.client import GitHubClient
from ekka.forge.comments import issue_url, upsert_comment
from ekka.repo import fetch
from ekka.report import BisectionSummary, Diagnosis
from ekka.request import JobParams

log = logging.getLogger("ekka.bot")


class JobCancelled(Exception):
    """Raised inside a job's progress callbacks when `/ekka cancel` asked it to stop."""


@dataclass(frozen=True)
class Outcome:
    """What a finished job found: the bisection, and the diagnosis in local-executor mode."""

    bisection: BisectionSummary
    diagnosis: Diagnosis | None


class Progress:
    """The bisection's Observer for a job: the progress line in the database and in the reply
    comment ("probed 4 of ~7 commits: ..."), edits at most every `interval` seconds, cancel
    checked at each event."""

    def __init__(
        self,
        store: Store,
        github: GitHubClient,
        job: Job,
        comment: int,
        interval: float = 3.0,
    ) -> None:
        self.store = store
        self.github = github
        self.job = job
        self.comment = comment
        self.interval = interval
        self.total = 0
        self.probed = 0
        self.last_edit = 0.0
        self.line = ""

    def say(self, text: str, *, force: bool = False) -> None:
        self._check_cancel()
        self.line = text
        self.store.update_job(self.job.id, progress=text)
        now = time.monotonic()
        if not force and now - self.last_edit < self.interval:
            return
        self.last_edit = now
        body = messages.PROGRESS.format(
            marker=messages.job_marker(self.job.id), job=self.job.id, progress=text
        )
        try:
            self.github.edit_comment(self.job.repository, self.comment, body)
        except GitHubError as exc:  # progress is best effort; the final comment is not
            log.warning("job %s: progress comment: %s", self.job.id, exc)

    def _check_cancel(self) -> None:
        current = self.store.job(self.job.id)
        if current is not None and current.cancel_requested:
            raise JobCancelled

    # the Observer interface (ekka.bisect.search.Observer)

    def started(self, commit_range: CommitRange) -> None:
        self.total = messages.estimate_probes(len(commit_range))
        self.say(
            f"bisecting {len(commit_range)} commits between `{commit_range.good.short}` and "
            f"`{commit_range.bad.short}`",
            force=True,
        )

    def probing(self, commit: CommitInfo) -> None:
        self.say(
            messages.progress_line(
                self.probed, self.total, f"probing `{commit.short}` {commit.summary}"
            )
        )

    def verdict(self, commit: CommitInfo, step: BisectStep) -> None:
        self.probed += 1
        self.say(messages.progress_line(self.probed, self.total, describe_step(step)), force=True)

    def finished(self, result: BisectResult) -> None:
        self.say(f"bisection {result.status.value} after {result.probes} probes", force=True)


@dataclass(frozen=True)
class _Work:
    """What one job's diagnosis works with: the job, its GitHub client and progress, its
    folder, the clone, its parameters and the executor spec it runs with."""

    job: Job
    github: GitHubClient
    progress: Progress
    folder: Path
    repo: str
    params: JobParams
    executor: ExecutorSpec


class JobRunner:
    """Runs one claimed job to its end (done, failed or cancelled)."""

    def __init__(self, config: BotConfig, store: Store, github: GitHubClient, worker: str) -> None:
        self.config = config
        self.store = store
        self.github = github
        self.worker = worker

    def run(self, job: Job) -> JobState:
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, stop), daemon=True)
        beat.start()
        try:
            return self._run(job)
        finally:
            stop.set()
            beat.join(5)

    def _heartbeat(self, job: Job, stop: threading.Event) -> None:
        every = max(0.2, self.config.worker.lease_seconds / 4)
        while not stop.wait(every):
            self.store.heartbeat(job.id, self.worker)

    def _run(self, job: Job) -> JobState:
        marker = messages.job_marker(job.id)
        try:
            github = self.github.for_installation(job.installation)
            body = messages.PROGRESS.format(marker=marker, job=job.id, progress="starting")
            comment = upsert_comment(
                github, job.repository, job.issue, marker, body, job.reply_comment
            )
            if job.reply_comment is None:
                self.store.update_job(job.id, reply_comment=comment)
                self.store.record_comment(job.id, "reply", job.repository, job.issue, comment)
        except GitHubError as exc:
            return self._fail(job, None, None, f"GitHub: {exc}", "github")
        progress = Progress(self.store, github, job, comment)
        folder = Path(self.config.workdir).resolve() / "jobs" / str(job.id)
        try:
            progress.say("fetching the repository", force=True)
            outcome = self._diagnose(job, github, progress, folder)
            final = messages.final_comment(
                job=job.id,
                repository=job.repository,
                params=JobParams.from_json(job.params),
                diagnosis=outcome.diagnosis,
                bisection=outcome.bisection,
                base_url=self.config.base_url,
            )
            (folder / "comment.md").write_text(final)
            github.edit_comment(job.repository, comment, final)
            self._comment_on_pull(job, github, outcome, comment)
        except JobCancelled:
            current = self.store.job(job.id)
            who = (current.error or "").removeprefix("cancelled by ") if current else ""
            body = messages.CANCELLED.format(marker=marker, job=job.id, user=who or "someone")
            try:
                github.edit_comment(job.repository, comment, body)
            except GitHubError as exc:
                log.warning("job %s: %s", job.id, exc)
            self.store.update_job(job.id, state=JobState.CANCELLED, progress="cancelled")
            return JobState.CANCELLED
        except GitHubError as exc:
            return self._fail(job, github, comment, f"GitHub: {exc}", "github")
        except EkkaError as exc:
            return self._fail(
                job, github, comment, str(exc), "usage" if exc.exit_code == 2 else "failure"
            )
        except Exception as exc:
            log.exception("job %s", job.id)
            return self._fail(
                job, github, comment, f"internal error: {type(exc).__name__}: {exc}", "failure"
            )
        summary = {
            "status": outcome.bisection.status,
            "first_bad": outcome.bisection.first_bad.to_json()
            if outcome.bisection.first_bad
            else None,
            "statement": outcome.diagnosis.verdict if outcome.diagnosis else None,
        }
        self.store.update_job(
            job.id,
            state=JobState.DONE,
            progress=f"done: {outcome.bisection.status}",
            result=summary,
            report_dir=str(folder),
            error=None,
        )
        return JobState.DONE

    def _fail(
        self, job: Job, github: GitHubClient | None, comment: int | None, error: str, advice: str
    ) -> JobState:
        self.store.update_job(job.id, state=JobState.FAILED, error=error, progress="failed")
        if github is not None and comment is not None:
            body = messages.FAILED.format(
                marker=messages.job_marker(job.id),
                job=job.id,
                error=error,
                advice=messages.ADVICE[advice],
            )
            try:
                github.edit_comment(job.repository, comment, body)
            except GitHubError as exc:  # the reason is stored; the server stays up
                log.warning("job %s: could not say it failed: %s", job.id, exc)
        return JobState.FAILED

    def _comment_on_pull(
        self, job: Job, github: GitHubClient, outcome: Outcome, reply: int
    ) -> None:
        """One comment on the first bad commit's pull request, linking the issue."""
        first = outcome.bisection.first_bad
        if first is None or first.pr is None:
            return
        current = self.store.job(job.id)
        marker = messages.pr_marker(job.id)
        statement = (
            outcome.diagnosis.verdict
            if outcome.diagnosis is not None
            else f"the first bad commit is `{first.short}` {first.summary}"
        )
        body = messages.PR_COMMENT.format(
            marker=marker,
            issue_ref=f"#{job.issue}",
            short=first.short,
            statement=statement,
            issue_link=issue_url(job.repository, job.issue, reply),
        )
        known = (
            current.pr_comment if current is not None and current.pr_number == first.pr else None
        )
        pr_comment = upsert_comment(github, job.repository, first.pr, marker, body, known)
        if known is None:
            self.store.update_job(job.id, pr_number=first.pr, pr_comment=pr_comment)
            self.store.record_comment(job.id, "pr", job.repository, first.pr, pr_comment)

    # --- the diagnosis ---------------------------------------------------------------------------

    def _diagnose(
        self, job: Job, github: GitHubClient, progress: Progress, folder: Path
    ) -> Outcome:
        repository = self.config.repository(job.repository)
        if repository is None or repository.path is None:
            raise EkkaError(f"{job.repository} is no longer configured with a local clone")
        params = JobParams.from_json(job.params)
        executor = params.executor or self.config.executor
        fetch(repository.path)
        folder.mkdir(parents=True, exist_ok=True)
        work = _Work(job, github, progress, folder, repository.path, params, executor)
        if executor.kind == "command":
            return self._bisect_with_command(work)
        return self._full_diagnosis(work)

    def _full_diagnosis(self, work: _Work) -> Outcome:
        from ekka.compose import full_config
        from ekka.full import run_full_diagnosis
        from ekka.report import write_reports
        from ekka.request import check_request, resolve_request

        job, github, progress, folder, params = (
            work.job, work.github, work.progress, work.folder, work.params
        )  # fmt: skip
        resolved = resolve_request(params.request)
        check_request(resolved, folder / "traces" / "target")
        diagnosis, _ = run_full_diagnosis(
            full_config(
                resolved,
                work.executor,
                repo=work.repo,
                good=params.good,
                bad=params.bad,
                workdir=folder / "traces",
                db_url=self.config.database_url,
                github_repo=job.repository,
                github_api=self.config.api_url,
                github_token=github.token,
            ),
            progress=lambda text: progress.say(text, force=True),
            observer=progress,
            build_output=progress.say,  # image builds: every line recorded, edits throttled
        )
        write_reports(diagnosis, folder)
        assert diagnosis.bisection is not None
        return Outcome(diagnosis.bisection, diagnosis)

    def _bisect_with_command(self, work: _Work) -> Outcome:
        from ekka.bisect import Bisector, CommandOracle, commit_range
        from ekka.bisect.cache import VerdictCache, config_hash
        from ekka.forge.pulls import GitHubPrLookup

        job, repo, params, executor = work.job, work.repo, work.params, work.executor
        command = executor.command
        assert command is not None  # the configuration checks it
        lookup = GitHubPrLookup(job.repository, client=work.github)
        commits = commit_range(repo, params.good, params.bad, pr_lookup=lookup)
        oracle = CommandOracle(repo, command, executor.timeout)
        cache = VerdictCache(self.config.database_url)
        try:
            result = Bisector(
                oracle,
                workers=executor.workers,
                observer=work.progress,
                cache=cache,
                repo_key=str(Path(repo).resolve()),
                config_hash=config_hash({"oracle": "command", "cmd": command, "repeats": 1}),
            ).run(commits)
        finally:
            cache.close()
        (work.folder / "bisection.json").write_text(json.dumps(result.to_json(), indent=1))
        return Outcome(BisectionSummary.from_json(result.to_json()), None)
