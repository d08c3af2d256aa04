"""The comments the bot posts: templates (upper-case constants) and the functions that fill
them. Every comment about a job carries the hidden marker `<!-- ekka-job:ID -->` (on the PR:
`<!-- ekka-job:ID pr -->`), a command's reply `<!-- ekka-command:ID -->`, so the bot finds and
edits its own comment instead of posting another.

The final report is made from the diagnosis as saved (`ekka.report.Diagnosis`, read back from
report.json) or, for a command-oracle bisection, from the bisection's JSON.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence

from ekka.bot.commands import USAGE
from ekka.report import BisectionSummary, Comparison, Diagnosis
from ekka.request import JobParams

JOB_MARKER = "<!-- ekka-job:{job} -->"
PR_MARKER = "<!-- ekka-job:{job} pr -->"
COMMAND_MARKER = "<!-- ekka-command:{command} -->"

QUEUED = """{marker}
:hourglass_flowing_sand: **Ekka** queued job #{job}: bisecting `{repository}` between `{good}` and `{bad}` with model `{model}`. This comment will show the progress and then the report."""

PROGRESS = """{marker}
:mag: **Ekka** job #{job} is running: {progress}

<sub>`/ekka status` shows the state, `/ekka cancel` stops the job.</sub>"""

FAILED = """{marker}
:x: **Ekka** job #{job} failed: {error}

{advice}"""

CANCELLED = """{marker}
:stop_sign: **Ekka** job #{job} was cancelled by @{user}."""

REFUSED = """{marker}
@{user}, thank you for the report. Starting an Ekka job needs write access to this repository; a maintainer can run `/ekka diagnose` here, or add you to the bot's allow-list."""

UNKNOWN_MODEL = """{marker}
@{user}, the bot has no model `{model}`. The configured models are: {models}. Write `/ekka diagnose model=NAME ...`."""

UNKNOWN_SCENARIO = """{marker}
@{user}, the bot has no scenario `{scenario}`. The configured scenarios are: {scenarios}. Write `/ekka diagnose scenario=NAME ...`."""

NEEDS = """{marker}
@{user}, `/ekka diagnose` needs {what}: {how}"""

NO_CLONE = """{marker}
@{user}, this repository has no local clone configured for the bot, so it cannot bisect it. The bot's operator adds `path` to its `[[repositories]]` entry."""

BAD_COMMAND = """{marker}
@{user}, I could not read `{text}`: {message}.

```text
{usage}
```"""

HELP = """{marker}
Ekka finds silent errors in vLLM: the first bad commit and the component it breaks.

```text
{usage}
```"""

STATUS = """{marker}
Job #{job} ({link}): **{state}**. {progress}"""

NO_JOB = """{marker}
There is no Ekka job on this issue yet. `/ekka diagnose` starts one."""

BUSY = """{marker}
@{user}, job #{job} is already {state} on this issue ({link}); one job per issue at a time. `/ekka cancel` stops it."""

CANCEL_ACK = """{marker}
Job #{job}: {what}."""

PR_COMMENT = """{marker}
:wave: Ekka bisected a silent error reported in {issue_ref} to this pull request: its merge commit `{short}` is the first bad commit.

> {statement}

The report, the suspects and the command to reproduce: {issue_link}."""

FINAL = """{marker}
### Ekka job #{job}: {headline}

{statement}

{commit_lines}

{suspects}{chart}#### Reproduce locally

```bash
{reproduce}
```
{links}"""

ADVICE = {
    "usage": "Check the command's values (`/ekka help`) and try again.",
    "github": "GitHub kept failing; the job can be started again with `/ekka diagnose`.",
    "failure": "The bot's operator can read the job's log; try again with `/ekka diagnose` once it is fixed.",
}


def job_marker(job: int) -> str:
    return JOB_MARKER.format(job=job)


def pr_marker(job: int) -> str:
    return PR_MARKER.format(job=job)


def command_marker(command: int) -> str:
    return COMMAND_MARKER.format(command=command)


def usage() -> str:
    return USAGE


def progress_line(probed: int, estimate: int, last: str) -> str:
    """ "probed 4 of ~7 commits: ..." (the estimate is what a binary search takes)."""
    return f"probed {probed} of ~{max(estimate, probed)} commits: {last}"


def estimate_probes(commits: int) -> int:
    """Probes a binary search over `commits` takes: the two endpoints and log2 of the rest."""
    return 2 + max(0, math.ceil(math.log2(max(commits, 1))) - 1) if commits > 1 else 1


def commit_url(repository: str, sha: str) -> str:
    return f"https://github.com/{repository}/commit/{sha}"


def pull_url(repository: str, number: int) -> str:
    return f"https://github.com/{repository}/pull/{number}"


def issue_url(repository: str, issue: int, comment: int | None = None) -> str:
    anchor = f"#issuecomment-{comment}" if comment else ""
    return f"https://github.com/{repository}/issues/{issue}{anchor}"


def final_comment(
    *,
    job: int,
    repository: str,
    params: JobParams,
    diagnosis: Diagnosis | None,
    bisection: BisectionSummary,
    base_url: str | None,
) -> str:
    """The final report of a job: root cause, first bad commit and PR, suspects, the chart of
    the error ratio, how to reproduce, the HTML report's link."""
    first = bisection.first_bad
    if first is not None:
        headline = "first bad commit found"
    elif bisection.status == "ambiguous":
        headline = "the first bad commit is one of a few (skipped commits hide it)"
    else:
        headline = f"bisection {bisection.status}"
    statement = ""
    if diagnosis is not None and diagnosis.root_cause is not None:
        statement = f"**Root cause:** {diagnosis.root_cause.statement}"
    elif diagnosis is not None:
        statement = f"**At the bad commit:** {diagnosis.verdict}"
    elif first is not None:
        statement = f"**First bad commit:** `{first.short}` {first.summary}"
    lines = []
    if first is not None:
        pr = (
            f", [PR #{first.pr}]({pull_url(repository, first.pr)})" if first.pr else ", no PR found"
        )
        lines.append(
            f"- first bad commit: [`{first.short}`]({commit_url(repository, first.sha)}) "
            f"{first.summary}{pr}"
        )
    elif bisection.candidates:
        listing = ", ".join(f"`{c.short}` {c.summary}" for c in bisection.candidates)
        lines.append(f"- candidates: {listing}")
    lines.append(
        f"- range: good `{bisection.good.short}`, bad `{bisection.bad.short}`; "
        f"{bisection.probes} probes, {bisection.cached} verdicts from the cache, "
        f"{bisection.rounds} rounds"
    )
    if diagnosis is not None:
        lines.append(
            f"- model `{params.model_name}`, {diagnosis.dtype}, {len(diagnosis.prompt_ids)} "
            f"prompt tokens, {diagnosis.max_tokens} generated"
        )
        lines += [f"- note: {note}" for note in diagnosis.notes]
    suspects = suspects_table(diagnosis) if diagnosis is not None else ""
    chart = ratio_chart(diagnosis) if diagnosis is not None else ""
    links = ""
    if base_url:
        links = f"\nThe whole report: {base_url}/jobs/{job}/report"
    return (
        FINAL.format(
            marker=job_marker(job),
            job=job,
            headline=headline,
            statement=statement,
            commit_lines="\n".join(lines),
            suspects=suspects,
            chart=chart,
            reproduce=reproduce_command(params, bisection),
            links=links,
        ).rstrip()
        + "\n"
    )


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
        f"log10 of the error ratio in pass {pass_index}, in vLLM's call order; the flat line is "
        f"the threshold ({diagnosis.localization.threshold:g}).\n\n"
        "```mermaid\nxychart-beta\n"
        f'    title "log10 error ratio, pass {pass_index}"\n'
        f"    x-axis [{labels}]\n"
        f'    y-axis "log10 ratio" {bottom:.1f} --> {top:.1f}\n'
        f"    line [{', '.join(f'{v:.2f}' for v in values)}]\n"
        f"    line [{', '.join(f'{threshold:.2f}' for _ in values)}]\n"
        "```\n\n"
    )


def reproduce_command(params: JobParams, bisection: BisectionSummary) -> str:
    """The command that repeats the job on a maintainer's machine (local paths as placeholders)."""
    request = params.request
    words = [
        "ekka diagnose",
        "--model /path/to/" + shlex.quote(params.model_name),
    ]
    if request.prompt_ids:
        words.append("--prompt-ids " + ",".join(str(i) for i in request.prompt_ids))
    elif request.prompt_text:
        words.append("--prompt " + shlex.quote(request.prompt_text))
    words += [
        f"--dtype {shlex.quote(request.dtype)}",
        f"--max-tokens {int(request.max_tokens)}",
    ]
    for key, value in sorted(request.engine.items()):
        words.append("--engine " + shlex.quote(f"{key}={json.dumps(value)}"))
    if request.scenario is not None and request.scenario.name:
        words.append("--scenario /path/to/" + shlex.quote(f"{request.scenario.name}.toml"))
    words += [
        "--repo /path/to/vllm",
        f"--good {bisection.good.sha[:12]}",
        f"--bad {bisection.bad.sha[:12]}",
    ]
    return " \\\n    ".join(words)


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


# --- the nightly sweep's reports (`ekka sweep --config`, ekka.sweep.nightly) ------------------

REGRESSION_MARKER = "<!-- ekka-regression:{sweep}:{regression} -->"
REGRESSION_PR_MARKER = "<!-- ekka-regression:{sweep}:{regression} pr -->"
REGRESSION_FIXED_MARKER = "<!-- ekka-regression:{sweep}:{regression} fixed -->"

REGRESSION_TITLE = "Ekka sweep {sweep}: {model} ({dtype}) broken on {branch} since {short}{pr}"

REGRESSION_ISSUE = """{marker}
### Ekka sweep `{sweep}`: `{model}` ({dtype}) regressed on `{branch}`

{statement}

{commit_lines}

{suspects}#### Reproduce locally

```bash
{reproduce}
```

{seen}"""

REGRESSION_SEEN = "Last seen bad at `{short}` (sweep run {run}); a sweep that finds it good again closes this issue."

REGRESSION_PR = """{marker}
:wave: Ekka's nightly sweep `{sweep}` found that `{model}` ({dtype}) gives wrong outputs on `{branch}` since this pull request: its merge commit `{short}` is the first bad commit.

> {statement}

The report, the suspects and the command to reproduce: {issue_ref}."""

REGRESSION_FIXED = """{marker}
:white_check_mark: Ekka sweep `{sweep}` (run {run}): `{model}` ({dtype}) is good again at `{short}` on `{branch}`. Closing."""


def regression_marker(sweep: str, regression: int, kind: str = "") -> str:
    template = {"": REGRESSION_MARKER, "pr": REGRESSION_PR_MARKER, "fixed": REGRESSION_FIXED_MARKER}
    return template[kind].format(sweep=sweep, regression=regression)


def regression_issue(
    *,
    sweep: str,
    regression: int,
    repository: str,
    branch: str,
    params: JobParams,
    diagnosis: Diagnosis,
    run: int,
    head: str,
) -> tuple[str, str]:
    """The tracking issue of a regression a sweep found: (title, body)."""
    bisection = diagnosis.bisection
    assert bisection is not None
    first = bisection.first_bad
    lines = []
    if first is not None:
        pr = (
            f", [PR #{first.pr}]({pull_url(repository, first.pr)})" if first.pr else ", no PR found"
        )
        lines.append(
            f"- first bad commit: [`{first.short}`]({commit_url(repository, first.sha)}) "
            f"{first.summary}{pr}"
        )
    elif bisection.candidates:
        listing = ", ".join(f"`{c.short}` {c.summary}" for c in bisection.candidates)
        lines.append(f"- candidates: {listing}")
    lines.append(
        f"- last good sweep at `{bisection.good.short}`, bad at `{bisection.bad.short}`: "
        f"{bisection.probes} probes, {bisection.cached} verdicts from the cache"
    )
    lines.append(
        f"- model `{params.model_name}`, {diagnosis.dtype}, {len(diagnosis.prompt_ids)} "
        f"prompt tokens, {diagnosis.max_tokens} generated"
    )
    lines += [f"- note: {note}" for note in diagnosis.notes]
    statement = (
        f"**Root cause:** {diagnosis.root_cause.statement}"
        if diagnosis.root_cause is not None
        else f"**At the bad commit:** {diagnosis.verdict}"
    )
    body = REGRESSION_ISSUE.format(
        marker=regression_marker(sweep, regression),
        sweep=sweep,
        model=params.model_name,
        dtype=diagnosis.dtype,
        branch=branch,
        statement=statement,
        commit_lines="\n".join(lines),
        suspects=suspects_table(diagnosis),
        reproduce=reproduce_command(params, bisection),
        seen=regression_seen(head, run),
    )
    title = REGRESSION_TITLE.format(
        sweep=sweep,
        model=params.model_name,
        dtype=diagnosis.dtype,
        branch=branch,
        short=first.short if first is not None else bisection.bad.short,
        pr=f" (#{first.pr})" if first is not None and first.pr else "",
    )
    return title, body.rstrip() + "\n"


def regression_seen(head: str, run: int) -> str:
    return REGRESSION_SEEN.format(short=head[:10], run=run)
