"""The search on a real 40-commit history with in-process probes: bounds, multisection, skips,
repeats, endpoint checks, the cache hook and the observer."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

import pytest

from ekka.bisect.cache import VerdictCache
from ekka.bisect.history import CommitInfo, commit_range
from ekka.bisect.search import Bisector, BisectStatus, PrintObserver, split_points
from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.errors import EkkaError, EndpointError, OracleStartError, UsageError
from tests.bisect import git, linear_repo


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """(repo, shas, value of each sha): commit i sets value.txt to i, read back through git."""
    repo = tmp_path_factory.mktemp("search") / "repo"
    shas = linear_repo(repo, 40)
    values = {sha: int(git(repo, "show", f"{sha}:value.txt")) for sha in shas}
    return repo, shas, values


class Oracle:
    """Good while value < first_bad; `skip` values skip; counts its calls; thread-safe."""

    def __init__(self, values, first_bad, skip=(), flaky=None):
        self.values, self.first_bad, self.skip, self.flaky = values, first_bad, set(skip), flaky
        self.calls: Counter[int] = Counter()
        self.lock = threading.Lock()

    def __call__(self, commit: CommitInfo) -> ProbeResult:
        value = self.values[commit.sha]
        with self.lock:
            self.calls[value] += 1
            n = self.calls[value]
        if value in self.skip:
            return ProbeResult(Verdict.SKIP, "exit 125")
        if self.flaky is not None and value in self.flaky:
            return ProbeResult(Verdict.GOOD if n % 2 else Verdict.BAD, f"flaky call {n}")
        verdict = Verdict.GOOD if value < self.first_bad else Verdict.BAD
        return ProbeResult(verdict, f"value {value}")

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def bound(size: int) -> int:
    return math.ceil(math.log2(size)) + 2


def test_split_points_cut_the_outcomes_evenly():
    assert split_points(19, 1) == [9]  # 20 outcomes: 10 either way
    assert split_points(1, 1) == [0]
    assert split_points(19, 3) == [4, 9, 14]
    assert split_points(2, 5) == [0, 1]
    for size in range(1, 50):
        for parts in range(1, 6):
            points = split_points(size, parts)
            assert points == sorted(set(points)) and 0 <= points[0] and points[-1] < size


def test_every_bad_position_in_20_commits_with_one_worker(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[20])
    for first_bad in range(1, 21):
        oracle = Oracle(values, first_bad)
        result = Bisector(oracle).run(commits)
        assert result.status is BisectStatus.FOUND and result
        assert result.first_bad.sha == shas[first_bad]
        assert result.first_bad.pr == 100 + first_bad
        assert result.last_good.sha == shas[first_bad - 1]
        assert result.probes == oracle.total <= bound(20)
        assert [s.round for s in result.steps[:2]] == [0, 0]
        json.dumps(result.to_json())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 16, 17, 31, 40])
def test_probes_stay_within_log2_plus_two(history, size):
    repo, shas, values = history
    start = 40 - size
    commits = commit_range(repo, shas[start], shas[40])
    assert len(commits) == size
    for first_bad in range(start + 1, 41):
        oracle = Oracle(values, first_bad)
        result = Bisector(oracle).run(commits)
        assert result.first_bad.sha == shas[first_bad]
        assert oracle.total == result.probes <= bound(size), (size, first_bad)


def test_three_workers_find_the_same_commit_in_fewer_rounds(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[20])
    rounds = {1: [], 3: []}
    for first_bad in range(1, 21):
        for workers in (1, 3):
            result = Bisector(Oracle(values, first_bad), workers=workers).run(commits)
            assert result.first_bad.sha == shas[first_bad]
            rounds[workers].append(result.rounds)
    assert max(rounds[1]) == math.ceil(math.log2(20)) == 5
    assert max(rounds[3]) <= math.ceil(math.log(20, 4)) == 3
    assert sum(rounds[3]) < sum(rounds[1])


def test_workers_probe_at_the_same_time(history):
    repo, shas, values = history
    barrier = threading.Barrier(3, timeout=10)
    inner = Oracle(values, 11)

    def probe(commit):
        if values[commit.sha] in (10, 20, 30):  # round 1: all three must be inside at once
            barrier.wait()
        return inner(commit)

    result = Bisector(probe, workers=3).run(commit_range(repo, shas[0], shas[40]))
    assert result.first_bad.sha == shas[11] and not result.skipped
    assert sorted(values[s.commit.sha] for s in result.steps if s.round == 1) == [10, 20, 30]


def test_a_skip_next_to_the_first_bad_commit_is_ambiguous(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[20])
    result = Bisector(Oracle(values, 13, skip={12})).run(commits)
    assert result.status is BisectStatus.AMBIGUOUS and not result
    assert result.first_bad is None
    assert [c.sha for c in result.candidates] == [shas[12], shas[13]]
    assert result.candidates.good.sha == shas[11] and result.candidates.bad.sha == shas[13]
    assert result.skipped == (shas[12],)
    # the first bad one itself skipping: it or the next one
    result = Bisector(Oracle(values, 13, skip={13})).run(commits)
    assert [c.sha for c in result.candidates] == [shas[13], shas[14]]


def test_a_skip_elsewhere_probes_a_neighbour_and_still_finds_it(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[20])
    result = Bisector(Oracle(values, 13, skip={10})).run(commits)
    assert result.status is BisectStatus.FOUND and result.first_bad.sha == shas[13]
    assert result.skipped == (shas[10],)
    after = [s for s in result.steps if s.round == 2][0]
    assert abs(values[after.commit.sha] - 10) == 1  # the neighbour of the skipped commit
    assert result.probes <= bound(20) + 1


def test_skips_are_never_counted_as_good_or_bad(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[8])
    result = Bisector(Oracle(values, 5, skip=set(range(1, 8)))).run(commits)
    assert result.status is BisectStatus.AMBIGUOUS
    assert result.candidates.shas == shas[1:9]
    assert result.probes == 2 + 7 and len(result.skipped) == 7


@pytest.mark.parametrize(
    ("first_bad", "skip", "message"),
    [
        (0, (), "the good endpoint .* probes bad, not good: value 0"),
        (99, (), "the bad endpoint .* probes good, not bad: value 20"),
        (5, (0,), "the good endpoint .* probes skip, so it cannot be verified"),
    ],
)
def test_endpoints_that_do_not_behave(history, first_bad, skip, message):
    repo, shas, values = history
    with pytest.raises(EndpointError, match=message) as err:
        Bisector(Oracle(values, first_bad, skip=skip)).run(commit_range(repo, shas[0], shas[20]))
    assert err.value.exit_code == 2
    assert (err.value.good_step is None) == (first_bad == 99)


def test_endpoints_are_probed_in_parallel_with_two_workers(history):
    repo, shas, values = history
    barrier = threading.Barrier(2, timeout=10)
    inner = Oracle(values, 9)

    def probe(commit):
        if commit.sha in (shas[0], shas[20]):
            barrier.wait()
        return inner(commit)

    assert (
        Bisector(probe, workers=2).run(commit_range(repo, shas[0], shas[20])).first_bad.sha
        == shas[9]
    )


def test_an_oracle_that_cannot_start_on_both_endpoints(history):
    repo, shas, _ = history

    def probe(commit):
        return ProbeResult(
            Verdict.BAD, "exit 127: nosuch: command not found", details={"cannot_start": True}
        )

    with pytest.raises(OracleStartError, match="could not start: exit 127"):
        Bisector(probe).run(commit_range(repo, shas[0], shas[5]))


def test_repeats_decide_by_majority_and_stop_early(history):
    repo, shas, values = history
    oracle = Oracle(values, 13)
    result = Bisector(oracle, repeats=3).run(commit_range(repo, shas[0], shas[20]))
    assert result.first_bad.sha == shas[13]
    assert all(len(s.runs) == 2 for s in result.steps)  # two agreeing runs settle three
    assert result.probes == 2 * len(result.steps)
    assert result.steps[0].reason.startswith("2 of 2 runs good")


def test_a_50_50_commit_is_inconclusive_never_a_guess(history):
    repo, shas, values = history
    oracle = Oracle(values, 13, flaky={10})
    result = Bisector(oracle, repeats=2).run(commit_range(repo, shas[0], shas[20]))
    assert result.status is BisectStatus.INCONCLUSIVE and not result
    assert result.inconclusive.sha == shas[10] and result.first_bad is None
    assert shas[10] in result.candidates and result.candidates[-1].sha == shas[20]
    assert "no majority over 2 runs (1 bad, 1 good)" in result.steps[-1].reason


def test_an_inconclusive_commit_outside_the_window_does_not_matter(history):
    repo, shas, values = history
    # three workers probe 5, 10, 15 first; 5 is bad, so the flaky 15 no longer matters
    result = Bisector(Oracle(values, 3, flaky={15}), workers=3, repeats=2).run(
        commit_range(repo, shas[0], shas[20])
    )
    assert result.status is BisectStatus.FOUND and result.first_bad.sha == shas[3]
    assert any(s.inconclusive for s in result.steps)


def test_a_probe_that_raises_is_a_skip_but_ekka_errors_stop(history):
    repo, shas, values = history
    inner = Oracle(values, 13)

    def probe(commit):
        if values[commit.sha] == 10:
            raise RuntimeError("disk full")
        return inner(commit)

    result = Bisector(probe).run(commit_range(repo, shas[0], shas[20]))
    assert result.first_bad.sha == shas[13] and result.skipped == (shas[10],)
    assert (
        "RuntimeError: disk full" in [s for s in result.steps if s.commit.sha == shas[10]][0].reason
    )

    def broken(commit):
        raise UsageError("the model folder is gone")

    with pytest.raises(UsageError, match="model folder"):
        Bisector(broken).run(commit_range(repo, shas[0], shas[20]))


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="workers"):
        Bisector(print, workers=0)
    with pytest.raises(UsageError, match="repeats"):
        Bisector(print, repeats=0)


def test_the_observer_hears_every_event(history):
    repo, shas, values = history
    lines: list[str] = []
    results: list[str] = []
    result = Bisector(Oracle(values, 7), observer=PrintObserver(lines.append, results.append)).run(
        commit_range(repo, shas[0], shas[20])
    )
    assert lines[0].startswith("bisecting 20 commits")
    assert sum(line.startswith("probing ") for line in lines) == result.probes
    verdicts = [line for line in lines if line.startswith("[")]
    assert len(verdicts) == len(result.steps)
    assert verdicts[0].startswith(
        f"[endpoint] {shas[0][:10]} Set value to 0 (#100): good — value 0"
    )
    assert (
        results == [results[0]]
        and f"first bad commit: {shas[7]}" in results[0]
        and "PR #107" in results[0]
    )


def test_the_cache_reuses_verdicts_over_an_overlapping_range(history, tmp_path):
    repo, shas, values = history
    url = f"sqlite:///{tmp_path / 'deep' / 'cache.db'}"
    key = str(repo)
    with VerdictCache(url) as cache:
        first = Bisector(Oracle(values, 13), cache=cache, repo_key=key, config_hash="c1").run(
            commit_range(repo, shas[0], shas[20])
        )
        assert first.cached == 0
        fresh = Bisector(Oracle(values, 13)).run(commit_range(repo, shas[4], shas[24]))
        oracle = Oracle(values, 13)
        second = Bisector(oracle, cache=cache, repo_key=key, config_hash="c1").run(
            commit_range(repo, shas[4], shas[24])
        )
        assert second.first_bad.sha == shas[13]
        assert second.cached > 0 and second.probes == oracle.total < fresh.probes
        assert second.probes + second.cached == fresh.probes
        assert all(s.runs == () for s in second.steps if s.cached)
        other = Bisector(Oracle(values, 13), cache=cache, repo_key=key, config_hash="c2").run(
            commit_range(repo, shas[4], shas[24])
        )
        assert other.cached == 0 and other.probes == fresh.probes
        again = Bisector(Oracle(values, 13), cache=cache, repo_key=key, config_hash="c1").run(
            commit_range(repo, shas[4], shas[24])
        )
        assert again.probes == 0 and again.first_bad.sha == shas[13]


def test_the_cache_keeps_no_unverified_endpoints_transient_skips_or_inconclusive_commits(
    history, tmp_path
):
    repo, shas, values = history
    with VerdictCache(f"sqlite:///{tmp_path / 'c.db'}") as cache:
        with pytest.raises(EndpointError):
            Bisector(Oracle(values, 0), cache=cache, repo_key="r", config_hash="h").run(
                commit_range(repo, shas[0], shas[20])
            )
        assert cache.get("r", shas[0], "h") is None and cache.get("r", shas[20], "h") is None
        inner = Oracle(values, 13, flaky={15})

        def probe(commit):
            if values[commit.sha] == 10:
                return ProbeResult(Verdict.SKIP, "timed out", details={"transient": True})
            return inner(commit)

        result = Bisector(probe, cache=cache, repo_key="r", config_hash="h", repeats=2).run(
            commit_range(repo, shas[0], shas[20])
        )
        assert result.status is BisectStatus.INCONCLUSIVE and result.inconclusive.sha == shas[15]
        assert cache.get("r", shas[10], "h") is None  # transient skip
        assert cache.get("r", shas[15], "h") is None  # inconclusive
        assert cache.get("r", shas[0], "h").verdict is Verdict.GOOD
        assert cache.get("r", shas[20], "h").reason.startswith("2 of 2 runs bad")


def test_the_endpoint_error_is_an_ekka_usage_error():
    assert issubclass(EndpointError, UsageError) and issubclass(EndpointError, EkkaError)
