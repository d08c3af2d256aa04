"""The verdict cache on real SQLite files: get, upsert, keys, URLs and configuration hashes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ekka.bisect.cache import VerdictCache, config_hash, default_url
from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.errors import VerdictCacheError


def test_put_get_and_upsert(tmp_path):
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'ekka.db'}"
    with VerdictCache(url) as cache:
        assert cache.get("repo", "abc", "h1") is None
        cache.put("repo", "abc", "h1", ProbeResult(Verdict.BAD, "exit 1", 1.5, {"ratio": 37.5}))
        assert cache.get("repo", "abc", "h1") == ProbeResult(
            Verdict.BAD, "exit 1", 1.5, {"ratio": 37.5}
        )
        cache.put("repo", "abc", "h1", ProbeResult(Verdict.GOOD, "exit 0", 0.5))
        assert cache.get("repo", "abc", "h1").verdict is Verdict.GOOD
        assert cache.get("repo", "abc", "h2") is None
        assert cache.get("other", "abc", "h1") is None
    # persisted, one row per key, with the documented columns
    with VerdictCache(url) as cache:
        assert cache.get("repo", "abc", "h1").reason == "exit 0"
    rows = (
        sqlite3.connect(tmp_path / "a" / "b" / "ekka.db")
        .execute(
            "select repo, [commit], config_hash, verdict, reason, seconds, details_json, created_at from verdicts"
        )
        .fetchall()
    )
    assert len(rows) == 1 and rows[0][:6] == ("repo", "abc", "h1", "good", "exit 0", 0.5)


def test_in_memory_sqlite():
    cache = VerdictCache("sqlite://")
    cache.put("r", "c", "h", ProbeResult(Verdict.SKIP, "exit 125"))
    assert cache.get("r", "c", "h").verdict is Verdict.SKIP
    cache.close()


def test_config_hash_is_canonical():
    a = config_hash({"model": "llama", "dtype": "bfloat16", "prompt_ids": [1, 2, 3]})
    b = config_hash({"prompt_ids": [1, 2, 3], "dtype": "bfloat16", "model": "llama"})
    assert a == b and len(a) == 64
    assert a != config_hash({"model": "llama", "dtype": "float32", "prompt_ids": [1, 2, 3]})
    with pytest.raises(TypeError):
        config_hash({"path": Path("/x")})


def test_default_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path.resolve()}/.cache/ekka/ekka.db"
    assert default_url(tmp_path / "x.db") == f"sqlite:///{(tmp_path / 'x.db').resolve()}"


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/db"])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(VerdictCacheError) as err:
        VerdictCache(url)
    assert err.value.exit_code == 2


def test_a_sqlite_file_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(VerdictCacheError, match="cannot make the folder"):
        VerdictCache(f"sqlite:///{tmp_path / 'file' / 'sub' / 'ekka.db'}")
