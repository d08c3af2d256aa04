"""What webhooks told the bot: the delivery log (a replayed delivery is recognized, across
restarts), branch heads, pull requests and installations."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ekka.storage.database import Database, now

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


class WebhookFacts(Database):
    """The delivery log and the records of webhooks, on one engine."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = (metadata,)

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

    # --- what webhooks record ----------------------------------------------------------------

    def record_head(self, repository: str, ref: str, sha: str) -> None:
        self._record(heads, {"repository": repository, "ref": ref}, {"sha": sha})

    def head(self, repository: str, ref: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(heads.c.sha).where(heads.c.repository == repository, heads.c.ref == ref)
            ).scalar()
        return None if value is None else str(value)

    def record_pull(self, repository: str, number: int, **values: Any) -> None:
        self._record(pulls, {"repository": repository, "number": number}, values)

    def pull(self, repository: str, number: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(pulls).where(pulls.c.repository == repository, pulls.c.number == number)
            ).first()
        return None if row is None else dict(row._mapping)

    def record_installation(
        self, installation: int, account: str, action: str, repositories: list[str]
    ) -> None:
        self._record(
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

    def _record(self, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.upsert(table, key, {**values, "updated_at": now()})
