"""A throw-away git worktree per commit, always removed afterwards."""

from __future__ import annotations

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
def worktree(
    repo_path: str | Path, sha: str, *, parent: str | Path | None = None
) -> Iterator[Path]:
    """Check `sha` out (detached) in a fresh folder under `parent` (the system's temp folder by
    default) and yield its path; the worktree is removed afterwards, whatever happens in the body
    (an exception, KeyboardInterrupt), and pruned when removing it fails.

    Adding and removing take one lock: `git worktree prune` in one thread would otherwise delete
    the half-made entry of a worktree another thread is adding.
    """
    repo = Path(repo_path).resolve()
    path = Path(tempfile.mkdtemp(prefix=f"ekka-{sha[:10]}-", dir=parent))
    try:
        with _GIT_LOCK:
            added = _git(repo, "worktree", "add", "--detach", str(path), sha)
        if added.returncode != 0:
            raise WorktreeError(
                f"git could not make a worktree of {sha[:10]} in {repo}: {added.stderr.strip()}"
            )
        yield path
    finally:
        with _GIT_LOCK:
            removed = _git(repo, "worktree", "remove", "--force", "--force", str(path))
            shutil.rmtree(path, ignore_errors=True)
            if removed.returncode != 0:
                _git(repo, "worktree", "prune")
