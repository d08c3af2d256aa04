"""The architecture sweep on real vLLM (CPU) against transformers, a handful of architectures:
Cohere2's known finding reported with its note, a broken architecture a row with its reason,
a second sweep resumed from the database."""

from __future__ import annotations

import json

import pytest

from ekka.cli import main
from ekka.sweep.arch_render import chart_svg, render_markdown
from ekka.sweep.arch_rows import ArchRow, SweepReport, load_findings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
BROKEN = "GPT2LMHeadModel"


@pytest.fixture
def gpt2_does_not_build(monkeypatch):
    """GPT-2's zoo config with 3 heads over its 128 wide embedding, which its model class
    refuses: a derived configuration that does not build (every derived one builds now)."""
    import ekka.zoo

    build_model = ekka.zoo.build_model

    def build(architecture, out, **kwargs):
        if architecture == BROKEN:
            kwargs["overrides"] = {"n_head": 3}
        return build_model(architecture, out, **kwargs)

    monkeypatch.setattr(ekka.zoo, "build_model", build)


@pytest.mark.usefixtures("gpt2_does_not_build")
def test_sweep_reports_cohere2_and_a_broken_architecture_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--architectures", f"cohere2,{BROKEN}", "--out", str(out)]
    code = main(args + ["--json", str(tmp_path / "s.json")])
    assert code == 0, capsys.readouterr()  # no new finding: Cohere2's is known
    report = json.loads((tmp_path / "s.json").read_text())
    cohere2, broken = report["rows"]
    assert cohere2["architecture"] == "Cohere2ForCausalLM" and cohere2["status"] == "diverges"
    assert cohere2["vllm_loads"] and cohere2["transformers_loads"]
    assert "self_attn" in cohere2["component"] and cohere2["ratio"] > 100
    assert "sliding_window + 1" in cohere2["note"]
    assert cohere2["command"].startswith("ekka zoo build Cohere2ForCausalLM")
    assert broken["status"] == "build-failed" and "divisible by num_heads" in broken["reason"]
    assert broken["kind"] == "fails (Ekka's configuration)" and cohere2["kind"] == "diverges"
    summary = report["summary"]
    assert summary["load_both"] == 1 and summary["new_findings"] == 0
    md = (out / "sweep.md").read_text()
    assert "## Known findings" in md and "Cohere2ForCausalLM" in md
    assert "<svg" in (out / "sweep.html").read_text()
    capsys.readouterr()
    # again: Cohere2's row comes from the database; the build failure is tried again (cheap)
    assert main(args + ["--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["summary"]["resumed"] == 1 and again["rows"][0] == cohere2
    assert again["rows"][1]["status"] == "build-failed"
    # the report of every row kept, nothing run
    assert main(args + ["--report-only", "--json", str(tmp_path / "kept.json")]) == 0
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert kept["rows"][0] == cohere2 and kept["rows"][1]["status"] == "build-failed"
    assert kept["summary"]["resumed"] == 2


def test_a_new_divergence_is_listed_as_new():
    rows = (
        ArchRow("LlamaForCausalLM", "bfloat16", "diverges", True, True, True, "divergence: x",
                ratio=50.0, component="model.layers.0.mlp", command="ekka zoo build ..."),
        ArchRow("Cohere2ForCausalLM", "bfloat16", "diverges", True, True, True, "divergence: y",
                ratio=float("inf"), note="vllm bug: window"),
    )  # fmt: skip
    versions = {"vllm": "0.32.0", "transformers": "5.19.0"}
    report = SweepReport(versions, rows, 1.0, 0, tuple(load_findings()))
    md = render_markdown(report)
    new = md.split("## New findings")[1].split("## Known findings")[0]
    assert "LlamaForCausalLM" in new and "Cohere2" not in new
    assert report.summary()["new_findings"] == 1 and "<rect" in chart_svg(report)


def test_a_sweep_at_a_commit_runs_that_commits_sources(tmp_path, capsys):
    """`--repo R --commit C`: the commit's Python sources over the installed release's compiled
    extensions. At a commit that gives Cohere2's sliding layers transformers' window, its
    known divergence is gone; its rows are kept apart from the release's."""
    from ekka.bench import base_repository
    from ekka.repo import git

    repo = base_repository(tmp_path)
    source = repo / "vllm" / "model_executor" / "models" / "commandr.py"
    text = source.read_text()
    assert text.count("config.sliding_window + 1") == 1
    source.write_text(text.replace("config.sliding_window + 1", "config.sliding_window"))
    git(repo, "commit", "-q", "-am", "Cohere2: transformers' window")
    out = tmp_path / "sweep"
    args = ["sweep", "--architectures", "cohere2", "--out", str(out), "--repo", str(repo)]
    assert main(args + ["--commit", "HEAD", "--json", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    [row] = report["rows"]
    assert row["status"] == "match", row
    assert git(repo, "rev-parse", "HEAD")[:12] in report["versions"]["vllm"]
    assert git(repo, "worktree", "list").count("\n") == 0  # the commit's worktree is gone
    capsys.readouterr()
    assert main(["sweep", "--architectures", "cohere2", "--repo", str(repo)]) == 2
    assert "--repo and --commit go together" in capsys.readouterr().err


@pytest.mark.parametrize(
    "slug",
    [
        "apertus-xielu-bfloat16",
        "cohere2-sliding-window",
        "falcon-ffn-hidden-size",
        "gemma3n-per-layer-projection-scale",
        "lfm2-cpu-rotary-3d",
        "olmoe-norm-eps-clip-qkv",
    ],
)
def test_a_findings_reproduction_runs_alone_and_shows_the_difference(slug, tmp_path):
    """The standalone script a finding folder carries: torch and the two frameworks only
    (run from an empty folder, without Ekka on the path), and it prints the difference."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "ekka" / "data" / "reproduce" / f"{slug}.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DIFFERS" in done.stdout, done.stdout
