"""Commit ranges: the first-parent chain, PR numbers, and clear errors for bad input."""

from __future__ import annotations

import pytest

from ekka.bisect.history import CommitInfo, CommitRange, commit_range, parse_pr_number
from ekka.errors import (
    CommitRangeError,
    DirtyRepositoryError,
    NotARepositoryError,
    UnknownRefError,
    UsageError,
)
from tests.bisect import commit_file, git, init_repo, linear_repo


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    repo = tmp_path_factory.mktemp("history") / "repo"
    return repo, linear_repo(repo, 10)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """main: c0, c1, M (merges feature: f1, f2), c2 (squash style); feature forks at c0."""
    repo = init_repo(tmp_path_factory.mktemp("merged") / "repo")
    c0 = commit_file(repo, "a.txt", "0\n", "Initial commit")
    git(repo, "checkout", "-q", "-b", "feature")
    f1 = commit_file(repo, "b.txt", "1\n", "Feature part one (#3)")
    f2 = commit_file(repo, "b.txt", "2\n", "Feature part two")
    git(repo, "checkout", "-q", "main")
    c1 = commit_file(repo, "a.txt", "1\n", "A plain main-line commit")
    git(
        repo,
        "merge",
        "-q",
        "--no-ff",
        "feature",
        "-m",
        "Merge pull request #7 from someone/feature\n\nAdd the feature",
    )
    merge = git(repo, "rev-parse", "HEAD")
    c2 = commit_file(repo, "a.txt", "2\n", "[Bugfix] Fix the thing (#8)")
    return repo, {"c0": c0, "f1": f1, "f2": f2, "c1": c1, "merge": merge, "c2": c2}


def test_linear_range_is_oldest_first_without_good(linear):
    repo, shas = linear
    commits = commit_range(repo, shas[0], shas[10])
    assert len(commits) == 10
    assert commits.shas == shas[1:]
    assert commits.good.sha == shas[0] and commits.bad.sha == shas[10]
    assert commits[-1] == commits.bad
    assert [c.pr for c in commits] == list(range(101, 111))
    first = commits[0]
    assert (
        first.summary == "Set value to 1 (#101)" and first.author == "Ekka Test <test@ekka.invalid>"
    )
    assert first.date.startswith("2025-01-01T00:00:00")


def test_refs_may_be_branches_and_relative(linear):
    repo, shas = linear
    commits = commit_range(repo, "main~3", "main")
    assert commits.shas == shas[-3:]


def test_range_is_a_sequence_that_slices_and_removes(linear):
    repo, shas = linear
    commits = commit_range(repo, shas[0], shas[10])
    part = commits[2:5]
    assert isinstance(part, CommitRange) and part.shas == shas[3:6]
    assert part.good == commits.good and part.bad == commits.bad
    assert shas[4] in part and shas[1] not in part and commits[3] in part
    removed = part.remove(shas[4])
    assert removed.sha == shas[4] and part.shas == [shas[3], shas[5]]
    assert len(commits) == 10  # a slice is a copy
    with pytest.raises(ValueError):
        part.remove(shas[4])
    assert CommitRange.from_json(commits.to_json()) == commits
    assert CommitInfo.from_json(commits[0].to_json()) == commits[0]


def test_first_parent_chain_skips_commits_inside_merged_branches(merged):
    repo, c = merged
    commits = commit_range(repo, c["c0"], c["c2"])
    assert commits.shas == [c["c1"], c["merge"], c["c2"]]
    assert [x.pr for x in commits] == [None, 7, 8]
    assert commits[1].summary == "Merge pull request #7 from someone/feature"
    assert "Add the feature" in commits[1].message


def test_pr_lookup_comes_first_and_the_message_is_the_fallback(merged):
    repo, c = merged
    asked = []

    def lookup(sha: str) -> int | None:
        asked.append(sha)
        return 4242 if sha == c["c1"] else None

    commits = commit_range(repo, c["c0"], c["c2"], pr_lookup=lookup)
    assert [x.pr for x in commits] == [4242, 7, 8]
    assert set(asked) >= {c["c1"], c["merge"], c["c2"]}


@pytest.mark.parametrize(
    ("message", "pr"),
    [
        ("[Kernel] Faster rotary (#12345)", 12345),
        ("Fix (#1) again (#23)\n\nbody (#99)", 23),
        ("Merge pull request #77 from user/branch\n\nTitle (#5)", 77),
        ('Revert "x (#3)" for now', None),
        ("No number here", None),
        ("", None),
    ],
)
def test_parse_pr_number(message, pr):
    assert parse_pr_number(message) == pr


def test_good_on_a_merged_branch_is_rejected_with_the_merge_named(merged):
    repo, c = merged
    with pytest.raises(CommitRangeError, match="first-parent") as err:
        commit_range(repo, c["f1"], c["c2"])
    assert c["merge"][:10] in str(err.value)


def test_unknown_refs(linear):
    repo, shas = linear
    with pytest.raises(UnknownRefError, match="good ref 'v9.9.9'"):
        commit_range(repo, "v9.9.9", shas[3])
    with pytest.raises(UnknownRefError, match="bad ref 'nosuchbranch'"):
        commit_range(repo, shas[0], "nosuchbranch")
    with pytest.raises(UnknownRefError, match="not a valid"):
        commit_range(repo, "--all", shas[3])


def test_good_not_an_ancestor_of_bad(linear, merged):
    repo, shas = linear
    with pytest.raises(CommitRangeError, match="swapped"):
        commit_range(repo, shas[5], shas[2])
    repo, c = merged
    with pytest.raises(CommitRangeError, match="not an ancestor"):
        commit_range(repo, c["f2"], c["c1"])  # diverged: neither contains the other


def test_empty_range(linear):
    repo, shas = linear
    with pytest.raises(CommitRangeError, match="same commit"):
        commit_range(repo, shas[4], "main~6")


def test_not_a_repository(tmp_path, linear):
    with pytest.raises(NotARepositoryError, match="not a git repository"):
        commit_range(tmp_path, "a", "b")
    with pytest.raises(NotARepositoryError, match="not a folder"):
        commit_range(tmp_path / "missing", "a", "b")
    repo, _ = linear
    (repo / "sub").mkdir(exist_ok=True)
    with pytest.raises(NotARepositoryError, match="inside the git repository"):
        commit_range(repo / "sub", "a", "b")


def test_dirty_tracked_files_are_refused_unless_allowed(tmp_path):
    repo = tmp_path / "repo"
    shas = linear_repo(repo, 3)
    (repo / "untracked.txt").write_text("fine\n")
    assert len(commit_range(repo, shas[0], shas[3])) == 3
    (repo / "value.txt").write_text("edited\n")
    with pytest.raises(DirtyRepositoryError, match="git stash"):
        commit_range(repo, shas[0], shas[3])
    assert len(commit_range(repo, shas[0], shas[3], require_clean=False)) == 3
    assert issubclass(DirtyRepositoryError, UsageError)
