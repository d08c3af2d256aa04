"""The one place that composes a diagnosis's configurations from a request and an executor
spec: the localize mode's `DiagnoseConfig` and the full mode's `FullConfig` (whose oracle's
configuration is `ekka.bisect.oracle.oracle_config`). The CLI, the bot's jobs and the nightly
sweep all come here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ekka.containers.spec import ExecutorSpec

if TYPE_CHECKING:
    from ekka.full import FullConfig
    from ekka.request import Resolved
    from ekka.tracer.diagnose import DiagnoseConfig

DEFAULT_GITHUB_API = "https://api.github.com"


def diagnose_config(
    resolved: Resolved,
    *,
    workdir: str | Path,
    threshold: float | None = None,
    target_pythonpath: Sequence[str] = (),
) -> DiagnoseConfig:
    """The localize mode's configuration: the target as installed (or from
    `target_pythonpath`) against the reference."""
    from ekka.tracer.diagnose import DiagnoseConfig

    request = resolved.request
    return DiagnoseConfig(
        model=request.model,
        prompt_ids=request.prompt_ids,
        workdir=str(workdir),
        dtype=request.dtype,
        max_tokens=request.max_tokens,
        threshold=threshold,
        prompt_text=request.prompt_text,
        target_pythonpath=tuple(target_pythonpath),
        engine=dict(request.engine),
        scenario=resolved.scenario,
        framework=request.framework,
    )


def full_config(
    resolved: Resolved,
    executor: ExecutorSpec,
    *,
    repo: str | Path,
    good: str,
    bad: str,
    workdir: str | Path,
    threshold: float | None = None,
    repeats: int = 1,
    db_url: str | None = None,
    github_repo: str | None = None,
    github_api: str | None = None,
    github_token: str | None = None,
) -> FullConfig:
    """The full mode's configuration: the request bisected over `repo` between `good` and
    `bad`, each commit probed by the executor the spec names; the overlays stand on the
    installed release of the request's framework."""
    from ekka.frameworks import installed_package_dir
    from ekka.full import FullConfig

    request = resolved.request
    if executor.uses_docker:
        from ekka.containers.base import runtime_for

        runtime_for(request.framework)  # a framework without a base image: a one-line error
    return FullConfig(
        repo=str(repo),
        good=good,
        bad=bad,
        model=request.model,
        prompt_ids=request.prompt_ids,
        workdir=str(workdir),
        package_dir=str(installed_package_dir(request.framework)),
        dtype=request.dtype,
        max_tokens=request.max_tokens,
        engine=dict(request.engine),
        threshold=threshold,
        workers=executor.workers,
        repeats=repeats,
        db_url=db_url,
        timeout=executor.timeout,
        prompt_text=request.prompt_text,
        github_repo=github_repo,
        github_api=github_api or DEFAULT_GITHUB_API,
        github_token=github_token,
        scenario=resolved.scenario,
        framework=request.framework,
        **executor.full_options(request.framework),
    )
