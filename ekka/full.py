"""The full diagnosis: reproduce at bad and localize, bisect, attribute.

It composes the parts: the tracer (localization and the bisection's oracle), the bisection
(the range, the search, the verdict cache, attribution) and an executor from ekka.containers
(the local one, the docker one: `executor="docker"`, or the ray one: `executor="ray"`, each
probe a task on a cluster's node), which the bisection receives through
`ekka.bisect.executor.Executor` and cannot tell apart.

1. The range (first-parent chain good..bad) is checked first: refs, ancestry, a clean tree.
2. Localize at `bad`: the localize-mode diagnosis with the target run from a worktree of `bad`
   (its Python sources overlaid on the installed release's compiled extensions).
3. Bisect with the tracer's oracle (reference computed once, cached verdicts reused), the
   executor probing each commit (local: a worktree; docker: the commit's image; ray: a task on a
   cluster's node, which runs one of those two there). The localization at `bad` runs here,
   from a worktree, in every case.
4. Attribute: the first bad commit's diff joined with the suspects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ekka.bisect.attribution import attribute
from ekka.bisect.cache import VerdictCache, default_url
from ekka.bisect.executor import Executor
from ekka.bisect.history import commit_range
from ekka.bisect.oracle import TracerOracle, oracle_config
from ekka.bisect.search import Bisector, BisectResult, NullObserver, Observer
from ekka.bisect.worktree import worktree
from ekka.containers.local import LocalExecutor, overlay_compiled
from ekka.containers.spec import CLI_KINDS
from ekka.errors import UsageError
from ekka.reduce import diagnose_and_reduce
from ekka.report import BisectionSummary, Diagnosis, RootCause
from ekka.tracer.diagnose import DiagnoseConfig
from ekka.tracer.scenario import Scenario
from ekka.tracer.trace import TraceReader

if TYPE_CHECKING:
    from ekka.containers.docker import ContainerLimits
    from ekka.containers.images import ImageSettings
    from ekka.containers.ray import RaySettings


@dataclass(frozen=True)
class FullConfig:
    repo: str
    good: str
    bad: str
    model: str
    prompt_ids: tuple[int, ...]
    workdir: str
    package_dir: str
    dtype: str = "float32"
    max_tokens: int = 4
    engine: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None  # None: the dtype's calibrated one (localize.threshold_for)
    workers: int = 1
    repeats: int = 1
    db_url: str | None = None
    timeout: float = 600
    prompt_text: str | None = None
    github_repo: str | None = None  # OWNER/NAME: PRs from GitHub's API, else from commit messages
    github_api: str = "https://api.github.com"
    github_token: str | None = None
    # the executor's fields: `ekka.containers.spec.ExecutorSpec.full_options()` fills them
    executor: str = "local"  # "local", "docker" or "ray"
    images: ImageSettings | None = None  # docker: how per-commit images are obtained
    limits: ContainerLimits | None = None  # docker: GPUs and limits (timeout: `timeout`)
    ray: RaySettings | None = None  # ray: the cluster, the tasks' resources, the node's executor
    # the requests around the traced one: localization and every probe run them
    scenario: Scenario = field(default_factory=Scenario)
    framework: str = "vllm"  # the target


EXECUTORS = CLI_KINDS  # "local", "docker", "ray"
# ray: a task's time limit past the probe's own `timeout` when none is set (a worktree or an
# image to make on the node first; the node's executor ends a slow probe itself before that).
TASK_SLACK_SECONDS = 600.0


def run_full_diagnosis(
    config: FullConfig,
    *,
    progress: Callable[[str], None] | None = None,
    observer: Observer | None = None,
    build_output: Callable[[str], None] | None = None,
) -> tuple[Diagnosis, BisectResult]:
    """Returns the diagnosis (with root cause and bisection filled in) and the BisectResult.

    `build_output` receives the docker executor's image builds line by line (default:
    `progress`, which a terminal shows as it comes; the bot passes a throttled one)."""
    say = progress or (lambda _m: None)
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    package_dir = Path(config.package_dir)

    if config.executor not in EXECUTORS:
        raise UsageError(
            f"unknown executor {config.executor!r}; use one of {', '.join(EXECUTORS)}."
        )
    client = None
    if config.executor == "docker":  # before the long localization: no engine, no job
        from ekka.containers.engine import connect

        client = connect()
    if config.executor == "ray":
        from ekka.containers.ray import cluster_summary, fits_some_node
        from ekka.containers.ray import connect as ray_connect

        if config.ray is None:
            raise UsageError("the ray executor needs the cluster's settings (--ray-address).")
        joined = ray_connect(config.ray.address)
        say(f"ray: the cluster at {joined}: {cluster_summary()}")
        if not fits_some_node(config.ray.resources):
            say(
                f"ray: no node has {config.ray.resources.describe()} now; probes wait for one "
                f"(an autoscaler may add it) up to {config.ray.queue_timeout:g} s, then skip"
            )

    say("checking the commit range")
    lookup = None
    if config.github_repo:
        from ekka.forge.pulls import GitHubPrLookup

        lookup = GitHubPrLookup(
            config.github_repo, token=config.github_token, api=config.github_api
        )
    commits = commit_range(config.repo, config.good, config.bad, pr_lookup=lookup)

    t0 = time.perf_counter()
    say(f"localizing at bad ({commits.bad.short})")
    with worktree(config.repo, commits.bad.sha) as tree:
        overlay_compiled(tree, package_dir)
        diagnosis = diagnose_and_reduce(
            DiagnoseConfig(
                model=config.model,
                prompt_ids=config.prompt_ids,
                workdir=str(work / "localize"),
                dtype=config.dtype,
                max_tokens=config.max_tokens,
                threshold=config.threshold,
                engine=config.engine,
                prompt_text=config.prompt_text,
                target_pythonpath=(str(tree),),
                timeout=config.timeout,
                scenario=config.scenario,
                framework=config.framework,
            ),
            progress=say,
        )
    localize_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("bisecting: reference logits (once per job)")
    oracle = TracerOracle(oracle_config(config), work / "bisect")
    oracle.prepare()
    executor = make_executor(config, oracle, commits.good.sha, say, client, build_output)
    cache = VerdictCache(config.db_url or default_url())
    try:
        result = Bisector(
            executor,
            workers=config.workers,
            repeats=config.repeats,
            observer=observer or NullObserver(),
            cache=cache,
            repo_key=str(Path(config.repo).resolve()),
            # a skip depends on the executor (the local one skips compiled changes that the
            # docker one builds) and a verdict on the hardware (a cluster's GPUs): each
            # executor's verdicts apart, the local one's key unchanged
            config_hash=oracle.config.digest() + executor_key(config),
        ).run(commits)
    finally:
        cache.close()
    bisect_seconds = time.perf_counter() - t0

    root_cause = None
    if result.first_bad is not None:
        target = TraceReader(work / "localize" / "target")
        attribution = attribute(
            config.repo,
            result.first_bad.sha,
            result.first_bad.pr,
            diagnosis.localization.suspects,
            target,
        )
        root_cause = RootCause.from_json(attribution.to_json())
    bisection = BisectionSummary.from_json(result.to_json())
    diagnosis = replace(
        diagnosis,
        root_cause=root_cause,
        bisection=bisection,
        notes=diagnosis.notes + agreement_notes(diagnosis, bisection),
        timings={
            **diagnosis.timings,
            "localize_at_bad": localize_seconds,
            "bisect": bisect_seconds,
        },
    )
    return diagnosis, result


def make_executor(
    config: FullConfig,
    oracle: TracerOracle,
    release: str,
    say: Callable[[str], None],
    client: Any = None,
    build_output: Callable[[str], None] | None = None,
) -> Executor:
    """The executor `config.executor` names, probing with `oracle` (prepared): "docker" on
    `client` (connected by the caller, before any long work), "ray", else the local one.
    `release`: the commit whose compiled extensions the overlays stand on (the range's good
    end). The full diagnosis and the nightly sweep's head probe both take theirs here."""
    if config.executor == "docker":
        from ekka.containers.engine import connect

        return docker_executor(
            client if client is not None else connect(), config, oracle, release,
            build_output or say,
        )  # fmt: skip
    if config.executor == "ray":
        return ray_executor(config, oracle, release, say)
    return LocalExecutor(
        config.repo,
        oracle,
        package_dir=Path(config.package_dir),
        base=release,
        workdir=Path(config.workdir) / "bisect",
        timeout=config.timeout,
    )


def docker_executor(
    client: Any, config: FullConfig, oracle: TracerOracle, release: str, say: Callable[[str], None]
) -> Executor:
    """The docker executor for `config` (`ekka.containers.docker.for_repository`)."""
    from ekka.containers.docker import ContainerLimits, for_repository

    limits = replace(config.limits or ContainerLimits(), timeout=config.timeout)
    return for_repository(
        client,
        config.repo,
        oracle,
        release=release,
        workdir=Path(config.workdir) / "bisect",
        images=config.images,
        limits=limits,
        progress=say,
    )


def ray_executor(
    config: FullConfig, oracle: TracerOracle, release: str, say: Callable[[str], None]
) -> Executor:
    """The ray executor for `config`: each probe a task that runs the node's executor (local
    or docker, as `config.ray.node_executor` says) against this job's reference."""
    from ekka.containers.ray import RayExecutor, TracerProbe

    assert config.ray is not None
    settings = config.ray
    if settings.timeout is None:
        settings = replace(settings, timeout=config.timeout + TASK_SLACK_SECONDS)
    probe = TracerProbe(
        repo=str(Path(config.repo).resolve()),
        base=release,
        config=oracle.config,
        reference=oracle.prepared,
        kind=settings.node_executor,
        timeout=config.timeout,
        framework=Path(config.package_dir).name,
        images=config.images,
        limits=config.limits,
    )
    return RayExecutor(
        probe, settings, job=Path(config.workdir).resolve().parent.name, progress=say
    )


def executor_key(config: FullConfig) -> str:
    """What the verdict cache's key adds for the executor: "" (local), "+docker", "+ray" (its
    nodes' local executor), "+ray-docker"."""
    if config.executor == "ray" and config.ray is not None:
        return "+ray" + (
            "" if config.ray.node_executor == "local" else f"-{config.ray.node_executor}"
        )
    return "" if config.executor == "local" else f"+{config.executor}"


def agreement_notes(diagnosis: Diagnosis, bisection: BisectionSummary) -> tuple[str, ...]:
    """A note where the localization at the bad commit and the oracle's verdict on that
    commit disagree (one found a divergence there, the other did not)."""
    bad = bisection.bad.sha
    judged = [s for s in bisection.steps if s.commit == bad and s.verdict in ("good", "bad")]
    if not judged:
        return ()
    oracle_bad = judged[-1].verdict == "bad"
    localized = diagnosis.localization.diverged
    if oracle_bad == localized:
        return ()
    if oracle_bad:
        return (
            f"the bisection's oracle judged the bad commit {bad[:10]} bad ({judged[-1].reason}), "
            "but no traced component crosses the threshold there: the cause is outside the "
            "traced modules, or hidden below the threshold in them; see the closest components",
        )
    return (
        f"the localization at the bad commit {bad[:10]} finds a diverging component, but the "
        f"bisection's oracle judged that commit good ({judged[-1].reason}): the divergence "
        "does not reach the output's logits and tokens in this run",
    )
