"""The sweeps' results: each nightly sweep run, each (model, dtype) result, the regressions they
track, and the architecture sweep's finished rows. The sweeps write them (`ekka sweep`); the
bot's server shows them (`GET /sweeps`), so they live here, below both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa

from ekka.storage.database import Database, now

metadata = sa.MetaData()

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


class SweepStore(Database):
    """The sweep tables on one engine."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = (metadata,)
    what = "the sweeps' database"

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
        self.upsert(sweep_results, key, values)

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
        self.upsert(
            arch_rows,
            {"key": key, "architecture": architecture, "dtype": dtype},
            {"row_json": json.dumps(row, sort_keys=True), "updated_at": now()},
        )


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
