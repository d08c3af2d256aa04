"""The verdict cache: one verdict per (repository, commit, probe configuration) in a SQL database.

SQLite in a file by default; any SQLAlchemy URL (PostgreSQL where several bot replicas share it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the verdict cache needs SQLAlchemy: pip install 'ekka[bisect]'") from exc

from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.errors import VerdictCacheError

DEFAULT_PATH = Path("~/.cache/ekka/ekka.db")


def default_url(path: str | Path | None = None) -> str:
    """The SQLite URL of the cache file: `path` when given, else ~/.cache/ekka/ekka.db."""
    file = Path(path if path is not None else DEFAULT_PATH).expanduser().resolve()
    return f"sqlite:///{file}"


def config_hash(config: Mapping[str, Any]) -> str:
    """The sha256 of the configuration as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(
        config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "verdicts",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo", sa.String(512), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("details_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("repo", "commit", "config_hash", name="uq_verdicts_key"),
    )


def _sqlite_folder(url: sa.engine.URL) -> Path | None:
    """The folder of a SQLite database file (None for other databases and in-memory ones)."""
    name = url.database
    if (
        url.get_backend_name() != "sqlite"
        or name in (None, "", ":memory:")
        or name.startswith("file:")
    ):
        return None
    return Path(name).expanduser().parent


class VerdictCache:
    """Verdicts stored per (repo, commit, config_hash); `put` replaces an existing one."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except ArgumentError:
            raise VerdictCacheError(
                f"{url!r} is not a database URL; use sqlite:///path/to/ekka.db or postgresql://host/db."
            ) from None
        folder = _sqlite_folder(parsed)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VerdictCacheError(
                    f"cannot make the folder {folder} for the verdict cache: {exc}"
                ) from None
        try:
            self.engine = sa.create_engine(parsed)
            self.metadata = sa.MetaData()
            self.table = _table(self.metadata)
            self.metadata.create_all(self.engine)
        except NoSuchModuleError:
            raise VerdictCacheError(
                f"no SQLAlchemy dialect for {url!r}; check the URL's scheme."
            ) from None
        except ModuleNotFoundError as exc:
            raise VerdictCacheError(
                f"the database driver for {parsed.get_backend_name()} is not installed ({exc.name}); "
                "install it (e.g. psycopg for PostgreSQL)."
            ) from None
        except SQLAlchemyError as exc:
            raise VerdictCacheError(
                f"cannot open the verdict cache {parsed!r}: {exc.__cause__ or exc}"
            ) from None

    def get(self, repo: str, commit: str, config_hash: str) -> ProbeResult | None:
        t = self.table
        query = sa.select(t.c.verdict, t.c.reason, t.c.seconds, t.c.details_json).where(
            t.c.repo == repo, t.c.commit == commit, t.c.config_hash == config_hash
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return ProbeResult(
            Verdict(row.verdict), row.reason, row.seconds, json.loads(row.details_json)
        )

    def put(self, repo: str, commit: str, config_hash: str, result: ProbeResult) -> None:
        """Store (or replace) the verdict of this commit under this configuration."""
        values = {
            "verdict": result.verdict.value,
            "reason": result.reason,
            "seconds": float(result.seconds),
            "details_json": json.dumps(result.details, sort_keys=True, default=str),
            "created_at": datetime.now(UTC),
        }
        key = {"repo": repo, "commit": commit, "config_hash": config_hash}
        t = self.table
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in ("sqlite", "postgresql"):
                insert = sqlite.insert(t) if dialect == "sqlite" else postgresql.insert(t)
                statement = insert.values(**key, **values).on_conflict_do_update(
                    index_elements=["repo", "commit", "config_hash"], set_=values
                )
                conn.execute(statement)
                return
            where = (t.c.repo == repo) & (t.c.commit == commit) & (t.c.config_hash == config_hash)
            if conn.execute(sa.update(t).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(t).values(**key, **values))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VerdictCache({self.engine.url!r})"
