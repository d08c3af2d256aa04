"""The nightly regression sweep (`ekka sweep --config ekka.toml [--sweep NAME]`).

For each (model, dtype) of a `[[sweeps]]` entry of the bot's configuration:

1. Probe the branch head (after fetching the clone's remotes) with the bisection's oracle
   (`ekka.bisect.oracle.TracerOracle`, the configured executor), the verdict stored in the
   verdict cache (the configured database) and the result in `sweep_results`
   (`ekka.storage.sweeps`, which the bot's server shows).
2. Bad now, good at an earlier sweep, and no open regression: the full diagnosis
   (`ekka.full.run_full_diagnosis`: bisect between the last good sweep's commit and the head,
   the cached verdicts reused, diagnose, attribute), then one tracking issue in the repository
   and one comment on the first bad commit's pull request.
3. Bad again at a later head: the open regression's issue is updated (once per head). Good
   again: the issue gets a comment and is closed.

Reports go through the project's GitHub client (`ekka.forge`, built from the configuration's
settings) when the configuration has a GitHub token, else into files under the sweep's folder
(`LocalReporter`). The comments' templates are `ekka.sweep.messages`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ekka.bisect.cache import VerdictCache
from ekka.bisect.history import commit_info, open_repo, resolve_ref
from ekka.bisect.oracle import TracerOracle, oracle_config
from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.bot.config import BotConfig, ConfigError, Model, ScenarioFile, Sweep
from ekka.errors import EkkaError
from ekka.forge.comments import issue_url
from ekka.frameworks import framework
from ekka.repo import fetch
from ekka.report import Diagnosis
from ekka.request import DEFAULT_FRAMEWORK, JobParams, Resolved
from ekka.storage.sweeps import Regression, SweepResult, SweepStore
from ekka.sweep import messages
from ekka.tracer.scenario import Scenario

if TYPE_CHECKING:
    from ekka.full import FullConfig

Say = Callable[[str], None]


@dataclass(frozen=True)
class Subject:
    """What one sweep pair runs besides its dtype: a configured model's prompt alone, or the
    traced request of a configured scenario (`[[sweeps]] scenarios`) on that model. `name` keys
    its results and regressions ("tiny-llama", "tiny-llama+prefix-hit")."""

    model: Model
    resolved: Resolved
    scenario_name: str | None = None

    @property
    def name(self) -> str:
        if self.scenario_name is None:
            return self.model.name
        return f"{self.model.name}+{self.scenario_name}"

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.resolved.request.prompt_ids

    @property
    def max_tokens(self) -> int:
        return self.resolved.request.max_tokens

    @property
    def engine(self) -> Mapping[str, Any]:
        return self.resolved.request.engine

    @property
    def scenario(self) -> Scenario:
        return self.resolved.scenario

    def at(self, dtype: str) -> Resolved:
        """The subject's request in `dtype`."""
        return replace(self.resolved, request=replace(self.resolved.request, dtype=dtype))


def subject(
    model: Model, scenario: ScenarioFile | None = None, framework: str = DEFAULT_FRAMEWORK
) -> Subject:
    """The model alone, or in the scenario of that file (its traced request where the file
    gives one, else the model's prompt; its requests before and beside it; its engine), served
    by `framework` (the repository's)."""
    from ekka.request import resolve_request

    fallback = None if model.prompt or model.prompt_ids else "Hello"
    request = model.request(framework=framework, prompt=fallback, scenario=scenario)
    return Subject(model, resolve_request(request), None if scenario is None else scenario.name)


@dataclass(frozen=True)
class NightlyOutcome:
    """One run of a nightly sweep: its results and what it reported."""

    run: int
    sweep: str
    repository: str
    branch: str
    head: str
    results: tuple[SweepResult, ...]
    actions: tuple[str, ...]
    folder: str

    @property
    def regressed(self) -> bool:
        return any(r.verdict == "bad" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "sweep": self.sweep,
            "repository": self.repository,
            "branch": self.branch,
            "head": self.head,
            "results": [r.to_json() for r in self.results],
            "actions": list(self.actions),
            "folder": self.folder,
        }


class Reporter(Protocol):
    """Where a regression is reported: GitHub, or files when there are no GitHub settings."""

    def open_issue(self, regression: Regression, title: str, body: str) -> int | None: ...

    def update_issue(self, regression: Regression, body: str) -> int | None: ...

    def comment_pull(self, regression: Regression, pr: int, body: str) -> int | None: ...

    def close_issue(self, regression: Regression, body: str) -> None: ...

    def where(self, regression: Regression) -> str: ...


class GitHubReporter:
    """Issues and comments through the bot's client; comments found again by their markers."""

    def __init__(self, github: Any, repository: str) -> None:
        self.github = github
        self.repository = repository

    def open_issue(self, regression: Regression, title: str, body: str) -> int | None:
        number: int = self.github.create_issue(self.repository, title, body)
        return number

    def update_issue(self, regression: Regression, body: str) -> int | None:
        if regression.issue is None:  # an earlier run stopped before opening it
            title = f"Ekka sweep {regression.sweep}: {regression.model} ({regression.dtype})"
            return self.open_issue(regression, title, body)
        self.github.edit_issue(self.repository, regression.issue, body=body)
        return regression.issue

    def comment_pull(self, regression: Regression, pr: int, body: str) -> int | None:
        from ekka.forge.comments import upsert_comment

        marker = messages.regression_marker(regression.sweep, regression.id, "pr")
        return upsert_comment(self.github, self.repository, pr, marker, body)

    def close_issue(self, regression: Regression, body: str) -> None:
        from ekka.forge.comments import upsert_comment

        assert regression.issue is not None
        marker = messages.regression_marker(regression.sweep, regression.id, "fixed")
        upsert_comment(self.github, self.repository, regression.issue, marker, body)
        self.github.edit_issue(self.repository, regression.issue, state="closed")

    def where(self, regression: Regression) -> str:
        return issue_url(self.repository, regression.issue or 0)


class LocalReporter:
    """Without GitHub settings: each report a Markdown file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write(self, name: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_text(text)

    def open_issue(self, regression: Regression, title: str, body: str) -> int | None:
        self._write(f"regression-{regression.id}-issue.md", f"# {title}\n\n{body}")
        return None

    def update_issue(self, regression: Regression, body: str) -> int | None:
        self._write(f"regression-{regression.id}-issue.md", body)
        return None

    def comment_pull(self, regression: Regression, pr: int, body: str) -> int | None:
        self._write(f"regression-{regression.id}-pr-{pr}.md", body)
        return None

    def close_issue(self, regression: Regression, body: str) -> None:
        self._write(f"regression-{regression.id}-fixed.md", body)

    def where(self, regression: Regression) -> str:
        return str(self.folder / f"regression-{regression.id}-issue.md")


@dataclass
class _Run:
    """What one run shares across its (model, dtype) pairs."""

    config: BotConfig
    sweep: Sweep
    store: SweepStore
    reporter: Reporter
    repo: str
    head: str
    run: int
    folder: Path
    say: Say
    github_token: str | None
    actions: list[str] = field(default_factory=list)


def run_nightly(
    config: BotConfig,
    sweep_name: str | None = None,
    *,
    say: Say | None = None,
    github: Any = None,
) -> NightlyOutcome:
    """One run of the sweep `sweep_name` (None: the configuration's only sweep).

    `github`: a GitHubClient to report with (default: one from the configuration's settings
    when it has a token; none: the reports are written locally)."""
    say = say or (lambda _m: None)
    sweep = _choose(config, sweep_name)
    repository = config.repository(sweep.repository)
    assert repository is not None and repository.path is not None  # the configuration checks it
    repo = repository.path
    say(f"fetching {repo}")
    fetch(repo)
    head = branch_head(repo, sweep.branch)
    store = SweepStore(config.database_url)
    own_client = None
    try:
        run = store.start_sweep_run(sweep.name, repository.name, sweep.branch, head)
        folder = Path(config.workdir).resolve() / "sweeps" / sweep.name / f"run-{run}"
        folder.mkdir(parents=True, exist_ok=True)
        if github is None and config.secrets.github_token:
            from ekka.forge.client import connect

            github = own_client = connect(config.github)
        if github is None:
            why = (
                "a GitHub App's credentials name no installation here: set EKKA_GITHUB_TOKEN"
                if config.secrets.app_id
                else "no EKKA_GITHUB_TOKEN"
            )
            say(f"{why}; regressions are reported in files under {folder / 'reports'}")
        reporter: Reporter = (
            GitHubReporter(github, repository.name)
            if github is not None
            else LocalReporter(folder / "reports")
        )
        state = _Run(
            config,
            sweep,
            store,
            reporter,
            repo,
            head,
            run,
            folder,
            say,
            github.token if github is not None else None,
        )
        say(f"sweep {sweep.name} run {run}: {sweep.branch} at {head[:10]}")
        results: list[SweepResult] = []
        try:
            for name in sweep.models:
                model = config.model(name)
                assert model is not None  # the configuration checks it
                files = [config.scenario(n) for n in sweep.scenarios]
                for scenario in (None, *files):
                    what = subject(model, scenario, repository.framework)
                    for dtype in sweep.dtypes:
                        results.append(_sweep_pair(state, what, dtype))
        except BaseException as exc:
            store.finish_sweep_run(run, "failed", error=str(exc)[:2000], report_dir=str(folder))
            raise
        outcome = NightlyOutcome(
            run,
            sweep.name,
            repository.name,
            sweep.branch,
            head,
            tuple(results),
            tuple(state.actions),
            str(folder),
        )
        (folder / "sweep.json").write_text(json.dumps(outcome.to_json(), indent=1) + "\n")
        store.finish_sweep_run(run, "done", report_dir=str(folder))
        return outcome
    finally:
        store.close()
        if own_client is not None:
            own_client.close()


def _choose(config: BotConfig, name: str | None) -> Sweep:
    if name is None:
        if len(config.sweeps) == 1:
            return config.sweeps[0]
        if not config.sweeps:
            raise ConfigError("the configuration has no [[sweeps]] entry; add one (see docs).")
        names = ", ".join(s.name for s in config.sweeps)
        raise ConfigError(
            f"the configuration has several sweeps ({names}); choose one: --sweep NAME."
        )
    sweep = config.sweep(name)
    if sweep is None:
        names = ", ".join(s.name for s in config.sweeps) or "none"
        raise ConfigError(f"no sweep named {name!r} in the configuration (sweeps: {names}).")
    return sweep


def branch_head(repo: str, branch: str) -> str:
    """The sha of `branch`: the remote's copy after a fetch when the clone has a remote (the
    upstream moves, the clone's own branch does not), else the local branch."""
    git_repo = open_repo(repo)
    remotes = [r.name for r in git_repo.remotes]
    for ref in [f"{r}/{branch}" for r in remotes] + [branch]:
        try:
            return str(resolve_ref(git_repo, ref, "sweep branch").hexsha)
        except EkkaError:
            continue
    raise ConfigError(f"the branch {branch!r} is neither in {repo} nor in its remotes.")


def _params(state: _Run, what: Subject, dtype: str, good: str) -> JobParams:
    """The regression's parameters for its report (the bot's jobs' shape)."""
    return JobParams(
        request=what.at(dtype).request,
        good=good,
        bad=state.head,
        model_name=what.model.name,
        executor=state.config.executor,
    )


def _full_config(state: _Run, what: Subject, dtype: str, good: str, workdir: Path) -> FullConfig:
    from ekka.compose import full_config

    return full_config(
        what.at(dtype),
        state.config.executor,
        repo=state.repo,
        good=good,
        bad=state.head,
        workdir=workdir,
        db_url=state.config.database_url,
        github_repo=state.sweep.repository if state.github_token else None,
        github_api=state.config.api_url,
        github_token=state.github_token,
    )


def probe_head(state: _Run, what: Subject, dtype: str, base: str, workdir: Path) -> ProbeResult:
    """The head's verdict: from the verdict cache, else probed (and stored there) with the
    bisection's oracle and executor, under the key the bisection uses."""
    from ekka.full import executor_key, make_executor

    full = _full_config(state, what, dtype, base, workdir)
    oracle = TracerOracle(oracle_config(full), workdir / "bisect")
    key = oracle.config.digest() + executor_key(full)
    repo_key = str(Path(state.repo).resolve())
    cache = VerdictCache(state.config.database_url)
    try:
        cached = cache.get(repo_key, state.head, key)
        if cached is not None:
            return replace(cached, reason=f"{cached.reason} (cached)")
        state.say(f"{what.name} {dtype}: reference logits, then probing {state.head[:10]}")
        oracle.prepare()
        executor = make_executor(full, oracle, base, state.say)
        head = commit_info(open_repo(state.repo).commit(state.head))
        result: ProbeResult = executor.probe(head)
        if not result.transient:
            cache.put(repo_key, state.head, key, result)
        return result
    finally:
        cache.close()


def _sweep_pair(state: _Run, what: Subject, dtype: str) -> SweepResult:
    store, sweep = state.store, state.sweep
    workdir = state.folder / f"{what.name}-{dtype}"
    last_good = store.last_sweep_result(
        sweep.name, what.name, dtype, verdict="good", before=state.run
    )
    base = last_good.commit if last_good is not None else state.head
    probe = probe_head(state, what, dtype, base, workdir)
    verdict = probe.verdict.value
    state.say(f"{what.name} {dtype} at {state.head[:10]}: {verdict} ({probe.reason})")
    result = SweepResult(
        state.run, sweep.name, what.name, dtype, state.head, verdict, probe.reason, None, None
    )
    store.record_sweep_result(result)  # recorded before the long work: nothing lost
    open_regression = store.open_regression_of(sweep.name, what.name, dtype)
    if probe.verdict is Verdict.GOOD and open_regression is not None:
        _close(state, open_regression)
        result = replace(result, regression=open_regression.id)
    elif probe.verdict is Verdict.BAD and open_regression is not None:
        _seen_again(state, open_regression)
        result = replace(
            result, regression=open_regression.id, report_dir=open_regression.report_dir
        )
    elif probe.verdict is Verdict.BAD and last_good is not None and last_good.commit != state.head:
        try:
            regression = _bisect_and_report(state, what, dtype, last_good.commit, workdir)
        except EkkaError as exc:  # this pair's; the next sweep bisects again (no regression)
            state.say(f"{what.name} {dtype}: the bisection failed: {exc}")
            result = replace(result, reason=f"{probe.reason}; the bisection failed: {exc}")
        else:
            result = replace(result, regression=regression.id, report_dir=regression.report_dir)
    elif probe.verdict is Verdict.BAD:
        result = replace(result, reason=f"{probe.reason}; no earlier good sweep to bisect from")
    store.record_sweep_result(result)
    return result


def _bisect_and_report(
    state: _Run, what: Subject, dtype: str, good: str, workdir: Path
) -> Regression:
    from ekka.full import run_full_diagnosis
    from ekka.report import write_reports

    state.say(f"{what.name} {dtype}: bisecting {good[:10]}..{state.head[:10]} and diagnosing")
    diagnosis, _ = run_full_diagnosis(
        _full_config(state, what, dtype, good, workdir / "traces"), progress=state.say
    )
    report_dir = workdir / "report"
    write_reports(diagnosis, report_dir)
    assert diagnosis.bisection is not None
    first = diagnosis.bisection.first_bad
    regression = state.store.open_regression(
        sweep=state.sweep.name,
        repository=state.sweep.repository,
        model=what.name,
        dtype=dtype,
        good=good,
        head=state.head,
        first_bad=first.sha if first is not None else None,
        pr=first.pr if first is not None else None,
        summary=_statement(diagnosis),
        report_dir=str(report_dir),
    )
    params = _params(state, what, dtype, good)
    title, body = messages.regression_issue(
        sweep=state.sweep.name,
        regression=regression.id,
        repository=state.sweep.repository,
        branch=state.sweep.branch,
        params=params,
        diagnosis=diagnosis,
        run=state.run,
        head=state.head,
    )
    (report_dir / "issue.md").write_text(body)
    try:
        issue = state.reporter.open_issue(regression, title, body)
        state.store.update_regression(regression.id, issue=issue)
        regression = replace(regression, issue=issue)
        state.actions.append(f"opened {state.reporter.where(regression)}: {title}")
        if regression.pr is not None:
            _comment_pull(state, regression)
    except EkkaError as exc:  # GitHub kept failing: the regression is kept, the next run posts
        state.say(f"{what.name} {dtype}: reporting failed ({exc}); the next sweep posts it")
        state.actions.append(f"reporting regression {regression.id} failed: {exc}")
    return regression


def _comment_pull(state: _Run, regression: Regression) -> None:
    """One comment on the first bad commit's pull request (found again by its marker)."""
    assert regression.pr is not None and regression.first_bad is not None
    repository = state.config.repository(state.sweep.repository)
    assert repository is not None  # the configuration checks it
    comment = state.reporter.comment_pull(
        regression,
        regression.pr,
        messages.REGRESSION_PR.format(
            marker=messages.regression_marker(state.sweep.name, regression.id, "pr"),
            sweep=state.sweep.name,
            model=regression.model,
            dtype=regression.dtype,
            framework=framework(repository.framework).title,
            branch=state.sweep.branch,
            short=regression.first_bad[:10],
            statement=regression.summary,
            issue_ref=state.reporter.where(regression),
        ),
    )
    state.store.update_regression(regression.id, pr_comment=comment)
    state.actions.append(f"commented on PR #{regression.pr}")


def _seen_again(state: _Run, regression: Regression) -> None:
    """The regression is still there: its issue says at which head (once per head); what an
    earlier run could not post (GitHub failed) is posted now."""
    unposted = isinstance(state.reporter, GitHubReporter) and (
        regression.issue is None or (regression.pr is not None and regression.pr_comment is None)
    )
    if regression.last_head == state.head and not unposted:
        return
    body_file = Path(regression.report_dir or "") / "issue.md"
    if body_file.is_file():
        head, _, _ = body_file.read_text().rstrip().rpartition("\n\n")
        body = f"{head}\n\n{messages.regression_seen(state.head, state.run)}\n"
        body_file.write_text(body)
        issue = state.reporter.update_issue(regression, body)
        regression = replace(regression, issue=issue)
        state.store.update_regression(regression.id, issue=issue)
        state.actions.append(f"updated {state.reporter.where(regression)}")
    if unposted and regression.pr is not None and regression.pr_comment is None:
        _comment_pull(state, regression)
    state.store.update_regression(regression.id, last_head=state.head)


def _close(state: _Run, regression: Regression) -> None:
    body = messages.REGRESSION_FIXED.format(
        marker=messages.regression_marker(state.sweep.name, regression.id, "fixed"),
        sweep=state.sweep.name,
        run=state.run,
        model=regression.model,
        dtype=regression.dtype,
        short=state.head[:10],
        branch=state.sweep.branch,
    )
    state.reporter.close_issue(regression, body)
    state.store.update_regression(regression.id, state="closed", fixed_at=state.head)
    state.actions.append(f"closed {state.reporter.where(regression)} (good again)")


def _statement(diagnosis: Diagnosis) -> str:
    if diagnosis.root_cause is not None:
        return diagnosis.root_cause.statement
    return diagnosis.verdict
