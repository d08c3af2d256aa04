"""`ekka bisect`: the answer and exit code 0, 1 when it cannot tell, and exit code 2 with one
clear message (never a traceback, never a stray worktree) for bad input."""

from __future__ import annotations

import json

import pytest

from ekka.cli import main
from tests.bisect import assert_no_stray_worktrees, commit_file, linear_repo

ORACLE = 'test "$(cat value.txt)" -lt 13'


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cli") / "repo"
    return repo, linear_repo(repo, 20)


def bisect(repo, good, bad, cmd=ORACLE, *extra: str) -> list[str]:
    return ["bisect", "--repo", str(repo), "--good", good, "--bad", bad, "--cmd", cmd, *extra]


def test_finds_the_first_bad_commit(capsys, linear, tmp_path):
    repo, shas = linear
    report = tmp_path / "result.json"
    code, text = run(capsys, *bisect(repo, shas[0], "main", ORACLE, "--json", str(report)))
    assert code == 0, text
    assert f"first bad commit: {shas[13]} Set value to 13 (#113)" in text
    assert "PR #113" in text and "probes" in text
    assert f"[endpoint] {shas[0][:10]} Set value to 0 (#100): good — exit 0" in text
    data = json.loads(report.read_text())
    assert (
        data["status"] == "found"
        and data["first_bad"]["sha"] == shas[13]
        and data["first_bad"]["pr"] == 113
    )
    assert data["probes"] <= 7 and len(data["steps"]) == data["probes"]
    assert_no_stray_worktrees(repo)


def test_workers_and_repeats(capsys, linear):
    repo, shas = linear
    code, text = run(
        capsys, *bisect(repo, shas[0], shas[20], ORACLE, "--workers", "3", "--repeats", "3")
    )
    assert code == 0 and f"first bad commit: {shas[13]}" in text
    assert "2 of 2 runs" in text


def test_ambiguous_and_inconclusive_exit_1(capsys, linear, tmp_path):
    repo, shas = linear
    skip_12 = 'v=$(cat value.txt); [ "$v" = 12 ] && exit 125; test "$v" -lt 13'
    code, text = run(capsys, *bisect(repo, shas[0], shas[20], skip_12))
    assert code == 1 and "ambiguous" in text and shas[12][:10] in text and shas[13][:10] in text
    counter = tmp_path / "n"
    flaky_10 = (
        f'v=$(cat value.txt); if [ "$v" = 10 ]; then n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); '
        f'echo $n > {counter}; exit $((n % 2)); fi; test "$v" -lt 13'
    )
    code, text = run(capsys, *bisect(repo, shas[0], shas[20], flaky_10, "--repeats", "2"))
    assert code == 1 and "inconclusive" in text and shas[10][:10] in text
    assert_no_stray_worktrees(repo)


def test_the_cache_database_reuses_verdicts(capsys, linear, tmp_path):
    repo, shas = linear
    db = f"sqlite:///{tmp_path / 'db' / 'ekka.db'}"
    first, second = tmp_path / "1.json", tmp_path / "2.json"
    assert (
        run(capsys, *bisect(repo, shas[0], shas[20], ORACLE, "--db", db, "--json", str(first)))[0]
        == 0
    )
    code, text = run(
        capsys, *bisect(repo, shas[4], shas[20], ORACLE, "--db", db, "--json", str(second))
    )
    assert code == 0 and ", cached —" in text
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert two["cached"] > 0 and two["probes"] < one["probes"]
    assert two["first_bad"]["sha"] == shas[13]
    code, text = run(
        capsys, *bisect(repo, shas[4], shas[20], ORACLE + " ", "--db", db)
    )  # another command
    assert code == 0 and ", cached" not in text


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("false", "the good endpoint .* probes bad, not good: exit 1"),
        ("true", "the bad endpoint .* probes good, not bad: exit 0"),
        ("exit 125", "probes skip, so it cannot be verified"),
        (
            "nosuchprogram",
            "the oracle command could not start: exit 127: .*nosuchprogram: command not found",
        ),
        ("./not-in-the-repo.sh", "the oracle command could not start: .*No such file"),
    ],
)
def test_endpoints_that_do_not_behave_exit_2(capsys, linear, cmd, message):
    repo, shas = linear
    code, text = run(capsys, *bisect(repo, shas[0], shas[20], cmd))
    assert code == 2, text
    assert "Traceback" not in text
    assert __import__("re").search(message, text), text
    assert_no_stray_worktrees(repo)


def test_bad_input_exits_2(capsys, linear, tmp_path):
    repo, shas = linear
    cases = [
        (bisect(repo, "v0.0.1", shas[5]), "good ref 'v0.0.1' names no commit"),
        (bisect(repo, shas[0], "nosuchbranch"), "bad ref 'nosuchbranch' names no commit"),
        (bisect(repo, shas[9], shas[2]), "swapped"),
        (bisect(repo, shas[3], shas[3]), "same commit"),
        (bisect(tmp_path, "a", "b"), "is not a git repository"),
        (["bisect", "--repo", str(repo), "--good", shas[0], "--bad", shas[5]], "--cmd"),
        (bisect(repo, shas[0], shas[5], ORACLE, "--workers", "0"), "workers"),
        (bisect(repo, shas[0], shas[5], ORACLE, "--timeout", "-1"), "timeout must be positive"),
        (bisect(repo, shas[0], shas[5], ORACLE, "--db", "not a url"), "not a database URL"),
    ]
    for argv, message in cases:
        code, text = run(capsys, *argv)
        assert code == 2, (argv, text)
        assert message in text and "Traceback" not in text, (argv, text)
    assert_no_stray_worktrees(repo)


def test_a_dirty_repository_exits_2(capsys, tmp_path):
    repo = tmp_path / "repo"
    shas = linear_repo(repo, 4)
    (repo / "value.txt").write_text("edited\n")
    code, text = run(capsys, *bisect(repo, shas[0], shas[4]))
    assert code == 2 and "uncommitted changes" in text
    commit_file(repo, "value.txt", "5\n", "Commit the edit")
    assert run(capsys, *bisect(repo, shas[0], "main", 'test "$(cat value.txt)" -lt 3'))[0] == 0
    assert_no_stray_worktrees(repo)
