"""A local Ray cluster for the tests marked ray: started once for this folder's tests, with more
logical CPUs than the machine's 2 cores (the probes here mostly sleep or wait), a small object
store and no dashboard; shut down after them. `ray` is a test dependency (`make venv` installs
the extra): without it the tests fail, never skip."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ekka.repo import git

LOGICAL_CPUS = 8


@pytest.fixture(scope="package")
def cluster() -> Iterator[str]:
    """The local cluster's address (its GCS), as `--ray-address` takes it."""
    import ray

    ray.init(
        num_cpus=LOGICAL_CPUS,
        object_store_memory=100 * 1024**2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        namespace="ekka",
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def make_history(repo: Path, commits: int, first_bad: int) -> list[str]:
    """A real repository: a release commit, then `commits` commits; from the `first_bad`-th
    on (1-based) the file `state` says bad. Returns the shas, release first."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    shas = []
    for i in range(commits + 1):
        (repo / "state").write_text("bad\n" if i >= first_bad else "good\n")
        (repo / "counter").write_text(f"{i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"[Misc] change {i} (#{100 + i})")
        shas.append(git(repo, "rev-parse", "HEAD"))
    return shas


def worktrees(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()
