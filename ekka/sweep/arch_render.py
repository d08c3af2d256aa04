"""An architecture sweep's reports: Markdown (the summary, the new and known findings, every
row), an SVG chart of the largest ratios, HTML (both), and the JSON."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

from ekka.frameworks import framework as framework_named
from ekka.sweep.arch_rows import (
    MAX_TOKENS,
    PROMPT_IDS,
    ArchRow,
    RowKind,
    SweepReport,
    confirmed_latent,
    shown,
)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def _what(report: SweepReport, r: ArchRow) -> str:
    """A row's finding in a line: its latent component, or its first divergence."""
    latent = confirmed_latent(r)
    if latent is not None and report.kind(r) is RowKind.LATENT:
        return latent.statement()
    above = "; ".join(x.statement() for x in r.latent) or "no component replayed"
    if report.kind(r) is RowKind.UNEXPLAINED:
        return (
            f"a component above the threshold whose error fades, neither confirmed by its "
            f"replay nor named as an alignment gap: {above}"
        )
    if report.kind(r) is RowKind.GAP and r.status == "match":
        return f"a named alignment gap (the output matches): {above}"
    return f"ratio {_fmt(r.ratio)} at `{r.component or 'output'}` — {r.reason}"


def render_markdown(report: SweepReport, folders: Mapping[str, str] | None = None) -> str:
    """`folders`: a finding's slug -> its folder (relative to the report), linked."""
    s = report.summary()
    v = report.versions
    target = next((r.framework for r in report.rows), next(iter(v)))
    title = framework_named(target).title
    lines = [
        "# Ekka architecture sweep",
        "",
        f"{title} {v.get(target, '?')} against transformers "
        f"{v['transformers']}; {s['architectures']} "
        f"architectures, {s['load_both']} load on both sides; prompt of {len(PROMPT_IDS)} tokens, "
        f"{MAX_TOKENS} generated; {s['seconds']:.0f} s "
        f"({sum(r.seconds for r in report.rows):.0f} s in its rows, kept ones included).",
        "",
    ]
    if report.notes:
        lines += [f"{title} ran with: {'; '.join(report.notes)}.", ""]
    for dtype in sorted({r.dtype for r in report.rows}):
        counts = ", ".join(f"{n} {kind}" for kind, n in s[f"{dtype} kinds"].items() if n)
        lines.append(f"- {dtype}: {counts}")
    lines += [
        "",
        "Row kinds: *match*; *latent* (a component's own output differs beyond the threshold and "
        "its replay alone on the reference's input confirms it, though the error fades before "
        "the logits on this prompt); *diverges*; *alignment gap* (a difference of definition "
        "Ekka names); *unexplained* (a component above the threshold whose error fades, "
        f"neither confirmed nor named: to examine); *fails* (with its cause: {title}, transformers, "
        "a kernel missing from the CPU build, Ekka's configuration, Ekka).",
    ]
    new = [r for r in report.rows if report.new(r)]
    # every row with a finding, a matching one too (a finding its config does not show)
    known = [(r, f) for r in report.rows if (f := report.finding(r)) is not None]
    lines += ["", "## New findings", ""]
    for r in new:
        where = (folders or {}).get(f"new-{r.architecture}-{r.dtype}")
        link = f" [finding folder]({where})" if where else ""
        lines.append(
            f"- **{r.architecture}** ({r.dtype}, {report.label(r)}): {_what(report, r)}{link}"
            f"\n  `{r.command}`"
        )
    if not new:
        lines.append("None: every finding below is a known one.")
    lines += ["", "## Known findings", ""]
    for r, f in known:
        where = (folders or {}).get(f.slug or "")
        link = f" [finding folder]({where})" if where else ""
        lines.append(
            f"- **{r.architecture}** ({r.dtype}, {report.label(r)}, ratio {_fmt(r.ratio)}): "
            f"{shown(f.kind if f.kind == 'alignment gap' else f.classification)}: {f.note}{link}"
        )
    lines += [
        "",
        "## All rows",
        "",
        f"| architecture | dtype | kind | {title} | transformers | largest ratio | first divergence | suspects | why / verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no", None: "-"}
    for r in report.rows:
        verdict = r.reason
        if report.kind(r) in (RowKind.LATENT, RowKind.UNEXPLAINED, RowKind.GAP):
            verdict = _what(report, r)
        reason = verdict.replace("|", "\\|").replace("\n", " ")[:200]
        first = r.component or next((x.owner for x in r.latent if x.confirmed), None)
        lines.append(
            f"| {r.architecture} | {r.dtype} | {report.label(r)} | {yes[r.vllm_loads]} | "
            f"{yes[r.transformers_loads]} | {_fmt(r.ratio)} | {first or '-'} | "
            f"{', '.join(r.suspects) or '-'} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def chart_svg(report: SweepReport) -> str:
    """Bars of log10(largest ratio) per architecture, one colour per dtype."""
    rows = [r for r in report.rows if r.ratio is not None]
    archs = list(dict.fromkeys(r.architecture for r in rows))
    dtypes = sorted({r.dtype for r in rows})
    colours = {"float32": "#3b6fb6", "bfloat16": "#d9822b"}
    bar, gap, left, height = 6, 6, 230, 0
    parts = []
    top = max([_log(r.ratio) for r in rows] + [1.0])
    scale = 500 / (top + 3)
    for i, arch in enumerate(archs):
        y = 30 + i * (bar * len(dtypes) + gap)
        parts.append(f"<text x='{left - 6}' y='{y + bar * len(dtypes) - 2}' text-anchor='end' "
                     f"font-size='10'>{html.escape(arch)}</text>")  # fmt: skip
        for j, dtype in enumerate(dtypes):
            r = next((r for r in rows if r.architecture == arch and r.dtype == dtype), None)
            if r is None:
                continue
            width = max(1.0, (_log(r.ratio) + 3) * scale)
            parts.append(
                f"<rect x='{left}' y='{y + j * bar}' width='{width:.1f}' height='{bar - 1}' "
                f"fill='{colours.get(dtype, '#888')}'><title>{html.escape(arch)} {dtype}: "
                f"{_fmt(r.ratio)}</title></rect>"
            )
        height = y + bar * len(dtypes) + 30
    legend = " ".join(f"<tspan fill='{colours.get(d, '#888')}'>&#9632; {d}</tspan>" for d in dtypes)
    parts.append(f"<text x='{left}' y='16' font-size='11'>log10 of the largest error ratio "
                 f"(axis from -3) {legend}</text>")  # fmt: skip
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='800' height='{max(height, 60)}'>"
        + "".join(parts)
        + "</svg>"
    )


def _log(ratio: float | None) -> float:
    if ratio is None or not math.isfinite(ratio):
        return 12.0
    return math.log10(max(ratio, 1e-3))


def render_html(report: SweepReport, folders: Mapping[str, str] | None = None) -> str:
    import markdown_it

    text = render_markdown(report, folders)
    body = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ekka architecture sweep</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:"
        "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px}</style></head><body>"
        f"{chart_svg(report)}{body}</body></html>"
    )


def write_reports(report: SweepReport, out: Path) -> dict[str, Path]:
    """sweep.md, sweep.json, sweep.html, and a folder per finding (`arch_findings`)."""
    from ekka.sweep.arch_findings import write_finding_folders

    folders = write_finding_folders(report, out)
    paths = {"md": out / "sweep.md", "json": out / "sweep.json", "html": out / "sweep.html"}
    paths["md"].write_text(render_markdown(report, folders))
    paths["json"].write_text(
        json.dumps({**report.to_json(), "finding_folders": folders}, indent=1) + "\n"
    )
    paths["html"].write_text(render_html(report, folders))
    return paths
