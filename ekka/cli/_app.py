"""The Typer application, its command groups and the two consoles every command prints to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Ekka finds silent errors in LLM serving frameworks: which commit, which component.",
)
zoo_app = typer.Typer(no_args_is_help=True, help="Tiny random-weight models built locally.")
app.add_typer(zoo_app, name="zoo")
containers_app = typer.Typer(no_args_is_help=True, help="The docker executor's images.")
app.add_typer(containers_app, name="containers")

console = Console(stderr=True)  # progress and messages
out = Console()  # results


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)
