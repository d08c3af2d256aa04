"""An architecture sweep's reports: Markdown (the summary, the new and known findings, every
row), an SVG chart of the largest ratios, HTML (both), and the JSON."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ekka.sweep.arch_rows import MAX_TOKENS, PROMPT_IDS, SweepReport, transient


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def render_markdown(report: SweepReport) -> str:
    s = report.summary()
    v = report.versions
    lines = [
        "# Ekka architecture sweep",
        "",
        f"vLLM {v['vllm']} against transformers {v['transformers']}; {s['architectures']} "
        f"architectures, {s['load_both']} load on both sides; prompt of {len(PROMPT_IDS)} tokens, "
        f"{MAX_TOKENS} generated; {s['seconds']:.0f} s.",
        "",
    ]
    for dtype in sorted({r.dtype for r in report.rows}):
        counts = ", ".join(f"{n} {status}" for status, n in s[dtype].items() if n)
        lines.append(f"- {dtype}: {counts}")
    lines += [
        "",
        "The largest ratio is over every aligned component and the logits. "
        f"{s['match_with_transient_ratio']} matching rows have a component above the threshold "
        "whose error does not persist (marked *transient*): the logits match; often a component "
        "whose output the two frameworks define otherwise (an alignment gap to examine).",
    ]
    new = [r for r in report.rows if r.status == "diverges" and not r.note]
    known = [r for r in report.rows if r.status == "diverges" and r.note]
    lines += ["", "## New findings", ""]
    lines += [
        f"- **{r.architecture}** ({r.dtype}): ratio {_fmt(r.ratio)} at `{r.component or 'output'}`"
        f" — {r.reason}\n  `{r.command}`"
        for r in new
    ] or ["None: every divergence below is a known one."]
    lines += ["", "## Known findings", ""]
    lines += [f"- **{r.architecture}** ({r.dtype}), ratio {_fmt(r.ratio)}: {r.note}" for r in known]
    lines += [
        "",
        "## All rows",
        "",
        "| architecture | dtype | status | vLLM | transformers | largest ratio | first divergence | suspects | why / verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no", None: "-"}
    for r in report.rows:
        reason = r.reason.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(
            f"| {r.architecture} | {r.dtype} | {r.status}{' (transient)' if transient(r) else ''} | {yes[r.vllm_loads]} | "
            f"{yes[r.transformers_loads]} | {_fmt(r.ratio)} | {r.component or '-'} | "
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


def render_html(report: SweepReport) -> str:
    import markdown_it

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ekka architecture sweep</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:"
        "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px}</style></head><body>"
        f"{chart_svg(report)}{body}</body></html>"
    )


def write_reports(report: SweepReport, out: Path) -> dict[str, Path]:
    paths = {"md": out / "sweep.md", "json": out / "sweep.json", "html": out / "sweep.html"}
    paths["md"].write_text(render_markdown(report))
    paths["json"].write_text(json.dumps(report.to_json(), indent=1) + "\n")
    paths["html"].write_text(render_html(report))
    return paths
