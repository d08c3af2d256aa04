"""Helpers for the bisection tests: real git repositories made with the git CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ekka.bisect.worktree import clean_git_env


def git_env() -> dict[str, str]:
    """A fixed identity and no user or system configuration, so every run makes the same repos."""
    env = clean_git_env()
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Ekka Test",
        GIT_AUTHOR_EMAIL="test@ekka.invalid",
        GIT_COMMITTER_NAME="Ekka Test",
        GIT_COMMITTER_EMAIL="test@ekka.invalid",
        GIT_AUTHOR_DATE="2025-01-01T00:00:00+00:00",
        GIT_COMMITTER_DATE="2025-01-01T00:00:00+00:00",
    )
    return env


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=git_env()
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    return path


def commit_file(
    repo: Path, name: str, content: str, message: str, *, executable: bool = False
) -> str:
    """Write a file, commit it, and return the new commit's sha."""
    file = repo / name
    file.write_text(content)
    if executable:
        file.chmod(0o755)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def linear_repo(path: Path, count: int) -> list[str]:
    """Commits c0..c{count}: commit i sets value.txt to i, with the squash message `... (#100+i)`."""
    init_repo(path)
    return [
        commit_file(path, "value.txt", f"{i}\n", f"Set value to {i} (#{100 + i})")
        for i in range(count + 1)
    ]


def worktrees(repo: Path) -> list[str]:
    """The paths `git worktree list` shows (the main work tree first)."""
    lines = git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.split(" ", 1)[1] for line in lines if line.startswith("worktree ")]


def assert_no_stray_worktrees(repo: Path) -> None:
    assert worktrees(repo) == [str(repo.resolve())]
