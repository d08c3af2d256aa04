"""`ekka compare`: two traces layer by layer."""

from __future__ import annotations

from pathlib import Path

import typer

from ekka.cli._app import out


def compare(
    target: Path = typer.Argument(..., help="Target trace folder (vLLM)."),
    reference: Path = typer.Argument(..., help="Reference trace folder (transformers)."),
    step: int | None = typer.Option(None, help="Only this step (0 = prefill)."),
) -> None:
    """Print the layer-by-layer relative error of two traces of the same prompt."""
    from ekka.report import comparisons_table
    from ekka.tracer.compare import compare_traces
    from ekka.tracer.trace import TraceReader

    rows = compare_traces(TraceReader(target), TraceReader(reference), step=step)
    comparisons_table(rows, out)
