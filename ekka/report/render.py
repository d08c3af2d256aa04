"""A diagnosis as a user reads it: Markdown, HTML (with the error-ratio plot), JSON, a table.

`write_reports` writes all four files of a diagnosis' report folder; `suspects_table` and
`comparisons_table` print to a terminal (the tracer computes, this module renders). The renderers take a
`Diagnosis` (from a run, or read back from a saved report.json with `Diagnosis.from_json`).
matplotlib, markdown-it and rich are imported inside the functions that use them; internal
timings (`Diagnosis.timings`) stay in the JSON and never reach a rendered report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ekka.report.records import BisectionSummary, Comparison, Diagnosis, RootCause


def write_reports(diagnosis: Diagnosis, out: str | Path) -> dict[str, Path]:
    """report.json, report.md, report.html and the error-ratio plot ratios.png in `out`; the
    paths by kind ("json", "md", "html", "png")."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": folder / "report.json",
        "md": folder / "report.md",
        "html": folder / "report.html",
        "png": folder / "ratios.png",
    }
    paths["json"].write_text(json.dumps(diagnosis.to_json(), indent=1))
    paths["md"].write_text(render_markdown(diagnosis))
    plot_ratios(diagnosis, paths["png"])
    paths["html"].write_text(render_html(diagnosis, paths["png"]))
    return paths


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def render_markdown(diagnosis: Diagnosis) -> str:
    """The report: verdict, run, root cause and probe log (full mode), suspects, the
    comparisons of the pass where the error starts and every pass's logits, unmapped
    components."""
    loc = diagnosis.localization
    target = diagnosis.target
    lines = [
        "# Ekka diagnosis",
        "",
        f"**Verdict: {diagnosis.verdict}.**",
        "",
        f"- model: `{diagnosis.model}`, dtype {diagnosis.dtype}, "
        f"{len(diagnosis.prompt_ids)} prompt tokens, {diagnosis.max_tokens} generated",
        f"- target: {target.describe()} from `{target.path}`",
        f"- greedy tokens: target {list(diagnosis.target_tokens)}, "
        f"reference (teacher-forced) {list(diagnosis.reference_tokens)}",
        f"- {len(diagnosis.comparisons)} aligned comparisons, threshold {loc.threshold:g}, "
        f"{len(diagnosis.unmapped)} unmapped components",
    ]
    if diagnosis.output is not None:
        lines.append(f"- output (logits and greedy tokens): {diagnosis.output.reason}")
    if diagnosis.engine:
        settings = ", ".join(
            f"`{k}={json.dumps(v, default=str)}`" for k, v in diagnosis.engine.items()
        )
        lines.append(f"- engine arguments: {settings}")
    if diagnosis.scenario is not None:
        before = len(diagnosis.scenario.get("before") or [])
        alongside = len(diagnosis.scenario.get("alongside") or [])
        lines.append(
            f"- scenario: {before} request(s) before the traced one, {alongside} alongside it "
            "(the reference runs the traced request alone)"
        )
    lines.append("")
    if diagnosis.reduction is not None:
        r = diagnosis.reduction
        lines += [
            "## Reduced scenario",
            "",
            f"- {r.statement}",
            f"- found in {r.runs} runs of the scenario ({r.seconds:.0f} s), from "
            f"{r.requests} other request(s)",
            f"- reproduce: `{r.command}`",
            "",
        ]
    if diagnosis.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in diagnosis.notes] + [""]
    if diagnosis.latent:
        lines += [
            "## Latent differences",
            "",
            "Components above the threshold whose error fades before the logits, each replayed "
            "alone on the reference's input (confirmed: the module, or the code feeding it, "
            "differs; the output still matches on this prompt).",
            "",
        ]
        lines += [f"- {'**confirmed**' if x.confirmed else 'not confirmed'}: {x.statement()}"
                  for x in diagnosis.latent]  # fmt: skip
        lines.append("")
    if diagnosis.bisection is not None:
        lines += _bisection_markdown(diagnosis.bisection, diagnosis.root_cause)
    if loc.suspects:
        lines += [
            "## Suspects",
            "",
            "| rank | component | class | source | ratio | evidence |",
            "|---|---|---|---|---|---|",
        ]
        for s in loc.suspects:
            src = f"{s.source_file}:{s.source_line}" if s.source_file else "-"
            lines.append(
                f"| {s.rank} | `{s.component}` | {s.module_class} | `{src}` | {_fmt(s.ratio)} "
                f"| {s.evidence} |"
            )
        lines.append("")
    lines += ["## Comparisons (first pass where the error starts, and the logits of each pass)", ""]
    lines += [
        "| pass | step | component | ratio | rel. error | pairing |",
        "|---|---|---|---|---|---|",
    ]
    start_pass = loc.change_point.pass_index if loc.change_point else 0
    for c in diagnosis.comparisons:
        if c.pass_index == start_pass or c.target == "logits_processor":
            pairing = f"{c.plan}: {c.detail}" if c.detail else c.plan
            lines.append(
                f"| {c.pass_index} | {c.step} | `{c.target}` | {_fmt(c.ratio)} | {c.error:.2e} "
                f"| {pairing} |"
            )
    if diagnosis.unmapped:
        lines += ["", "## Unmapped components", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in sorted(diagnosis.unmapped)]
    if diagnosis.coverage:
        lines += _coverage_markdown(diagnosis)
    lines.append("")
    return "\n".join(lines)


def _passes(passes: tuple[int, ...]) -> str:
    """`0-2, 4`: pass numbers as runs."""
    runs: list[list[int]] = []
    for p in passes:
        if runs and runs[-1][1] == p - 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


def _coverage_markdown(diagnosis: Diagnosis) -> list[str]:
    """The coverage map: every target module, the passes compared and those not, and why."""
    entries = diagnosis.coverage
    whole = sum(1 for c in entries if c.complete)
    some = sum(1 for c in entries if c.compared and not c.complete)
    lines = [
        "",
        "## Coverage",
        "",
        f"{len(entries)} target modules: {whole} compared in every pass they ran in, {some} in "
        f"some, {len(entries) - whole - some} in none.",
        "",
        "| component | class | compared in passes | not compared in passes | why not |",
        "|---|---|---|---|---|",
    ]
    for c in entries:
        lines.append(
            f"| `{c.component}` | {c.module_class} | {_passes(c.compared)} "
            f"| {_passes(c.not_compared)} | {c.reason or '-'} |"
        )
    return lines


def _bisection_markdown(bisection: BisectionSummary, root_cause: RootCause | None) -> list[str]:
    first = bisection.first_bad
    lines = ["## Root cause", ""]
    if root_cause is not None:
        lines += [root_cause.statement, ""]
    if first is not None:
        commit = f"first bad commit `{first.sha[:12]}` {first.summary} (PR #{first.pr or '-'})"
    else:
        commit = "no single first bad commit"
    lines.append(
        f"- bisection: {bisection.status}, {commit}, {bisection.probes} probes, "
        f"{bisection.cached} verdicts from the cache"
    )
    if first is None and bisection.candidates:
        lines.append(
            "- candidates: " + ", ".join(f"`{c.short}` {c.summary}" for c in bisection.candidates)
        )
    touched = root_cause.touched if root_cause is not None else ()
    if touched:
        lines.append(
            "- the commit changes: "
            + ", ".join(f"`{t.qualname}` in `{t.file}`" for t in touched[:8])
        )
    lines += [
        "",
        "### Probe log",
        "",
        "| round | commit | verdict | reason | seconds |",
        "|---|---|---|---|---|",
    ]
    for step in bisection.steps:
        cached = " (cached)" if step.cached else ""
        lines.append(
            f"| {step.round} | `{step.commit[:10]}` {step.summary} | {step.verdict}{cached} "
            f"| {step.reason} | {step.seconds:.1f} |"
        )
    return lines + [""]


def plot_ratios(diagnosis: Diagnosis, path: Path) -> None:
    """The error ratio of every comparison in the target's call order (log scale), with the
    threshold, the passes' boundaries and the change point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = diagnosis.comparisons
    xs = list(range(len(comps)))
    ys = [min(c.ratio, 1e12) if math.isfinite(c.ratio) else 1e12 for c in comps]
    ys = [max(y, 1e-3) for y in ys]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(xs, ys, marker=".", linewidth=0.8)
    ax.set_yscale("log")
    ax.axhline(diagnosis.localization.threshold, color="red", linestyle="--", label="threshold")
    boundaries = [i for i in range(1, len(comps)) if comps[i].pass_index != comps[i - 1].pass_index]
    for b in boundaries:
        ax.axvline(b - 0.5, color="grey", linewidth=0.5)
    cp = diagnosis.localization.change_point
    if cp is not None:
        ax.axvline(cp.sequence, color="orange", label=f"change point: {cp.target}")
    ax.set_xlabel("aligned component, target call order (grey lines: forward passes)")
    ax.set_ylabel("robust error ratio")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render_html(diagnosis: Diagnosis, png: Path) -> str:
    """The Markdown report as one HTML page, the plot at `png` embedded."""
    import base64
    import html

    import markdown_it

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(diagnosis))
    image = base64.b64encode(png.read_bytes()).decode()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ekka diagnosis</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-size:13px}</style>"
        f"</head><body><img alt='{html.escape('error ratio along the call sequence')}' "
        f"src='data:image/png;base64,{image}'/>{body}</body></html>"
    )


def suspects_table(diagnosis: Diagnosis, console: Any) -> None:
    """The suspects as a rich table on `console`, titled with the verdict."""
    from rich.table import Table

    table = Table(title=diagnosis.verdict)
    for col in ("rank", "component", "class", "source", "ratio", "pass/step"):
        table.add_column(col, overflow="fold")
    for s in diagnosis.localization.suspects:
        src = f"{s.source_file}:{s.source_line}" if s.source_file else "-"
        table.add_row(
            str(s.rank), s.component, s.module_class, src, _fmt(s.ratio), f"{s.pass_index}/{s.step}"
        )
    console.print(table)


def comparisons_table(
    rows: Sequence[Comparison], console: Any, *, title: str | None = None
) -> None:
    """Every comparison as a rich table on `console`, a row red where its ratio exceeds 2."""
    from rich.table import Table

    table = Table(title=title or "target vs reference, component by component")
    for col in ("step", "pass", "component", "class", "rel. error", "ratio", "pairing"):
        table.add_column(col, overflow="fold")
    for c in rows:
        style = "red" if c.ratio > 2 else None
        table.add_row(
            str(c.step),
            str(c.pass_index),
            c.target,
            c.module_class,
            f"{c.error:.2e}",
            f"{c.ratio:.3g}",
            c.plan,
            style=style,
        )
    console.print(table)
