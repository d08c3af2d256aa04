"""The full diagnosis in a terminal: progress while it runs, the root cause and the reports'
paths after (`ekka diagnose --repo/--good/--bad` and `ekka demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ekka.cli._app import console, escape_markup, out

if TYPE_CHECKING:
    from ekka.full import FullConfig


def run_full(config: FullConfig, out_dir: Path) -> str | None:
    """Run the full diagnosis with progress, print the root cause, write the reports; returns
    the first bad commit's sha (None when none was found)."""
    from ekka.bisect.search import PrintObserver
    from ekka.full import run_full_diagnosis
    from ekka.report import suspects_table, write_reports

    with console.status("diagnosing ...") as status:
        diagnosis, result = run_full_diagnosis(
            config,
            progress=lambda msg: status.update(msg),
            observer=PrintObserver(lambda line: console.print(line, highlight=False)),
        )
    paths = write_reports(diagnosis, out_dir)
    suspects_table(diagnosis, out)
    if diagnosis.root_cause:
        out.print(f"[bold]root cause:[/] {escape_markup(diagnosis.root_cause.statement)}")
    else:
        out.print(
            f"bisection: {result.status.value}; candidates: {', '.join(c.short for c in result.candidates)}"
        )
    out.print(f"reports: {paths['md']}, {paths['json']}, {paths['html']}")
    return result.first_bad.sha if result.first_bad else None
