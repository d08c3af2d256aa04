"""The `ekka` command: one thin module per command, which parses its options and calls the
library; heavy frameworks are imported only inside the commands that need them.

Exit codes: 0 success (or "no divergence"), 1 a divergence found or a failure, 2 bad usage.
"""

from __future__ import annotations

import click
import typer

from ekka.cli import bench, bisect, bot, compare, containers, demo, diagnose, sweep, trace, zoo
from ekka.cli._app import app, console, containers_app, zoo_app
from ekka.errors import EkkaError, UsageError

# the commands, composed here in the order `ekka --help` lists them
zoo_app.command("list")(zoo.zoo_list)
zoo_app.command("build")(zoo.zoo_build)
app.command()(trace.trace)
app.command()(compare.compare)
app.command()(demo.demo)
app.command()(diagnose.diagnose)
containers_app.command("base")(containers.containers_base)
app.command()(bench.bench)
app.command()(bisect.bisect)
app.command()(bot.serve)
app.command()(bot.worker)
app.command()(sweep.sweep)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns Ekka's errors into messages and exit codes."""
    command = typer.main.get_command(app)
    # typer vendors its own click; catch both its exceptions and those of the click package.
    from typer._click import exceptions as typer_click

    exits = tuple({click.exceptions.Exit, typer.Exit})
    usage = tuple({click.ClickException, typer_click.ClickException})
    aborts = tuple({click.exceptions.Abort, typer.Abort})
    try:
        result = command.main(args=argv, prog_name="ekka", standalone_mode=False)
    except exits as exc:
        return int(getattr(exc, "exit_code", 0))
    except usage as exc:
        assert isinstance(exc, (click.ClickException, typer_click.ClickException))
        exc.show()
        return 2
    except aborts:
        console.print("aborted")
        return 130
    except EkkaError as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return int(result) if isinstance(result, int) else 0


__all__ = ["app", "main", "UsageError"]
