"""The architecture sweep (`ekka sweep --architectures all|NAME,... [--framework F]`): each zoo
architecture (hand-written and derived, `ekka.zoo`) built tiny with random weights and diagnosed
against transformers on the installed vLLM or SGLang, the same path as `ekka diagnose`
(`run_diagnosis`). `all` is the zoo's architectures that the framework's model registry
holds (as its sources list them, `ekka.zoo.derive`); with SGLang, one whose model module does not
import in SGLang's interpreter is a row of SGLang's failure, with the import's error.

One row per (architecture, dtype): it builds or not, loads in vLLM / in transformers (and why
not), matches or diverges (the first divergence, its ratio, the suspects), the command that
reproduces it, and the note of a known finding (`ekka/data/arch-sweep-findings.json`: what a
divergence on a pristine release was found to be, so the next sweep shows only what is new).
Finished rows are kept in a database (`ekka.storage.sweeps`, table sweep_arch_rows) under a key of the
versions and settings: a sweep started again skips them.

The parts: `arch_rows` (settings and records), `arch_runner` (the sweep), `arch_store` (the
finished rows), `arch_render` (the reports); this module is the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ekka.sweep.arch_render import render_markdown
from ekka.sweep.arch_rows import FRAMEWORK
from ekka.sweep.arch_runner import at_commit, choose, framework_registry, run_sweep


def run_cli(
    architectures: str,
    dtypes: str,
    out_dir: Path,
    db: str | None,
    json_file: Path | None,
    *,
    out: Any,
    console: Any,
    report_only: bool = False,
    repo: str | None = None,
    commit: str | None = None,
    framework: str = FRAMEWORK,
) -> int:
    """`ekka sweep --architectures`: the sweep with a progress bar; 1 when a new finding."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ekka.frameworks import framework as framework_named

    framework_named(framework)  # an unknown one: a one-line message
    registry = framework_registry(framework)
    names = choose(architectures, framework)
    chosen = [d.strip() for d in dtypes.split(",") if d.strip()]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task("architecture sweep", total=len(names) * len(chosen))

        def tick(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, description=message[:70])

        if repo is None or commit is None:
            report = run_sweep(
                names, chosen, out_dir, db, progress=tick, report_only=report_only,
                framework=framework, registry=registry,
            )  # fmt: skip
        else:
            report = at_commit(
                repo, commit, names, chosen, out_dir, db, tick, report_only, framework, registry
            )
    s = report.summary()
    out.print(render_markdown(report).split("## All rows")[0], markup=False, highlight=False)
    out.print(f"reports: {out_dir / 'sweep.md'}, sweep.html, sweep.json", markup=False)
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return 1 if s["new_findings"] else 0
