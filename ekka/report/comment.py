"""A diagnosis in the Markdown of a GitHub comment: the first bad commit's lines, the suspects'
table, the chart of the error ratio and the command that reproduces it. Shared by the bot's
final comment (`ekka.bot.messages`) and the nightly sweep's issues (`ekka.sweep.messages`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ekka.report.records import BisectionSummary, Comparison, Diagnosis


def first_bad_lines(repository: str, bisection: BisectionSummary) -> list[str]:
    """The first bad commit (linked, with its PR) or the candidates, as list items."""
    first = bisection.first_bad
    lines = []
    if first is not None:
        pr = (
            f", [PR #{first.pr}]({_pull_url(repository, first.pr)})"
            if first.pr
            else ", no PR found"
        )
        lines.append(
            f"- first bad commit: [`{first.short}`]({_commit_url(repository, first.sha)}) "
            f"{first.summary}{pr}"
        )
    elif bisection.candidates:
        listing = ", ".join(f"`{c.short}` {c.summary}" for c in bisection.candidates)
        lines.append(f"- candidates: {listing}")
    return lines


def target_line(diagnosis: Diagnosis) -> str:
    """The framework that ran the target, as a list item: "- target: SGLang 0.5.23 (SGLang's
    torch-native paths; no sgl_kernel)"."""
    return f"- target: {diagnosis.target.describe()}"


def suspects_table(diagnosis: Diagnosis) -> str:
    """The suspects as a Markdown table ("" when there are none)."""
    suspects = diagnosis.localization.suspects
    if not suspects:
        return ""
    rows = [
        "#### Suspects",
        "",
        "| rank | component | class | source | ratio | replayed alone |",
        "|---|---|---|---|---|---|",
    ]
    for s in suspects:
        source = f"`{s.source_file}:{s.source_line}`" if s.source_file else "-"
        replay = {True: "wrong by itself", False: "error from upstream", None: "-"}[s.confirmed]
        rows.append(
            f"| {s.rank} | `{s.component}` | {s.module_class} | {source} | {_fmt(s.ratio)} | {replay} |"
        )
    return "\n".join(rows) + "\n\n"


def ratio_chart(diagnosis: Diagnosis, limit: int = 48) -> str:
    """A Mermaid xychart of log10(error ratio) along the components of the pass where the
    error starts, with the threshold ("" when there is nothing to draw)."""
    change = diagnosis.localization.change_point
    pass_index = change.pass_index if change is not None else 0
    points = [c for c in diagnosis.comparisons if c.pass_index == pass_index and c.kind == "output"]
    if not points:
        return ""
    points = _thin(points, limit, change)
    labels = ", ".join(f'"{i} {_short(c.target)}"' for i, c in enumerate(points, 1))
    values = [_log10(c.ratio) for c in points]
    threshold = round(math.log10(diagnosis.localization.threshold), 2)
    top = max(max(values), threshold) + 0.5
    bottom = min(min(values), 0.0) - 0.5
    return (
        "#### Error ratio along the components\n\n"
        f"log10 of the error ratio in pass {pass_index}, in {diagnosis.target.title}'s call "
        "order; the flat line is "
        f"the threshold ({diagnosis.localization.threshold:g}).\n\n"
        "```mermaid\nxychart-beta\n"
        f'    title "log10 error ratio, pass {pass_index}"\n'
        f"    x-axis [{labels}]\n"
        f'    y-axis "log10 ratio" {bottom:.1f} --> {top:.1f}\n'
        f"    line [{', '.join(f'{v:.2f}' for v in values)}]\n"
        f"    line [{', '.join(f'{threshold:.2f}' for _ in values)}]\n"
        "```\n\n"
    )


def _thin(points: Sequence[Comparison], limit: int, keep: Comparison | None) -> list[Comparison]:
    """At most `limit` points, evenly spaced, the change point kept."""
    if len(points) <= limit:
        return list(points)
    step = len(points) / limit
    chosen = {int(i * step) for i in range(limit)}
    if keep is not None:
        chosen |= {i for i, c in enumerate(points) if c.sequence == keep.sequence}
    return [points[i] for i in sorted(chosen)]


def _short(name: str) -> str:
    """A label for the chart: `model.layers.0.input_layernorm` -> `0.input_layernorm`."""
    name = name.replace('"', "'")
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        parts = parts[i + 1 :]
    return ".".join(parts[-2:]) if len(parts) > 2 else ".".join(parts)


def _log10(ratio: float) -> float:
    if not math.isfinite(ratio):
        return 12.0
    return math.log10(max(ratio, 1e-3))


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def _commit_url(repository: str, sha: str) -> str:
    return f"https://github.com/{repository}/commit/{sha}"


def _pull_url(repository: str, number: int) -> str:
    return f"https://github.com/{repository}/pull/{number}"
