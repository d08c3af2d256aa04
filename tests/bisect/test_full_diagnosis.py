"""The full diagnosis on real vLLM (CPU): a local history of the installed release's sources with
a regression among harmless commits; localize at bad, bisect with the tracer's oracle, attribute."""

from __future__ import annotations

import json
import math
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest

from ekka.bench import base_repository
from ekka.bisect.framework_repo import make_bug_history
from ekka.cli import main
from tests.conftest import PROMPT_IDS

pytestmark = pytest.mark.vllm
IDS = ",".join(map(str, PROMPT_IDS))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    work = tmp_path_factory.mktemp("full")
    patch = Path(str(files("ekka") / "data" / "demo-regression.patch"))
    # the shortest history that still bisects: two harmless commits (the second touching the
    # patched file), the bug, two harmless commits (the first touching it too)
    return make_bug_history(
        base_repository(work), work / "repo", patch, "[Model] Llama norms use defaults",
        before=2, after=2,
    )  # fmt: skip


def _worktrees(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


def test_full_diagnosis_finds_commit_component_and_reuses_verdicts(
    history, zoo_model, tmp_path, capsys
):
    model = zoo_model("llama", rms_norm_eps=1e-5)
    db = f"sqlite:///{tmp_path / 'verdicts.db'}"
    args = [
        "diagnose",
        "--model",
        str(model),
        "--prompt-ids",
        IDS,
        "--max-tokens",
        "3",
        "--repo",
        str(history.repo),
        "--good",
        history.good,
        "--bad",
        history.bad,
        "--db",
        db,
    ]
    code = main(args + ["--out", str(tmp_path / "r1")])
    assert code == 1, capsys.readouterr().out
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    bisection, root = report["bisection"], report["root_cause"]
    assert bisection["status"] == "found" and bisection["first_bad"]["sha"] == history.bug
    assert bisection["first_bad"]["pr"] == history.bug_pr
    n = len(history.commits)
    assert bisection["probes"] <= math.ceil(math.log2(n)) + 2
    assert root["matched"] and root["component"] == "model.layers.0.input_layernorm"
    assert (
        "LlamaDecoderLayer.__init__" in root["statement"]
        and "vllm/model_executor/models/llama.py" in root["statement"]
    )
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "## Root cause" in md and "### Probe log" in md
    assert _worktrees(history.repo) == _worktrees(history.repo)[:1], "no stray worktrees"
    # a second job over the same range takes every verdict from the cache
    code = main(args + ["--out", str(tmp_path / "r2")])
    assert code == 1
    again = json.loads((tmp_path / "r2" / "report.json").read_text())["bisection"]
    assert (
        again["probes"] == 0 and again["cached"] >= 3 and again["first_bad"]["sha"] == history.bug
    )


def test_full_mode_bad_input(history, zoo_model, tmp_path, capsys):
    model = str(zoo_model("llama", rms_norm_eps=1e-5))
    base = ["diagnose", "--model", model, "--prompt-ids", IDS, "--out", str(tmp_path / "r")]
    code = main(base + ["--repo", str(history.repo), "--good", "nosuchref", "--bad", history.bad])
    assert code == 2 and "nosuchref" in capsys.readouterr().err
    code = main(base + ["--repo", str(history.repo), "--good", history.bad, "--bad", history.good])
    assert code == 2
    code = main(base + ["--repo", str(history.repo), "--good", history.good])
    assert code == 2 and "--repo, --good and --bad" in capsys.readouterr().err
    assert _worktrees(history.repo) == _worktrees(history.repo)[:1]


def test_repository_that_is_not_the_framework(zoo_model, tmp_path, capsys):
    from ekka.repo import git

    repo = tmp_path / "notvllm"
    repo.mkdir()
    (repo / "README").write_text("hello\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    good = git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("hello again\n")
    git(repo, "commit", "-q", "-am", "two")
    code = main(
        [
            "diagnose",
            "--model",
            str(zoo_model("llama")),
            "--prompt-ids",
            IDS,
            "--out",
            str(tmp_path / "r"),
            "--repo",
            str(repo),
            "--good",
            good,
            "--bad",
            "HEAD",
            "--db",
            f"sqlite:///{tmp_path / 'v.db'}",
        ]
    )
    assert code == 2 and "not the vllm repository" in capsys.readouterr().err
    assert len(_worktrees(repo)) == 1
