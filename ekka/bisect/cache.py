"""The verdict cache: one verdict per (repository, commit, probe configuration) in a SQL database.

SQLite in a file by default; any SQLAlchemy URL (PostgreSQL where several bot replicas share it),
opened by `ekka.storage.database` like every other store of Ekka.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the verdict cache needs SQLAlchemy: pip install 'ekka[bisect]'") from exc

from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.errors import VerdictCacheError
from ekka.storage.database import Database, now

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


metadata = sa.MetaData()

verdicts = sa.Table(
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


class VerdictCache(Database):
    """Verdicts stored per (repo, commit, config_hash); `put` replaces an existing one."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = (metadata,)
    what = "the verdict cache"
    error = VerdictCacheError
    table = verdicts

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
            "created_at": now(),
        }
        key = {"repo": repo, "commit": commit, "config_hash": config_hash}
        self.upsert(self.table, key, values)
