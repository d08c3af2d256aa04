"""`ekka bench`: the silent-error benchmark's scores."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ekka.cli._app import console, escape_markup, out


def bench(
    cases_dir: Path = typer.Argument(..., help="Folder of bench cases (bench/cases)."),
    case: list[str] = typer.Option([], help="Run only this case id (repeatable)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    no_bisect: bool = typer.Option(False, "--no-bisect", help="Localize only (no bisection)."),
    workdir: Path = typer.Option(Path(".ekka/bench"), help="Where models, traces and reports go."),
) -> None:
    """Run the silent-error benchmark and score top-1 / top-5 component accuracy."""
    from rich.progress import Progress
    from rich.table import Table

    from ekka.bench import find_cases, run_case, summarize

    cases = find_cases(cases_dir, case)
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(cases))
        for c in cases:
            progress.update(task, description=f"{c.id}")

            def say(message: str, case_id: str = c.id) -> None:
                progress.update(task, description=f"{case_id}: {message}")

            result = run_case(c, workdir, bisect=not no_bisect, say=say)
            results.append(result)
            progress.advance(task)
            mark = "ok" if result.top1 else ("top-5" if result.top5 else "MISS")
            if not no_bisect:
                mark += f", bisect {'ok' if result.extra.get('bisect') else 'MISS'} in {result.extra.get('probes')} probes"
            console.print(f"{c.id}: {mark} ({result.seconds:.0f} s) {result.error or ''}")
            if result.extra.get("reduction"):
                reduced = result.extra["reduction"]
                console.print(f"  reduced scenario: {escape_markup(reduced['statement'])}")
    summary = summarize(results)
    title = f"ekka bench: top-1 {summary['top1']:.0%}, top-5 {summary['top5']:.0%}"
    if "bisect" in summary:
        title += f", bisection {summary['bisect']:.0%}"
    table = Table(title=f"{title} ({len(results)} cases)")
    columns = ["case", "top-1", "top-5", "first suspects", "seconds"] + (
        [] if no_bisect else ["bisect", "probes"]
    )
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in results:
        row = [
            r.id,
            "yes" if r.top1 else "no",
            "yes" if r.top5 else "no",
            ", ".join(r.suspects[:3]) or (r.error or "-"),
            f"{r.seconds:.0f}",
        ]
        if not no_bisect:
            row += ["yes" if r.extra.get("bisect") else "no", str(r.extra.get("probes", "-"))]
        table.add_row(*row)
    out.print(table)
    if json_file:
        json_file.write_text(json.dumps(summary, indent=1))
        out.print(f"results: {json_file}")
