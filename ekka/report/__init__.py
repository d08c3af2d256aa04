"""Reports of a diagnosis: the typed records and their renderers.

`records` holds what a diagnosis found as frozen dataclasses (`Diagnosis`, its `Localization`
with the `Comparison`s and `Suspect`s, the `TargetInfo`, and in full mode the `RootCause` and
the `BisectionSummary`), each with `to_json()` and `from_json()`: a saved report.json is read
back with `Diagnosis.from_json(json.loads(text))` in a process that has neither torch nor NumPy
(importing this package imports neither). `render` writes the Markdown, HTML and JSON reports
and prints the suspects' and the comparisons' tables.
"""

from __future__ import annotations

from ekka.report.records import (
    BisectionSummary,
    CommitRef,
    Comparison,
    Coverage,
    Diagnosis,
    Latent,
    LatentVerdict,
    Localization,
    OutputCheck,
    ProbeStep,
    Reduction,
    RootCause,
    Suspect,
    TargetInfo,
    TouchedSymbol,
)
from ekka.report.render import (
    comparisons_table,
    plot_ratios,
    render_html,
    render_markdown,
    suspects_table,
    write_reports,
)

__all__ = [
    "BisectionSummary",
    "CommitRef",
    "Comparison",
    "Coverage",
    "Diagnosis",
    "Latent",
    "LatentVerdict",
    "Localization",
    "OutputCheck",
    "ProbeStep",
    "Reduction",
    "RootCause",
    "Suspect",
    "TargetInfo",
    "TouchedSymbol",
    "comparisons_table",
    "plot_ratios",
    "render_html",
    "render_markdown",
    "suspects_table",
    "write_reports",
]
