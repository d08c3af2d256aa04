"""Ekka's database: `database` opens one (SQLite by default, PostgreSQL by URL) for every part
that keeps state (the verdict cache, the bot's queue and webhook facts, the sweeps), and
`sweeps` holds the sweeps' results, which the sweeps write and the bot's server shows. Nothing
is imported here: importing `ekka.storage.database` is what loads SQLAlchemy."""
