"""The nightly sweep end to end, on real vLLM (CPU) against transformers: a clone of a local
"upstream" repository of the installed release's sources whose main branch moves from good to
bad (a planted regression among harmless commits) and back (its revert); the tests' local
GitHub API server receives the tracking issue and the pull request's comment."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import apply_patch_commit, clone, harmless_commit
from ekka.bot.app import create_app
from ekka.bot.config import from_mapping
from ekka.bot.db import Store
from ekka.cli import main
from ekka.repo import git
from tests.bot.conftest import REPO, TOKEN
from tests.conftest import PROMPT_IDS

pytestmark = [pytest.mark.vllm, pytest.mark.bot, pytest.mark.slow]
PATCH = Path(str(files("ekka") / "data" / "demo-regression.patch"))


def _writes(github) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in github.requests if r.method in ("POST", "PATCH")]


def test_nightly_sweep_finds_bisects_reports_once_and_closes(tmp_path, github, zoo_model, capsys):
    upstream = clone(base_repository(tmp_path), tmp_path / "upstream")
    release = git(upstream, "rev-parse", "HEAD")
    work = clone(upstream, tmp_path / "clone")  # the bot's clone: `origin` is upstream
    model = zoo_model("llama", rms_norm_eps=1e-5)
    toml = tmp_path / "ekka.toml"
    toml.write_text(
        f"""
[github]
throttle = false
[server]
database_url = "sqlite:///{tmp_path / "bot.db"}"
workdir = "{tmp_path / "work"}"
[[repositories]]
name = "{REPO}"
path = "{work}"
[[models]]
name = "tiny-llama"
path = "{model}"
prompt_ids = {list(PROMPT_IDS)}
max_tokens = 3
[[sweeps]]
name = "nightly"
repository = "{REPO}"
branch = "main"
models = ["tiny-llama"]
dtypes = ["float32"]
"""
    )
    env = {"EKKA_GITHUB_TOKEN": TOKEN, "EKKA_GITHUB_API_URL": github.url}

    def sweep(n: int) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            mp.delenv("EKKA_WEBHOOK_SECRET", raising=False)
            code = main(["sweep", "--config", str(toml), "--json", str(tmp_path / f"s{n}.json")])
        result = json.loads((tmp_path / f"s{n}.json").read_text())
        assert code == (1 if result["results"][0]["verdict"] == "bad" else 0), capsys.readouterr()
        return result

    # 1: the release is good; nothing to report
    first = sweep(1)
    assert first["head"] == release and first["results"][0]["verdict"] == "good"
    assert _writes(github) == []

    # upstream moves: a harmless commit, the regression (#9002), a harmless commit
    harmless_commit(upstream, "vllm/sampling_params.py", 1, 9001)
    bug = apply_patch_commit(upstream, PATCH, "[Model] Llama norms use defaults", 9002)
    head = harmless_commit(upstream, "vllm/sampling_params.py", 2, 9003)
    github.commit_pulls[(REPO, bug)] = [{"number": 9002, "merged_at": "2026-12-01T10:00:00Z"}]

    # 2: bad at the new head: bisected to the bug, one tracking issue, one PR comment
    second = sweep(2)
    [row] = second["results"]
    assert second["head"] == head and row["verdict"] == "bad" and row["regression"] == 1
    [issue] = list(github.issues.values())
    assert issue["state"] == "open" and "tiny-llama" in issue["title"] and "#9002" in issue["title"]
    assert bug[:10] in issue["body"] and "LlamaDecoderLayer.__init__" in issue["body"]
    assert "model.layers.0.input_layernorm" in issue["body"]
    [pr_comment] = github.bot_comments(REPO, 9002)
    assert f"issues/{issue['number']}" in pr_comment["body"]
    report = json.loads((Path(row["report_dir"]) / "report.json").read_text())
    assert report["bisection"]["first_bad"]["sha"] == bug
    assert report["bisection"]["cached"] >= 2  # both ends came from the sweeps' verdicts
    writes = _writes(github)

    # 3: the same head again: the verdict from the cache, nothing posted or edited
    third = sweep(3)
    assert third["results"][0]["verdict"] == "bad" and third["results"][0]["regression"] == 1
    assert third["actions"] == [] and _writes(github) == writes

    # the fix: a revert upstream; 4: good again, the issue gets a comment and is closed
    git(upstream, "revert", "--no-edit", bug)
    fourth = sweep(4)
    assert fourth["results"][0]["verdict"] == "good"
    assert issue["state"] == "closed"
    [closing] = github.bot_comments(REPO, issue["number"])
    assert "good again" in closing["body"]
    assert len(github.bot_comments(REPO, 9002)) == 1 and len(github.issues) == 1

    # the server shows the history
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
    try:
        config = from_mapping(
            {"server": {"database_url": f"sqlite:///{tmp_path / 'bot.db'}"}},
            {"EKKA_WEBHOOK_SECRET": "x", "EKKA_GITHUB_TOKEN": TOKEN},
            "test",
        )
        from starlette.testclient import TestClient

        with TestClient(create_app(config, store)) as client:
            runs = client.get("/sweeps").json()["runs"]
            page = client.get("/sweeps", headers={"accept": "text/html"})
    finally:
        store.close()
    assert [r["id"] for r in runs] == [4, 3, 2, 1]
    assert [r["results"][0]["verdict"] for r in runs] == ["good", "bad", "bad", "good"]
    assert runs[2]["results"][0]["regression"]["issue_url"].endswith(f"/issues/{issue['number']}")
    assert page.status_code == 200 and "tiny-llama" in page.text
