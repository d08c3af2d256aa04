"""A throw-away git worktree per commit, always removed afterwards."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ekka.errors import WorktreeError

# Variables that point git at another repository or index (set inside git hooks, for one).
GIT_LOCATION_VARIABLES = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_PREFIX",
)  # fmt: skip

_GIT_LOCK = threading.Lock()  # one process's worktree changes, one at a time (see `worktree`)


def clean_git_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment (os.environ by default) without git's location variables."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in GIT_LOCATION_VARIABLES}


def _git(repo_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo_path), *args],
        capture_output=True, text=True, env=clean_git_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip


@contextmanager
def _worktree_lock(repo: Path) -> Iterator[None]:
    """The repository's worktree changes, one at a time across threads and processes (probes
    that run as Ray tasks are processes of their own on one node): a lock file per repository
    in the temp folder, held with flock, under this process's thread lock."""
    key = hashlib.sha256(str(repo).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ekka-worktrees-{key}.lock"
    with _GIT_LOCK, open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def worktree(
    repo_path: str | Path, sha: str, *, parent: str | Path | None = None
) -> Iterator[Path]:
    """Check `sha` out (detached) in a fresh folder under `parent` (the system's temp folder by
    default) and yield its path; the worktree is removed afterwards, whatever happens in the body
    (an exception, KeyboardInterrupt), and pruned when removing it fails.

    Adding and removing take one lock across threads and processes: `git worktree prune` (or a
    remove) in one would otherwise delete the half-made entry of a worktree another is adding.
    """
    repo = Path(repo_path).resolve()
    path = Path(tempfile.mkdtemp(prefix=f"ekka-{sha[:10]}-", dir=parent))
    try:
        with _worktree_lock(repo):
            added = _git(repo, "worktree", "add", "--detach", str(path), sha)
        if added.returncode != 0:
            raise WorktreeError(
                f"git could not make a worktree of {sha[:10]} in {repo}: {added.stderr.strip()}"
            )
        yield path
    finally:
        with _worktree_lock(repo):
            removed = _git(repo, "worktree", "remove", "--force", "--force", str(path))
            shutil.rmtree(path, ignore_errors=True)
            if removed.returncode != 0:
                _git(repo, "worktree", "prune")
