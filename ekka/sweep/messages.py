"""The nightly sweep's reports (`ekka sweep --config`, `ekka.sweep.nightly`): the tracking
issue of a regression, the comment on its pull request, the closing comment. Each carries a
hidden marker `<!-- ekka-regression:SWEEP:ID [pr|fixed] -->`, so a later run edits it."""

from __future__ import annotations

from ekka.report import Diagnosis
from ekka.report.comment import first_bad_lines, suspects_table, target_line
from ekka.request import JobParams, reproduce_command

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
:wave: Ekka's nightly sweep `{sweep}` found that `{model}` ({dtype}) gives wrong outputs in {framework} on `{branch}` since this pull request: its merge commit `{short}` is the first bad commit.

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
    lines = first_bad_lines(repository, bisection)
    lines.append(
        f"- last good sweep at `{bisection.good.short}`, bad at `{bisection.bad.short}`: "
        f"{bisection.probes} probes, {bisection.cached} verdicts from the cache"
    )
    lines.append(
        f"- model `{params.model_name}`, {diagnosis.dtype}, {len(diagnosis.prompt_ids)} "
        f"prompt tokens, {diagnosis.max_tokens} generated"
    )
    lines.append(target_line(diagnosis))
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
        reproduce=reproduce_command(params, bisection.good.sha, bisection.bad.sha),
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
