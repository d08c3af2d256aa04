"""The comments the bot posts: templates (upper-case constants) and the functions that fill
them. Every comment about a job carries the hidden marker `<!-- ekka-job:ID -->` (on the PR:
`<!-- ekka-job:ID pr -->`), a command's reply `<!-- ekka-command:ID -->`, so the bot finds and
edits its own comment instead of posting another.

The final report is made from the diagnosis as saved (`ekka.report.Diagnosis`, read back from
report.json) or, for a command-oracle bisection, from the bisection's JSON.
"""

from __future__ import annotations

import math

from ekka.bot.commands import USAGE
from ekka.report import BisectionSummary, Diagnosis
from ekka.report.comment import first_bad_lines, ratio_chart, suspects_table, target_line
from ekka.request import JobParams, reproduce_command

JOB_MARKER = "<!-- ekka-job:{job} -->"
PR_MARKER = "<!-- ekka-job:{job} pr -->"
COMMAND_MARKER = "<!-- ekka-command:{command} -->"

QUEUED = """{marker}
:hourglass_flowing_sand: **Ekka** queued job #{job}: bisecting {framework} in `{repository}` between `{good}` and `{bad}` with model `{model}`. This comment will show the progress and then the report."""

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
Ekka finds silent errors in {framework}: the first bad commit and the component it breaks.

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
    lines = first_bad_lines(repository, bisection)
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
        lines.append(target_line(diagnosis))
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
            reproduce=reproduce_command(params, bisection.good.sha, bisection.bad.sha),
            links=links,
        ).rstrip()
        + "\n"
    )
