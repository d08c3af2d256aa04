"""The whole product through the bot: a signed `/ekka diagnose` delivered over HTTP to the
real server, the worker running the full diagnosis (the real framework on the CPU against
transformers, the local executor) on a local history of the framework's sources with a planted
regression, the final comment on the issue naming the bug commit and its PR, and one comment on
that PR. One flow (`diagnose_through_the_bot`), run on a vLLM repository and on an SGLang one
(`[[repositories]] framework = "sglang"`)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import BugHistory, make_bug_history
from ekka.bot.config import from_mapping
from ekka.bot.queue import JobState
from tests.bot.conftest import MAINTAINER, REPO, SECRET, TOKEN, FrameworkHistory, wait_for
from tests.conftest import PROMPT_IDS

pytestmark = [pytest.mark.bot, pytest.mark.slow]


def diagnose_through_the_bot(
    setup: FrameworkHistory, github, start_bot, workdir: Path
) -> tuple[object, str, str]:
    """`/ekka diagnose` on an issue of the configured repository (`setup.framework`'s), the
    job run to its end and what every framework's report must say checked; (the bot, the final
    comment, the comment on the bug's PR)."""
    history = setup.history
    # GitHub knows the bug commit's PR (the commit-to-pulls endpoint); the others fall back to
    # their squash messages
    github.commit_pulls[(REPO, history.bug)] = [
        {"number": history.bug_pr, "merged_at": "2026-11-30T10:00:00Z"}
    ]
    repository = {"name": REPO, "path": str(history.repo), "good": history.good, "bad": "main"}
    config = from_mapping(
        {
            "github": {"throttle": False},
            "server": {
                "base_url": "http://ekka.test",
                "database_url": setup.database_url,
                "workdir": str(workdir),
            },
            "executor": {"kind": "local", "timeout": 600},
            "repositories": [{**repository, "framework": setup.framework}],
            "models": [
                {
                    "name": "tiny-llama",
                    "path": str(setup.model),
                    "prompt_ids": list(PROMPT_IDS),
                    "max_tokens": 3,
                }  # fmt: skip
            ],
        },
        {
            "EKKA_WEBHOOK_SECRET": SECRET,
            "EKKA_GITHUB_TOKEN": TOKEN,
            "EKKA_GITHUB_API_URL": github.url,
        },
        "the end-to-end configuration",
    )
    bot = start_bot(config)
    answer = bot.command(
        github, "Llama's answers changed on main.\n/ekka diagnose model=tiny-llama"
    )
    assert answer.status_code == 202
    job = wait_for(
        lambda: (
            (j := bot.store.job(1)) is not None
            and j.state in (JobState.DONE, JobState.FAILED)
            and j
        ),
        timeout=1500,
        what="the diagnosis",
    )
    replies = github.bot_comments(REPO, 12)
    final = replies[-1]["body"] if replies else ""
    out = os.environ.get("EKKA_BOT_E2E_COMMENT")
    if out:  # keep the comments as the server received them, for a human to read
        Path(out).write_text(final)
        pulls = github.bot_comments(REPO, history.bug_pr)
        Path(out + ".pr").write_text(pulls[-1]["body"] if pulls else "")
    assert job.state is JobState.DONE, (job.error, final)
    assert len(replies) == 1 and replies[0]["_edits"] >= 3  # progress, then the report
    assert f"(https://github.com/{REPO}/commit/{history.bug})" in final
    assert f"[PR #{history.bug_pr}](https://github.com/{REPO}/pull/{history.bug_pr})" in final
    assert "LlamaDecoderLayer.__init__" in final and "model.layers.0.input_layernorm" in final
    assert "```mermaid\nxychart-beta" in final and "| 1 | `model.layers.0" in final
    assert "http://ekka.test/jobs/1/report" in final
    assert github.seen("GET", f"/commits/{history.bug}/pulls")
    [pr_comment] = github.bot_comments(REPO, history.bug_pr)
    assert "#12" in pr_comment["body"] and "LlamaDecoderLayer" in pr_comment["body"]
    assert [r["content"] for r in github.reactions] == ["eyes"]
    assert github.permissions[(REPO, MAINTAINER)] == "write"
    report = bot.http.get("/jobs/1/report")
    assert report.status_code == 200 and "Root cause" in report.text
    assert bot.http.get("/jobs/1").json()["result"]["first_bad"]["sha"] == history.bug
    return bot, final, pr_comment["body"]


@pytest.mark.vllm
def test_diagnose_on_an_issue_names_the_commit_and_comments_on_its_pr(
    tmp_path, github, zoo_model, start_bot
):
    patch = Path(str(files("ekka") / "data" / "demo-regression.patch"))
    # the shortest history that still bisects (each probe starts vLLM): 2 harmless, bug, 2 harmless
    history: BugHistory = make_bug_history(
        base_repository(tmp_path), tmp_path / "vllm", patch, "[Model] Llama norms use defaults",
        before=2, after=2,
    )  # fmt: skip
    model = zoo_model("llama", rms_norm_eps=1e-5)
    setup = FrameworkHistory("vllm", history, model, f"sqlite:///{tmp_path / 'bot.db'}")
    _, final, _ = diagnose_through_the_bot(setup, github, start_bot, tmp_path / "work")
    assert "- target: vLLM " in final and "--framework" not in final


@pytest.mark.sglang
def test_diagnose_on_an_sglang_repository_names_sglangs_commit_file_and_runtime(
    tmp_path, github, sglang_history, start_bot
):
    bot, final, pr_comment = diagnose_through_the_bot(
        sglang_history, github, start_bot, tmp_path / "work"
    )
    # attributed in SGLang's layout (python/sglang/...), the report naming SGLang and how it ran
    assert (
        "python/sglang/srt/models/llama.py" in final
        and "python/sglang/srt/models/llama.py" in pr_comment
    )
    assert "- target: SGLang " in final and "no sgl_kernel" in final
    assert "--framework sglang" in final and "vLLM" not in final
    report = bot.http.get("/jobs/1/report").text
    assert "SGLang" in report and "no sgl_kernel" in report
