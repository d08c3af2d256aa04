"""Ekka's stores on SQLite and, where EKKA_TEST_POSTGRES_URL names one, on PostgreSQL: the
bot's delivery log, job queue (claims never overlap, leases expire), inbox and records; the
verdict cache and the sweeps' results on the same database; how a database is opened
(`ekka.storage.database`)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from ekka.bisect.cache import VerdictCache
from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.bot.db import Store
from ekka.bot.queue import JobState
from ekka.errors import DatabaseError, UsageError
from ekka.storage.sweeps import SweepResult, SweepStore

pytestmark = pytest.mark.bot
POSTGRES = os.environ.get("EKKA_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bot.db'}"
    if not POSTGRES:
        if os.environ.get("EKKA_REQUIRE_POSTGRES"):
            pytest.fail("EKKA_TEST_POSTGRES_URL is not set, and CI requires PostgreSQL")
        pytest.skip("EKKA_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server)")
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES)  # each test drops the tables first: a clean database
    for tables in (*Store.metadata, *SweepStore.metadata):
        tables.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS verdicts"))
    engine.dispose()
    return POSTGRES


def new_job(store: Store, comment: int = 1, command: str = "/ekka diagnose"):
    return store.create_job(
        repository="acme/vllm",
        issue=12,
        command_comment=comment,
        command=command,
        requested_by="alice",
        installation=None,
        params={"good": "v1", "bad": "main"},
    )


def test_deliveries_are_remembered_once(url):
    store = Store(url)
    assert store.record_delivery("d-1", "ping", None, None)
    assert not store.record_delivery("d-1", "ping", None, None)
    store.delivery_outcome("d-1", "pong")
    store.close()
    again = Store(url)  # a restart
    assert not again.record_delivery("d-1", "ping", None, None)
    assert again.delivery("d-1")["outcome"] == "pong"
    again.close()


def test_concurrent_deliveries_of_one_id_record_one(url):
    store = Store(url)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        results.append(store.record_delivery("same", "issue_comment", "created", "acme/vllm"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    store.close()


def test_one_job_per_command_and_claims_never_overlap(url):
    store = Store(url)
    jobs = [new_job(store, comment=i) for i in range(6)]
    assert new_job(store, comment=0) is None  # the same command of the same comment
    assert new_job(store, comment=0, command="/ekka diagnose  bad=x") is not None
    for job in jobs:
        store.update_job(job.id, state=JobState.QUEUED)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := store.claim(name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [j.id for j in jobs]  # each queued job once; "new" ones never
    store.close()


def test_a_dead_workers_job_is_requeued_then_failed_after_max_attempts(url):
    store = Store(url)
    job = new_job(store)
    store.update_job(job.id, state=JobState.QUEUED)
    assert store.claim("w1").attempts == 1
    assert store.recover(lease_seconds=60, max_attempts=2) == []  # the lease is fresh
    time.sleep(0.3)
    assert store.recover(lease_seconds=0.1, max_attempts=2) == [job.id]
    assert store.claim("w2").attempts == 2 and not store.heartbeat(job.id, "w1")
    assert store.heartbeat(job.id, "w2")
    time.sleep(0.3)
    assert store.recover(lease_seconds=0.1, max_attempts=2) == []
    failed = store.job(job.id)
    assert failed.state is JobState.FAILED and "interrupted 2 times" in failed.error
    store.close()


def test_cancel_inbox_and_records(url):
    store = Store(url)
    job = new_job(store)
    store.update_job(job.id, state=JobState.QUEUED)
    assert store.request_cancel(job.id) is JobState.CANCELLED
    other = new_job(store, comment=9)
    store.update_job(other.id, state=JobState.QUEUED)
    store.claim("w")
    assert store.request_cancel(other.id) is JobState.RUNNING
    assert store.job(other.id).cancel_requested
    key = dict(repository="acme/vllm", issue=1, comment=5, author="a", installation=None)
    first = store.add_command(delivery="d", text="/ekka help", error=None, **key)
    assert store.add_command(delivery="e", text="/ekka  help", error=None, **key) is None
    assert [c.id for c in store.pending_commands()] == [first]
    store.update_command(first, state="done", outcome="help")
    assert store.pending_commands() == []
    store.record_comment(job.id, "reply", "acme/vllm", 12, 99)
    store.record_comment(job.id, "reply", "acme/vllm", 12, 99)  # a no-op
    assert len(store.comments_of(job.id)) == 1
    store.record_head("acme/vllm", "main", "a" * 40)
    store.record_head("acme/vllm", "main", "b" * 40)
    assert store.head("acme/vllm", "main") == "b" * 40
    store.close()


def test_the_verdict_cache_shares_the_database(url):
    cache = VerdictCache(url)
    key = ("/srv/vllm", uuid.uuid4().hex, "cfg")
    cache.put(*key, ProbeResult(Verdict.BAD, "logits diverge", 3.0, {"ratio": 2400.0}))
    cache.put(*key, ProbeResult(Verdict.GOOD, "match", 2.0, {}))
    assert cache.get(*key).verdict is Verdict.GOOD
    cache.close()
    store = Store(url)  # the bot's tables beside the cache's
    assert store.jobs() == []
    store.close()


def test_sweep_runs_results_and_regressions(url):
    store = SweepStore(url)
    one = store.start_sweep_run("nightly", "acme/vllm", "main", "a" * 40)
    store.record_sweep_result(
        SweepResult(one, "nightly", "m", "float32", "a" * 40, "good", "ok", None, None)
    )
    store.finish_sweep_run(one, "done")
    two = store.start_sweep_run("nightly", "acme/vllm", "main", "b" * 40)
    bad = SweepResult(two, "nightly", "m", "float32", "b" * 40, "bad", "logits", None, None)
    store.record_sweep_result(bad)
    assert store.last_sweep_result("nightly", "m", "float32", before=two).verdict == "good"
    assert store.last_sweep_result("nightly", "m", "float32", verdict="bad", before=two) is None
    regression = store.open_regression(
        sweep="nightly", repository="acme/vllm", model="m", dtype="float32", good="a" * 40,
        head="b" * 40, first_bad="c" * 40, pr=7, summary="norms", report_dir=None,
    )  # fmt: skip
    store.record_sweep_result(bad.__class__(**{**bad.__dict__, "regression": regression.id}))
    store.update_regression(regression.id, issue=3)
    assert store.open_regression_of("nightly", "m", "float32").issue == 3
    store.update_regression(regression.id, state="closed", fixed_at="d" * 40)
    assert store.open_regression_of("nightly", "m", "float32") is None
    store.close()
    again = SweepStore(url)  # a restart keeps the history
    runs = again.sweep_runs()
    assert [r["id"] for r in runs] == [two, one] and runs[1]["state"] == "done"
    assert [r.regression for r in runs[0]["results"]] == [regression.id]
    again.record_arch_row("k", "LlamaForCausalLM", "float32", {"status": "match"})
    assert again.arch_row("k", "LlamaForCausalLM", "float32") == {"status": "match"}
    assert again.arch_row("other", "LlamaForCausalLM", "float32") is None
    again.close()


def test_the_bot_sees_the_sweeps_results_on_its_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with SweepStore(url) as sweeps:
        run = sweeps.start_sweep_run("nightly", "acme/vllm", "main", "a" * 40)
    with Store(url) as bot:
        assert bot.sweeps.engine is bot.engine
        assert [r["id"] for r in bot.sweeps.sweep_runs()] == [run]
        names = {t.name for t in bot.tables()}
        assert {"bot_jobs", "bot_deliveries", "sweep_runs", "sweep_arch_rows"} <= names


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("nosuchdb://host/db", "no SQLAlchemy dialect"),
    ],
)
def test_a_url_that_opens_nothing_is_a_usage_error(url, message):
    for store in (Store, SweepStore):
        with pytest.raises(DatabaseError, match=message) as err:
            store(url)
        assert isinstance(err.value, UsageError) and err.value.exit_code == 2


def test_sqlite_is_opened_for_sharing(tmp_path):
    from ekka.storage.database import open_database

    engine = open_database(f"sqlite:///{tmp_path / 'a' / 'b' / 'ekka.db'}")  # folders made
    with engine.connect() as conn:
        pragmas = [conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in PRAGMAS]
    engine.dispose()
    assert pragmas == ["wal", 1, 30000]  # synchronous=NORMAL is 1


PRAGMAS = ("journal_mode", "synchronous", "busy_timeout")
