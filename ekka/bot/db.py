"""The bot's database: its queue (`ekka.bot.queue`: jobs, the inbox of commands, the comments
posted) and what webhooks recorded (`ekka.bot.facts`), on one engine opened by
`ekka.storage.database` (SQLite by default, PostgreSQL by URL); the sweeps' results
(`ekka.storage.sweeps`, which the server shows) on the same engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import sqlalchemy as sa

from ekka.bot import facts, queue
from ekka.bot.facts import WebhookFacts
from ekka.bot.queue import JobQueue
from ekka.storage.sweeps import SweepStore


class Store(WebhookFacts, JobQueue):
    """The bot's tables on one SQLAlchemy engine; `sweeps`, the sweeps' results beside them."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = (facts.metadata, queue.metadata)
    what = "the bot's database"

    def __init__(self, url: str | sa.Engine) -> None:
        super().__init__(url)
        self.sweeps = SweepStore(self.engine)

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def tables(self) -> Iterator[sa.Table]:
        for tables in (*self.metadata, *self.sweeps.metadata):
            yield from tables.sorted_tables
