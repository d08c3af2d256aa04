"""Commit ranges: the first-parent chain between a good and a bad commit, with each commit's PR."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from ekka.errors import (
    CommitRangeError,
    DirtyRepositoryError,
    NotARepositoryError,
    UnknownRefError,
)

PrLookup = Callable[[str], "int | None"]

SQUASH_PR = re.compile(r"\(#(\d+)\)\s*$")
MERGE_PR = re.compile(r"^Merge pull request #(\d+) from ")


@dataclass(frozen=True)
class CommitInfo:
    """One commit: what a probe needs (sha) and what a report shows (summary, author, PR)."""

    sha: str
    summary: str
    message: str
    author: str
    date: str  # committer date, ISO 8601
    pr: int | None = None

    @property
    def short(self) -> str:
        return self.sha[:10]

    def to_json(self) -> dict[str, Any]:
        return {
            "sha": self.sha, "summary": self.summary, "message": self.message,
            "author": self.author, "date": self.date, "pr": self.pr,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitInfo:
        return cls(
            sha=data["sha"], summary=data["summary"], message=data["message"],
            author=data["author"], date=data["date"], pr=data.get("pr"),
        )  # fmt: skip


def parse_pr_number(message: str) -> int | None:
    """The PR number in a commit message: squash style `Title (#1234)` or `Merge pull request #1234 from ...`."""
    summary = message.strip().split("\n", 1)[0].strip() if message.strip() else ""
    for pattern in (MERGE_PR, SQUASH_PR):
        match = pattern.search(summary)
        if match:
            return int(match.group(1))
    return None


class CommitRange(Sequence[CommitInfo]):
    """The commits after `good` up to and including `bad`, oldest first.

    A sequence: `len`, indexing, slicing (a slice is a CommitRange with the same endpoints) and
    `remove(sha)`, which takes a commit out (a skipped one). `good` and `bad` are the endpoints
    the range was made from; `bad` is the last commit unless it was removed.
    """

    def __init__(self, good: CommitInfo, bad: CommitInfo, commits: Iterable[CommitInfo]) -> None:
        self.good = good
        self.bad = bad
        self._commits = list(commits)

    def __len__(self) -> int:
        return len(self._commits)

    @overload
    def __getitem__(self, index: int) -> CommitInfo: ...

    @overload
    def __getitem__(self, index: slice) -> CommitRange: ...

    def __getitem__(self, index: int | slice) -> CommitInfo | CommitRange:
        if isinstance(index, slice):
            return CommitRange(self.good, self.bad, self._commits[index])
        return self._commits[index]

    def __iter__(self) -> Iterator[CommitInfo]:
        return iter(self._commits)

    def __contains__(self, item: object) -> bool:
        sha = item.sha if isinstance(item, CommitInfo) else item
        return any(c.sha == sha for c in self._commits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommitRange):
            return NotImplemented
        return (self.good, self.bad, self._commits) == (other.good, other.bad, other._commits)

    __hash__ = None  # type: ignore[assignment]  # mutable (remove)

    def __repr__(self) -> str:
        return f"CommitRange(good={self.good.short}, bad={self.bad.short}, {len(self)} commits)"

    @property
    def shas(self) -> list[str]:
        return [c.sha for c in self._commits]

    def position(self, sha: str) -> int:
        """The index of the commit with this sha; ValueError when it is not in the range."""
        for i, commit in enumerate(self._commits):
            if commit.sha == sha:
                return i
        raise ValueError(f"commit {sha[:10]} is not in {self!r}")

    def remove(self, sha: str) -> CommitInfo:
        """Take the commit with this sha out of the range (a skip) and return it."""
        return self._commits.pop(self.position(sha))

    def copy(self) -> CommitRange:
        return CommitRange(self.good, self.bad, self._commits)

    def to_json(self) -> dict[str, Any]:
        return {
            "good": self.good.to_json(),
            "bad": self.bad.to_json(),
            "commits": [c.to_json() for c in self._commits],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitRange:
        return cls(
            CommitInfo.from_json(data["good"]),
            CommitInfo.from_json(data["bad"]),
            [CommitInfo.from_json(c) for c in data["commits"]],
        )


def commit_info(commit: Any, pr_lookup: PrLookup | None = None) -> CommitInfo:
    """A CommitInfo from a GitPython commit; the PR from `pr_lookup(sha)`, else from the message."""
    message = (
        commit.message
        if isinstance(commit.message, str)
        else commit.message.decode("utf-8", "replace")
    )
    pr = pr_lookup(commit.hexsha) if pr_lookup is not None else None
    if pr is None:
        pr = parse_pr_number(message)
    return CommitInfo(
        sha=commit.hexsha,
        summary=message.strip().split("\n", 1)[0] if message.strip() else "",
        message=message,
        author=f"{commit.author.name} <{commit.author.email}>",
        date=commit.committed_datetime.isoformat(),
        pr=pr,
    )


def open_repo(repo_path: str | Path) -> Any:
    """The GitPython Repo at `repo_path` (the top folder of a work tree), or NotARepositoryError."""
    import git

    path = Path(repo_path).expanduser()
    if not path.is_dir():
        raise NotARepositoryError(
            f"{path} is not a folder; --repo must be a git repository's top folder."
        )
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise NotARepositoryError(
            f"{path} is not a git repository; pass the top folder of a clone (where `git status` works)."
        ) from None
    if repo.bare or repo.working_tree_dir is None:
        raise NotARepositoryError(f"{path} is a bare repository; pass a clone with a work tree.")
    if Path(repo.working_tree_dir).resolve() != path.resolve():
        raise NotARepositoryError(
            f"{path} is inside the git repository {repo.working_tree_dir}; pass that top folder."
        )
    return repo


def resolve_ref(repo: Any, ref: str, role: str) -> Any:
    """The commit a ref names, or UnknownRefError naming the ref and its role (good or bad)."""
    import git

    if not ref or ref.startswith("-") or any(ch.isspace() for ch in ref):
        raise UnknownRefError(f"{role} ref {ref!r} is not a valid git ref.")
    try:
        sha = repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
    except git.GitCommandError:
        raise UnknownRefError(
            f"{role} ref {ref!r} names no commit in {repo.working_tree_dir}; "
            "check the spelling, or `git fetch` the branch or tag first."
        ) from None
    return repo.commit(sha.strip())


def commit_range(
    repo_path: str | Path,
    good: str,
    bad: str,
    *,
    pr_lookup: PrLookup | None = None,
    require_clean: bool = True,
) -> CommitRange:
    """The first-parent chain of `bad` back to (excluding) `good`, oldest first.

    Each commit on the main branch is one merged pull request; commits inside merged branches
    are not part of the range. Raises a UsageError subclass (with what to do) when the path is
    not a repository, a ref is unknown, good is not on bad's first-parent chain, the range is
    empty, or (with `require_clean`) tracked files have uncommitted changes.
    """
    repo = open_repo(repo_path)
    if require_clean and repo.is_dirty(index=True, working_tree=True, untracked_files=False):
        raise DirtyRepositoryError(
            f"{repo.working_tree_dir} has uncommitted changes to tracked files; "
            "commit or stash them (`git stash`) first."
        )
    good_commit = resolve_ref(repo, good, "good")
    bad_commit = resolve_ref(repo, bad, "bad")
    if good_commit.hexsha == bad_commit.hexsha:
        raise CommitRangeError(
            f"good {good!r} and bad {bad!r} are the same commit {good_commit.hexsha[:10]}; "
            "the range is empty. Pass an older good commit."
        )
    if not repo.is_ancestor(good_commit, bad_commit):
        hint = (
            "they are swapped: pass the older commit as --good"
            if repo.is_ancestor(bad_commit, good_commit)
            else "pass a good commit that bad's history contains"
        )
        raise CommitRangeError(
            f"good {good!r} ({good_commit.hexsha[:10]}) is not an ancestor of bad {bad!r} "
            f"({bad_commit.hexsha[:10]}); {hint}."
        )
    chain = list(repo.iter_commits(f"{good_commit.hexsha}..{bad_commit.hexsha}", first_parent=True))
    chain.reverse()
    oldest = chain[0]
    if not oldest.parents or oldest.parents[0].hexsha != good_commit.hexsha:
        merged_by = next(c for c in chain if repo.is_ancestor(good_commit, c))
        raise CommitRangeError(
            f"good {good!r} ({good_commit.hexsha[:10]}) is not on bad's first-parent chain: it came "
            f"in through the merge {merged_by.hexsha[:10]} ({merged_by.summary}); pass a main-line "
            "commit as --good."
        )
    return CommitRange(
        commit_info(good_commit, pr_lookup),
        commit_info(bad_commit, pr_lookup),
        [commit_info(c, pr_lookup) for c in chain],
    )
