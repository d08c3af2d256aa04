"""`ekka serve` and `ekka worker`: the GitHub bot."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    config: Path | None = typer.Option(
        None, "--config", help="The bot's TOML file (default: $EKKA_CONFIG)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Run no worker in this process (run `ekka worker` apart)."
    ),
) -> None:
    """The GitHub bot: the webhook server (POST /webhook, GET /healthz, /jobs/ID, /) with a
    worker in the same process; secrets from the environment (docs/bot.md)."""
    import logging

    from ekka.bot.app import serve as run_server
    from ekka.bot.config import load_config

    settings = load_config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_server(settings, host, port, with_worker=not no_worker)


def worker(
    config: Path | None = typer.Option(
        None, "--config", help="The bot's TOML file (default: $EKKA_CONFIG)."
    ),
) -> None:
    """The GitHub bot's worker apart from the server: answers queued commands and runs jobs."""
    import logging

    from ekka.bot.config import load_config
    from ekka.bot.worker import run_worker

    settings = load_config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_worker(settings)
