"""The nightly sweep end to end, on the real framework (CPU) against transformers: a clone of a
local "upstream" repository of the installed release's sources whose main branch moves from good
to bad (a planted regression among harmless commits) and back (its revert); the tests' local
GitHub API server receives the tracking issue and the pull request's comment. On SGLang
(`framework = "sglang"`): a branch of SGLang's history that moves from good to bad."""

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
from tests.bot.conftest import REPO, TOKEN, FrameworkHistory
from tests.conftest import PROMPT_IDS

pytestmark = [pytest.mark.bot, pytest.mark.slow]
PATCH = Path(str(files("ekka") / "data" / "demo-regression.patch"))


def _writes(github) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in github.requests if r.method in ("POST", "PATCH")]


def nightly_config(
    tmp_path: Path, repo: Path, model: Path, database_url: str, *, branch: str = "main",
    framework: str = "vllm",
) -> Path:  # fmt: skip
    """A configuration whose sweep `nightly` probes `model` at `branch` of the clone `repo`
    (`framework`'s sources)."""
    toml = tmp_path / "ekka.toml"
    toml.write_text(
        f"""
[github]
throttle = false
[server]
database_url = "{database_url}"
workdir = "{tmp_path / "work"}"
[[repositories]]
name = "{REPO}"
path = "{repo}"
framework = "{framework}"
[[models]]
name = "tiny-llama"
path = "{model}"
prompt_ids = {list(PROMPT_IDS)}
max_tokens = 3
[[sweeps]]
name = "nightly"
repository = "{REPO}"
branch = "{branch}"
models = ["tiny-llama"]
dtypes = ["float32"]
"""
    )
    return toml


def run_sweep(toml: Path, github, capsys, out: Path) -> dict:
    """`ekka sweep --config TOML` reporting to the tests' GitHub server; its JSON result."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EKKA_GITHUB_TOKEN", TOKEN)
        mp.setenv("EKKA_GITHUB_API_URL", github.url)
        mp.delenv("EKKA_WEBHOOK_SECRET", raising=False)
        code = main(["sweep", "--config", str(toml), "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == (1 if result["results"][0]["verdict"] == "bad" else 0), capsys.readouterr()
    return result


@pytest.mark.vllm
def test_nightly_sweep_finds_bisects_reports_once_and_closes(tmp_path, github, zoo_model, capsys):
    upstream = clone(base_repository(tmp_path), tmp_path / "upstream")
    release = git(upstream, "rev-parse", "HEAD")
    work = clone(upstream, tmp_path / "clone")  # the bot's clone: `origin` is upstream
    model = zoo_model("llama", rms_norm_eps=1e-5)
    toml = nightly_config(tmp_path, work, model, f"sqlite:///{tmp_path / 'bot.db'}")

    def sweep(n: int) -> dict:
        return run_sweep(toml, github, capsys, tmp_path / f"s{n}.json")

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


@pytest.mark.sglang
def test_nightly_sweep_on_an_sglang_branch_bisects_and_opens_an_issue(
    tmp_path, github, sglang_history: FrameworkHistory, capsys
):
    """`framework = "sglang"`: the head probed with SGLang, the regression bisected over SGLang's
    history and reported in the framework's words. The history and its verdicts are the bot's
    end-to-end test's (`sglang_history`): what that test probed comes from the cache."""
    history = sglang_history.history
    repo = history.repo
    git(repo, "branch", "-f", "nightly", history.good)  # the watched branch, at the release
    toml = nightly_config(
        tmp_path, repo, sglang_history.model, sglang_history.database_url, branch="nightly",
        framework="sglang",
    )  # fmt: skip

    # 1: the release is good; nothing to report
    first = run_sweep(toml, github, capsys, tmp_path / "s1.json")
    assert first["head"] == history.good and first["results"][0]["verdict"] == "good"
    assert _writes(github) == []

    # the branch moves: a harmless commit, the regression, a harmless commit
    git(repo, "branch", "-f", "nightly", history.bad)
    pr = history.bug_pr
    github.commit_pulls[(REPO, history.bug)] = [{"number": pr, "merged_at": "2026-12-01T10:00:00Z"}]

    # 2: bad at the new head: bisected to the bug, one tracking issue, one PR comment
    second = run_sweep(toml, github, capsys, tmp_path / "s2.json")
    [row] = second["results"]
    assert second["head"] == history.bad and row["verdict"] == "bad" and row["regression"] == 1
    [issue] = list(github.issues.values())
    assert (
        issue["state"] == "open" and "tiny-llama" in issue["title"] and f"#{pr}" in issue["title"]
    )
    body = issue["body"]
    assert history.bug[:10] in body and "model.layers.0.input_layernorm" in body
    assert "LlamaDecoderLayer.__init__" in body and "python/sglang/srt/models/llama.py" in body
    assert "- target: SGLang " in body and "no sgl_kernel" in body
    assert "--framework sglang" in body and "vLLM" not in body
    [pr_comment] = github.bot_comments(REPO, pr)
    assert f"issues/{issue['number']}" in pr_comment["body"]
    assert "in SGLang on `nightly`" in pr_comment["body"]
    report = json.loads((Path(row["report_dir"]) / "report.json").read_text())
    assert report["target"]["framework"] == "sglang"
    assert report["bisection"]["first_bad"]["sha"] == history.bug
    assert report["bisection"]["cached"] >= 2  # both ends came from the sweeps' verdicts
