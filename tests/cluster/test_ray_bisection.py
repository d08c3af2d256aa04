"""Bisection with each probe a task on a (local) Ray cluster: a real git repository, a shell
oracle in a worktree of each commit on the task's node. With k workers the search probes k
commits per round; its rounds match ceil(log_(k+1) N) (the endpoint round aside), the first bad
commit is the local executor's, cached verdicts are not submitted again, and two bisections
share the cluster."""

from __future__ import annotations

import threading

import pytest

from ekka.bisect.cache import VerdictCache
from ekka.bisect.command import CommandOracle
from ekka.bisect.history import commit_range
from ekka.bisect.search import Bisector, BisectResult
from ekka.containers.ray import CommandProbe, RayExecutor, RaySettings
from tests.cluster.conftest import make_history, worktrees

pytestmark = pytest.mark.ray

N = 16
FIRST_BAD = 5  # a worst case for k = 1, 2 and 4: every round the formula counts is needed
ORACLE = "sleep 1; grep -qx good state"  # a probe that takes a second, then reads the commit


def search_rounds(commits: int, workers: int) -> int:
    """ceil(log_(k+1) N) in integers: the search rounds k-way multisection needs at most."""
    rounds = 0
    while (workers + 1) ** rounds < commits:
        rounds += 1
    return rounds


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ray-history") / "repo"
    return repo, make_history(repo, N, FIRST_BAD)


@pytest.fixture(scope="module")
def local_first_bad(history) -> str:
    """The same search with the local command executor (no cluster)."""
    repo, shas = history
    result = Bisector(CommandOracle(repo, "grep -qx good state")).run(
        commit_range(repo, shas[0], shas[-1])
    )
    assert result.first_bad is not None
    return result.first_bad.sha


def overlapping_rounds(result: BisectResult) -> list[int]:
    """Search rounds whose probes all ran at once on the cluster (their task times overlap)."""
    by_round: dict[int, list[dict]] = {}
    for step in result.steps:
        if step.round > 0:
            by_round.setdefault(step.round, []).append(step.details["ray"])
    return [
        r
        for r, tasks in by_round.items()
        if len(tasks) > 1 and max(t["started"] for t in tasks) < min(t["ended"] for t in tasks)
    ]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_multisection_on_the_cluster(cluster, history, local_first_bad, workers):
    repo, shas = history
    executor = RayExecutor(CommandProbe(str(repo), ORACLE), RaySettings(cluster))
    result = Bisector(executor, workers=workers).run(commit_range(repo, shas[0], shas[-1]))
    assert result.first_bad is not None and result.first_bad.sha == local_first_bad
    assert local_first_bad == shas[FIRST_BAD]
    assert result.rounds == search_rounds(N, workers), [s.round for s in result.steps]
    assert result.rounds + 1 == {1: 5, 2: 4, 4: 3}[workers]  # with the endpoints' round
    assert executor.submitted == result.probes
    assert all("ray" in s.details and s.details["ray"]["node"] for s in result.steps)
    if workers > 1:  # k tasks of a round ran at once
        assert overlapping_rounds(result), [s.details["ray"] for s in result.steps]
    assert executor.running() == 0 and len(worktrees(repo)) == 1


def test_cached_verdicts_are_not_submitted_again(cluster, history, tmp_path):
    repo, shas = history
    commits = commit_range(repo, shas[0], shas[-1])
    cache = VerdictCache(f"sqlite:///{tmp_path / 'verdicts.db'}")
    try:
        runs = []
        for _ in range(2):
            executor = RayExecutor(CommandProbe(str(repo), ORACLE), RaySettings(cluster))
            bisector = Bisector(
                executor, workers=4, cache=cache, repo_key=str(repo), config_hash="ray-test"
            )
            runs.append((bisector.run(commits), executor))
    finally:
        cache.close()
    (first, first_executor), (again, again_executor) = runs
    assert first_executor.submitted == first.probes > 0
    assert again_executor.submitted == 0 and again.probes == 0
    assert again.cached == first.probes and again.first_bad == first.first_bad


def test_two_bisections_share_the_cluster(cluster, tmp_path):
    histories = [
        (tmp_path / "a", make_history(tmp_path / "a", 12, 3)),
        (tmp_path / "b", make_history(tmp_path / "b", 12, 10)),
    ]
    results: dict[str, BisectResult] = {}
    executors = {}

    def bisect(name, repo, shas):
        executors[name] = RayExecutor(CommandProbe(str(repo), ORACLE), RaySettings(cluster))
        results[name] = Bisector(executors[name], workers=2).run(
            commit_range(repo, shas[0], shas[-1])
        )

    threads = [
        threading.Thread(target=bisect, args=(name, repo, shas))
        for name, (repo, shas) in zip("ab", histories)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    steps = {
        n: [(s.commit.short, s.verdict, s.reason) for s in r.steps] for n, r in results.items()
    }
    assert results["a"].first_bad and results["a"].first_bad.sha == histories[0][1][3], steps
    assert results["b"].first_bad and results["b"].first_bad.sha == histories[1][1][10], steps
    assert executors["a"].job != executors["b"].job  # each its own tasks and trace folder
    spans = {
        name: (
            min(s.details["ray"]["started"] for s in result.steps),
            max(s.details["ray"]["ended"] for s in result.steps),
        )
        for name, result in results.items()
    }
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1], "ran together"
