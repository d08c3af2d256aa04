"""The one place Ekka opens a database: SQLAlchemy Core on any URL.

SQLite in a file by default (its folder made; WAL, `synchronous=NORMAL` and a busy timeout, so
the server's threads, a worker process and a sweep share the file), PostgreSQL by URL
(`postgresql+psycopg://user@host/db`) where several bot replicas share it. A URL that opens
nothing raises `DatabaseError` (or the caller's subclass of it) saying what to fix, never a
SQLAlchemy traceback.

    engine = open_database(url, metadata)      # the tables of `metadata` made where missing
    class Store(Database): metadata = (...)     # a store of tables on one engine
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

try:
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("Ekka's database needs SQLAlchemy: pip install 'ekka[bisect]'") from exc

from ekka.errors import DatabaseError


def open_database(
    url: str,
    *metadata: sa.MetaData,
    what: str = "the database",
    error: type[DatabaseError] = DatabaseError,
) -> sa.Engine:
    """An engine on `url` with the tables of each `metadata` created where missing; `what`
    names the database in error messages, raised as `error`."""
    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError:
        raise error(
            f"{url!r} is not a database URL; use sqlite:///path/to/ekka.db or "
            "postgresql+psycopg://user@host/db."
        ) from None
    args: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        folder = _sqlite_folder(parsed)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise error(f"cannot make the folder {folder} for {what}: {exc}") from None
        args["connect_args"] = {"timeout": 30, "check_same_thread": False}
    try:
        engine = sa.create_engine(parsed, **args)
        if sqlite:
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        for tables in metadata:
            tables.create_all(engine)
    except NoSuchModuleError:
        raise error(f"no SQLAlchemy dialect for {url!r}; check the URL's scheme.") from None
    except ModuleNotFoundError as exc:
        raise error(
            f"the database driver for {parsed.get_backend_name()} is not installed "
            f"({exc.name}); install it (psycopg for PostgreSQL)."
        ) from None
    except SQLAlchemyError as exc:
        raise error(f"cannot open {what} {parsed!r}: {exc.__cause__ or exc}") from None
    return engine


class Database:
    """Tables on one engine: `url` opened with the class's `metadata`, or an engine another
    store opened (then that store closes it)."""

    metadata: ClassVar[tuple[sa.MetaData, ...]] = ()
    what: ClassVar[str] = "the database"
    error: ClassVar[type[DatabaseError]] = DatabaseError

    def __init__(self, url: str | sa.Engine) -> None:
        if isinstance(url, sa.Engine):
            self.engine = url
            for tables in self.metadata:
                tables.create_all(self.engine)
        else:
            self.engine = open_database(url, *self.metadata, what=self.what, error=self.error)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine.url!r})"

    def upsert(self, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Update the row of `key` to `values`, or insert it; a concurrent insert of the same
        key makes the second try update."""
        where = sa.and_(*(table.c[k] == v for k, v in key.items()))
        for _ in range(2):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(sa.update(table).where(where).values(**values)).rowcount == 0:
                        conn.execute(sa.insert(table).values(**key, **values))
                return
            except IntegrityError:
                continue


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _sqlite_folder(url: sa.engine.URL) -> Path | None:
    """The folder of a SQLite database file (None for in-memory ones and `file:` URIs)."""
    name = url.database
    if name in (None, "", ":memory:") or name.startswith("file:"):
        return None
    return Path(name).expanduser().parent


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL: a commit survives the process dying (what the queue needs);
    # only a power loss can take back the last commits. One fsync per checkpoint, not per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
