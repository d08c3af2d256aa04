"""The nightly sweep's parts that need no engine: its usage errors, the local reports."""

from __future__ import annotations

import pytest

from ekka.cli import main
from ekka.repo import git
from ekka.storage.sweeps import Regression
from ekka.sweep.nightly import LocalReporter, branch_head

pytestmark = pytest.mark.bot


def test_sweep_usage_errors(tmp_path, capsys):
    assert main(["sweep"]) == 2
    assert "--config" in capsys.readouterr().err
    toml = tmp_path / "ekka.toml"
    toml.write_text("[server]\nworkdir = 'w'\n")
    assert main(["sweep", "--config", str(toml)]) == 2
    assert "no [[sweeps]] entry" in capsys.readouterr().err
    assert main(["sweep", "--config", str(toml), "--architectures", "llama"]) == 2


def test_local_reports_say_where(tmp_path):
    regression = Regression(
        id=3, sweep="nightly", repository="acme/vllm", model="m", dtype="float32", state="open",
        good="a" * 40, first_bad="b" * 40, pr=9, issue=None, pr_comment=None, last_head="c" * 40,
        fixed_at=None, summary="norms", report_dir=None,
    )  # fmt: skip
    reporter = LocalReporter(tmp_path / "reports")
    assert reporter.open_issue(regression, "title", "body") is None
    reporter.comment_pull(regression, 9, "on the PR")
    reporter.close_issue(regression, "good again")
    where = reporter.where(regression)
    assert where.endswith("regression-3-issue.md")
    assert (tmp_path / "reports" / "regression-3-issue.md").read_text() == "# title\n\nbody"
    assert (tmp_path / "reports" / "regression-3-pr-9.md").read_text() == "on the PR"
    assert (tmp_path / "reports" / "regression-3-fixed.md").is_file()


def test_the_branch_head_is_the_remotes_after_a_fetch(tmp_path):
    upstream = tmp_path / "up"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "f").write_text("1\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "one")
    git(tmp_path, "clone", "-q", str(upstream), "clone")
    (upstream / "f").write_text("2\n")
    git(upstream, "commit", "-q", "-am", "two")
    git(tmp_path / "clone", "fetch", "-q")
    assert branch_head(str(tmp_path / "clone"), "main") == git(upstream, "rev-parse", "HEAD")
    assert branch_head(str(upstream), "main") == git(upstream, "rev-parse", "HEAD")
